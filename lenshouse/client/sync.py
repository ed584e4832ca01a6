"""The synchronous client (see :mod:`lenshouse.client`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

from lenshouse.client.answers import ARROW, Lens, ids_param, ipc, lens_params, read_lens
from lenshouse.client.retries import (
    Targets,
    parse_urls,
)
from lenshouse.tenancy.client import tenant_headers


class Client:
    def __init__(
        self,
        url: str | list[str],
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        *,
        retry_for_s: float | None = None,
        on_retry: Callable[[bool], None] | None = None,
    ) -> None:
        """``url``: a server, or several ("A,B" or a list: requests start
        round-robin, a failed attempt moves to the next); ``token``: a
        tenant's bearer token (auth on; else ``LENSHOUSE_TOKEN``); ``tenant``:
        the ``X-Tenant`` header (auth off, or with an admin token).
        ``retry_for_s``: retry for that long instead of ``retries`` times;
        ``on_retry``: told of each retry (and whether it changes server)."""
        self.targets = Targets(parse_urls(url))
        self.retries, self.retry_for_s, self.on_retry = retries, retry_for_s, on_retry
        self.http = httpx.Client(
            headers=tenant_headers(tenant, token), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- the one request loop -------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        attempts = self.targets.attempts(self.retries, self.retry_for_s, self.on_retry)
        for _ in range(1_000_000):  # bounded by the policy, which raises first
            try:
                r = self.http.request(method, attempts.url(path), **kw)
                wait = attempts.answered(r)
            except httpx.TransportError as e:
                wait = attempts.lost(f"{method} {path}: {type(e).__name__} {e}".rstrip())
            if wait is None:
                return r
            time.sleep(wait)
        raise AssertionError("unreachable")

    # -- writes ----------------------------------------------------------------
    def write(
        self,
        sensor: int | Sequence[int] | np.ndarray | None = None,
        ts: Sequence[int] | np.ndarray | None = None,
        value: Sequence[float] | np.ndarray | None = None,
        *,
        frame: Any = None,
        table: pa.Table | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Write points: columns (a single ``sensor`` id applies to all), a
        pandas ``frame`` or an Arrow ``table`` with columns sensor, ts, value."""
        if table is None:
            if frame is not None:
                table = pa.Table.from_pandas(frame[["sensor", "ts", "value"]], preserve_index=False)
            else:
                if ts is None or value is None or sensor is None:
                    raise ValueError("write needs sensor, ts and value (or frame=, table=)")
                t = np.asarray(ts, np.int64)
                s = np.asarray(sensor, np.uint32)
                if s.ndim == 0:
                    s = np.full(len(t), s, np.uint32)
                table = pa.table({"sensor": s, "ts": t, "value": np.asarray(value, np.float64)})
        table = table.select(["sensor", "ts", "value"]).cast(
            pa.schema([("sensor", pa.uint32()), ("ts", pa.int64()), ("value", pa.float64())])
        )
        self.write_body(ipc(table), batch_id=batch_id or uuid.uuid4().hex)

    def write_body(
        self,
        body: bytes,
        content_type: str = ARROW,
        *,
        batch_id: str | None = None,
        encoding: str | None = None,
        path: str = "/v1/write",
    ) -> None:
        """POST an encoded body (Arrow IPC, JSON, line protocol, or with
        ``encoding`` and ``path``, a snappy remote-write request) until it is
        acknowledged. Without a ``batch_id`` a retry is known by its bytes:
        the cluster's gateways key a body by its hash, so the log drops a
        resend of the same bytes (a replay of the middle layer too), and any
        store keeps a point once."""
        headers = {"Content-Type": content_type}
        if batch_id is not None:
            headers["X-Batch-Id"] = batch_id
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        self._request("POST", path, content=body, headers=headers)

    def delete(self, sensors: Iterable[int], start: int, end: int) -> dict:
        """Delete those sensors' points in [start, end); the server's answer."""
        params = {"sensors": ids_param(sensors), "start": start, "end": end}
        return self._request(
            "DELETE", "/v1/points", params=params, headers={"X-Batch-Id": uuid.uuid4().hex}
        ).json()

    # -- reads -----------------------------------------------------------------
    def lens(
        self,
        sensors: Iterable[int] | None,
        start: int,
        end: int,
        *,
        points: int | None = None,
        step: int | None = None,
        match: str | None = None,
        m4: bool = False,
    ) -> Lens:
        """Whole buckets of avg/min/max/count (``points`` about how many, or a
        ``step`` in ms); ``match``: label matchers instead of or beside ids;
        ``m4``: each bucket's M4 points too (a line drawn through them is the
        line through every raw point)."""
        params = lens_params(sensors, start, end, points, step, match, m4)
        r = self._request("GET", "/v1/lens", params=params)
        return read_lens(r.content, sensors, m4)

    def export(self, sensors: Iterable[int], start: int, end: int) -> pa.Table:
        """Raw points of completed loads in [start, end), every part of them."""
        params: dict[str, Any] = {"sensors": ids_param(sensors), "start": start, "end": end}
        parts = []
        for _ in range(1_000_000):  # bounded: each part moves past the last
            r = self._request("GET", "/v1/export", params=params)
            parts.append(pa.ipc.open_stream(r.content).read_all())
            after = r.headers.get("X-Lenshouse-Next-After")
            if not after:
                break
            params["after"] = after
        return pa.concat_tables(parts)

    def sensors(self, match: str | None = None) -> list[dict]:
        params = {"match": match} if match else {}
        return self._request("GET", "/v1/sensors", params=params).json()["sensors"]

    def put_sensor(self, sensor: int, labels: dict[str, str]) -> None:
        self._request("PUT", f"/v1/sensors/{sensor}", json={"labels": labels})

    def labels(self) -> list[str]:
        return self._request("GET", "/v1/labels").json()["labels"]

    def health(self) -> dict:
        """The first server's ``/healthz`` (its 503 answers too: they say why)."""
        return self.http.get(self.targets.urls[0] + "/healthz").json()
