"""Feeds a running lenshouse with generated sensor data over HTTP (Arrow IPC),
through an optional unreliable middle layer (delays, reordering, replays),
retrying every batch until it is acknowledged."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import pyarrow as pa

from lenshouse.generators.signals import Fleet
from lenshouse.points import PointBatch
from lenshouse.tenancy.client import tenant_headers

ARROW = "application/vnd.apache.arrow.stream"
_SCHEMA = pa.schema([("sensor", pa.uint32()), ("ts", pa.int64()), ("value", pa.float64())])


def encode_arrow(batch: PointBatch) -> bytes:
    rb = pa.RecordBatch.from_arrays(
        [pa.array(batch.sensor), pa.array(batch.ts), pa.array(batch.value)], schema=_SCHEMA
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _SCHEMA) as w:
        w.write_batch(rb)
    return sink.getvalue().to_pybytes()


@dataclass
class MiddleLayer:
    """What sits between sensors and storage: it may hold batches back, shuffle
    points, and send some batches twice."""

    delay_s: float = 0.0
    reorder: bool = False
    duplicate: float = 0.0  # fraction of batches sent again
    replay_after_s: tuple[float, float] = (0.5, 5.0)
    seed: int = 0
    _rng: np.random.Generator = field(init=False)
    _held: list = field(init=False, default_factory=list)
    _n: itertools.count = field(init=False, default_factory=itertools.count)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def push(self, batch: PointBatch, now: float) -> None:
        if self.reorder:
            perm = self._rng.permutation(len(batch))
            batch = PointBatch(batch.tenant, batch.sensor[perm], batch.ts[perm], batch.value[perm])
        heapq.heappush(self._held, (now + self.delay_s, next(self._n), batch))
        if self.duplicate and self._rng.random() < self.duplicate:
            later = now + self.delay_s + self._rng.uniform(*self.replay_after_s)
            heapq.heappush(self._held, (later, next(self._n), batch))

    def due(self, now: float) -> list[PointBatch]:
        out = []
        while self._held and self._held[0][0] <= now:
            out.append(heapq.heappop(self._held)[2])
        return out

    def drain(self) -> list[PointBatch]:
        out = [b for _, _, b in sorted(self._held)]
        self._held.clear()
        return out


@dataclass
class SendStats:
    batches: int = 0
    points: int = 0
    retries: int = 0
    failovers: int = 0  # retries sent to another server than the failed attempt
    seconds: float = 0.0
    failed_at: list[float] = field(default_factory=list)  # monotonic times of failed attempts


class Targets:
    """The servers a sender writes to ("A,B,…": any gateway takes any batch).
    Batches start round-robin; a batch whose attempt fails (no connection,
    a timeout, 5xx) is retried on the next server.

    Ownership: one sending thread."""

    def __init__(self, urls: str | list[str]) -> None:
        if isinstance(urls, str):
            urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        self.urls = urls or [""]
        self._next = 0

    def __len__(self) -> int:
        return len(self.urls)

    def start(self) -> int:
        i = self._next
        self._next = (i + 1) % len(self.urls)
        return i


def post_batch(
    client: httpx.Client,
    url: str | Targets,
    body: bytes,
    tenant: str,
    stats: SendStats,
    deadline: float,
    content_type: str = ARROW,
    batch_id: str | None = None,
    token: str | None = None,
    path: str = "/v1/write",
    encoding: str | None = None,
) -> None:
    """POST to ``path`` until acknowledged (2xx) or the deadline passes; 4xx
    is not retried, 429 and 503 wait for their ``Retry-After``. ``encoding``:
    the body's Content-Encoding (remote write's ``snappy``)."""
    targets = url if isinstance(url, Targets) else Targets([url])
    headers = {"Content-Type": content_type, **tenant_headers(tenant, token)}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if batch_id is not None:
        headers["X-Batch-Id"] = batch_id
    delay = 0.05
    i = targets.start()
    while True:
        wait = delay
        try:
            r = client.post(targets.urls[i] + path, content=body, headers=headers)
            if r.status_code < 300:
                return
            if 400 <= r.status_code < 500 and r.status_code != 429:
                raise RuntimeError(f"server refused a batch: {r.status_code} {r.text}")
            wait = max(delay, _retry_after(r))
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("server did not acknowledge a batch in time")
        stats.retries += 1
        if len(stats.failed_at) < 100_000:
            stats.failed_at.append(time.monotonic())
        if len(targets) > 1:
            i = (i + 1) % len(targets)
            stats.failovers += 1
        time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(10.0, float(r.headers.get("Retry-After", 0)))
    except ValueError:
        return 0.0


def run(
    url: str | list[str],
    fleet: Fleet,
    seconds: int,
    tenant: str = "default",
    realtime: bool = True,
    middle: MiddleLayer | None = None,
    on_second: Callable[[int, SendStats], None] | None = None,
    give_up_after: float = 120.0,
) -> SendStats:
    """Send ``seconds`` seconds of the fleet's data, one batch per second, to
    ``url`` (or spread over several: "A,B")."""
    stats = SendStats()
    middle = middle or MiddleLayer()
    targets = Targets(url)
    t0 = time.monotonic()
    # With somewhere else to go, a server that does not answer is left sooner.
    with httpx.Client(timeout=60.0 if len(targets) == 1 else 15.0) as client:

        def send(batch: PointBatch) -> None:
            post_batch(
                client,
                targets,
                encode_arrow(batch),
                tenant,
                stats,
                time.monotonic() + give_up_after,
            )
            stats.batches += 1
            stats.points += len(batch)

        for k in range(seconds):
            if realtime:
                time.sleep(max(0.0, t0 + k + 1 - time.monotonic()))
            middle.push(fleet.second(k, tenant), time.monotonic())
            for batch in middle.due(time.monotonic()):
                send(batch)
            if on_second:
                on_second(k, stats)
        for batch in middle.drain():
            send(batch)
    stats.seconds = time.monotonic() - t0
    return stats
