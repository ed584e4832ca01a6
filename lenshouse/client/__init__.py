"""A small typed client of lenshouse's HTTP API (sync, and async for lenses).

    from lenshouse.client import Client

    with Client("http://127.0.0.1:8080", token="lh_…") as lh:
        lh.write(sensor=7, ts=ts_ms, value=values)        # numpy arrays (or lists)
        lens = lh.lens([7], start, end, points=2500)      # Lens: numpy columns per sensor
        table = lh.export([7], start, end)                # pyarrow.Table of raw points

Writes go as Arrow IPC (numpy arrays, pandas frames or Arrow tables), or as
a body already encoded (``write_body``). A connection error, a 429 or a 5xx is
retried after a backoff or its ``Retry-After``, ``retries`` times or for
``retry_for_s`` seconds, on the next server when several are given
(:mod:`lenshouse.client.retries`); a write carries an ``X-Batch-Id``, so a
retried write is stored once even if the first attempt was applied. Other
refusals raise :class:`LenshouseError` with the server's sentence.
"""

from lenshouse.client.answers import ARROW, Lens, Series
from lenshouse.client.asynchronous import AsyncClient
from lenshouse.client.retries import LenshouseError
from lenshouse.client.sync import Client

__all__ = ["ARROW", "AsyncClient", "Client", "Lens", "LenshouseError", "Series"]
