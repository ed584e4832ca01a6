"""A small typed client of lenshouse's HTTP API (sync).

    from lenshouse.client import Client

    with Client("http://127.0.0.1:8080", token="lh_…") as lh:
        lh.write(sensor=7, ts=ts_ms, value=values)        # numpy arrays (or lists)
        lens = lh.lens([7], start, end, points=2500)      # Lens: numpy columns per sensor
        table = lh.export([7], start, end)                # pyarrow.Table of raw points

Writes go as Arrow IPC (numpy arrays, pandas frames or Arrow tables). A 429
or 503 is retried after its ``Retry-After``, a connection error after a short
backoff, up to ``retries`` times; a write carries an ``X-Batch-Id``, so a
retried write is stored once even if the first attempt was applied. Other
refusals raise :class:`LenshouseError` with the server's sentence.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

ARROW = "application/vnd.apache.arrow.stream"
RETRY_AFTER_MAX_S = 30.0


class LenshouseError(Exception):
    """A request lenshouse refused (4xx), or one that kept failing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Series:
    sensor: int
    t: np.ndarray  # bucket starts, epoch ms
    avg: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    # With ``m4=True``: each bucket's first and last point, and the times of
    # its lowest and highest value (the earliest, on a tie).
    first: np.ndarray | None = None
    last: np.ndarray | None = None
    tfirst: np.ndarray | None = None
    tlast: np.ndarray | None = None
    tmin: np.ndarray | None = None
    tmax: np.ndarray | None = None


_BASIC = ("t", "avg", "min", "max", "count")
_M4 = ("first", "last", "tfirst", "tlast", "tmin", "tmax")


@dataclass
class Lens:
    start: int
    end: int
    step: int
    series: list[Series]

    def __getitem__(self, sensor: int) -> Series:
        for s in self.series:
            if s.sensor == sensor:
                return s
        raise KeyError(sensor)


class Client:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``token``: a tenant's bearer token (auth on); ``tenant``: the
        ``X-Tenant`` header (auth off, or with an admin token)."""
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if tenant:
            headers["X-Tenant"] = tenant
        self.retries = retries
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- the one request loop -------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        delay = 0.1
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError as e:
                if last:
                    raise LenshouseError(0, f"{method} {path}: {e}") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if r.status_code in (429, 503) and not last:
                time.sleep(_retry_after(r, delay))
                delay = min(delay * 2, 2.0)
                continue
            if r.status_code >= 400:
                raise LenshouseError(r.status_code, _message(r))
            return r
        raise AssertionError("unreachable")  # the loop returns or raises

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
        self._request(
            "POST",
            "/v1/write",
            content=_ipc(table),
            headers={"Content-Type": ARROW, "X-Batch-Id": batch_id or uuid.uuid4().hex},
        )

    def delete(self, sensors: Iterable[int], start: int, end: int) -> dict:
        """Delete those sensors' points in [start, end); the server's answer."""
        params = {"sensors": _ids(sensors), "start": start, "end": end}
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
        params: dict[str, Any] = {"start": start, "end": end, "format": "arrow"}
        if m4:
            params["agg"] = ",".join(_BASIC[1:] + _M4)
        asked = [int(s) for s in sensors] if sensors is not None else []
        if asked:
            params["sensors"] = _ids(asked)
        for k, v in (("points", points), ("step", step), ("match", match)):
            if v is not None:
                params[k] = v
        r = self._request("GET", "/v1/lens", params=params)
        table = pa.ipc.open_stream(r.content).read_all()
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        cols = {name: table.column(name).to_numpy() for name in table.column_names}
        series = []
        # Every sensor asked by id (one without points in the window has empty
        # columns), then those only the matchers selected.
        for sensor in dict.fromkeys([*asked, *cols["sensor"].tolist()]):
            m = cols["sensor"] == sensor
            extra = {k: cols[k][m] for k in _M4} if m4 else {}
            series.append(Series(int(sensor), *(cols[k][m] for k in _BASIC), **extra))
        return Lens(int(meta["start"]), int(meta["end"]), int(meta["step"]), series)

    def export(self, sensors: Iterable[int], start: int, end: int) -> pa.Table:
        """Raw points of completed loads in [start, end), every part of them."""
        params: dict[str, Any] = {"sensors": _ids(sensors), "start": start, "end": end}
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
        return self.http.get("/healthz").json()


def _ids(sensors: Iterable[int]) -> str:
    return ",".join(str(int(s)) for s in sensors)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _retry_after(r: httpx.Response, default: float) -> float:
    try:
        return min(max(float(r.headers.get("Retry-After", default)), 0.0), RETRY_AFTER_MAX_S)
    except ValueError:
        return default


def _message(r: httpx.Response) -> str:
    try:
        doc = r.json()
    except ValueError:
        return r.text[:500]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
