"""Loads announced on core NATS: what each load added, for the lens servers'
heads.

A loader announces a load's rows (after deduplication: exactly the rows it
inserts) on ``{prefix}.loaded.p{n}`` once the load's intent is on record,
before its inserts (a replay repeats the same seq and rows), with
its seq, the seq of the partition's previous completed load (``prev``) and
how far behind the loader is (``Lh-Lag``, seconds: lens servers yield to a
loader catching up, :mod:`lenshouse.lens.catch_up`), split into messages of
at most ``ROWS_PER_MESSAGE`` rows. Nothing is stored
and delivery is best effort: a lens server that misses a message finds the
load missing (its ``prev`` chain breaks, the keeper lists it complete) and
stops claiming that load's time range (:mod:`lenshouse.lens.cluster_head`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

import pyarrow as pa
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from lenshouse.stream.jetstream import LoopThread
from lenshouse.stream.partitions import LogLayout

log = logging.getLogger(__name__)

SEQ, PREV, PART, LAG = "Lh-Seq", "Lh-Prev", "Lh-Part", "Lh-Lag"
ROWS_PER_MESSAGE = 200_000  # ~4.2 MB: under the servers' max_payload (8 MB)
COLUMNS = ("tenant", "sensor", "ts", "value")
QUEUED_MESSAGES = 256  # messages a lens server holds before decoding; then drops

OnLoad = Callable[[int, int, int, pa.Table], None]  # (partition, seq, prev, rows)
OnLag = Callable[[int, float], None]  # (partition, seconds the loader is behind)


def encode(
    seq: int, prev: int, rows: pa.Table, lag_s: float = 0.0
) -> list[tuple[dict[str, str], bytes]]:
    """A load's messages: (headers, Arrow IPC stream) each."""
    rows = rows.select(list(COLUMNS))
    n = max(1, -(-rows.num_rows // ROWS_PER_MESSAGE))
    out = []
    for i in range(n):
        part = rows.slice(i * ROWS_PER_MESSAGE, ROWS_PER_MESSAGE)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part)
        headers = {SEQ: str(seq), PREV: str(prev), PART: f"{i + 1}/{n}", LAG: f"{lag_s:.1f}"}
        out.append((headers, sink.getvalue().to_pybytes()))
    return out


class Announcer:
    """The loader's side. Ownership: ``announce`` may be called from any
    thread; the sends run on the NATS loop, in call order."""

    def __init__(self, loop: LoopThread, nc: NATS, layout: LogLayout) -> None:
        self.loop, self.nc, self.layout = loop, nc, layout

    def announce(
        self, partition: int, seq: int, prev: int, rows: pa.Table, lag_s: float = 0.0
    ) -> None:
        """Never fails the load: an announcement lost is a load found missing."""
        try:
            messages = encode(seq, prev, rows, lag_s)
            self.loop.spawn(self._send(self.layout.loaded_subject(partition), messages))
        except Exception as e:
            log.warning("load %d of partition %d not announced: %r", seq, partition, e)

    async def _send(self, subject: str, messages: list[tuple[dict[str, str], bytes]]) -> None:
        try:
            for headers, body in messages:
                await self.nc.publish(subject, body, headers=headers)
        except Exception as e:  # best effort: lens servers find the load missing
            log.debug("announcing a load on %s: %r", subject, e)


class Feed:
    """The lens server's side: every partition's announcements, reassembled
    into loads and handed to ``on_load`` in arrival order.

    Ownership: the NATS callback (loop thread) only queues messages, counts
    ``dropped`` and calls ``on_lag`` (a dropped message's lag counts too);
    the feed thread owns ``_partial`` and calls ``on_load``."""

    def __init__(
        self,
        loop: LoopThread,
        nc: NATS,
        layout: LogLayout,
        on_load: OnLoad,
        on_lag: OnLag | None = None,
    ) -> None:
        self.loop, self.nc, self.layout, self.on_load = loop, nc, layout, on_load
        self.on_lag = on_lag
        self.dropped = 0
        self.loads = 0
        self._queue: queue.Queue[tuple[str, dict[str, str], bytes]] = queue.Queue(QUEUED_MESSAGES)
        self._partial: dict[int, tuple[int, list[pa.Table]]] = {}  # partition: (seq, parts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loaded-feed", daemon=True)

    def start(self) -> Feed:
        subject = f"{self.layout.prefix.lower()}.loaded.>"
        self.loop.run(self.nc.subscribe(subject, cb=self._on_message))
        self._thread.start()
        return self

    async def _on_message(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        if self.on_lag is not None and LAG in headers:
            partition = self.layout.loaded_partition(msg.subject)
            with contextlib.suppress(ValueError):
                if partition is not None:
                    self.on_lag(partition, float(headers[LAG]))
        try:
            self._queue.put_nowait((msg.subject, headers, msg.data))
        except queue.Full:  # the load goes missing, which the head handles
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                subject, headers, body = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._take(subject, headers, body)
            except Exception as e:  # a malformed message: its load goes missing
                log.warning("loaded feed: message on %s not taken: %r", subject, e)

    def _take(self, subject: str, headers: dict[str, str], body: bytes) -> None:
        partition = self.layout.loaded_partition(subject)
        if partition is None:
            return
        seq, prev = int(headers[SEQ]), int(headers[PREV])
        i, n = (int(x) for x in headers[PART].split("/"))
        table = pa.ipc.open_stream(body).read_all()
        have_seq, parts = self._partial.get(partition, (seq, []))
        if have_seq != seq or len(parts) != i - 1:
            parts = []  # another load's parts, or one of this load's went missing
            if i != 1:
                self._partial.pop(partition, None)
                return
        parts.append(table)
        if len(parts) < n:
            self._partial[partition] = (seq, parts)
            return
        self._partial.pop(partition, None)
        self.loads += 1
        self.on_load(partition, seq, prev, pa.concat_tables(parts) if n > 1 else parts[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
