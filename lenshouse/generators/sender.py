"""Feeds a running lenshouse with generated sensor data over HTTP (Arrow IPC),
through an optional unreliable middle layer (delays, reordering, replays),
retrying every batch until it is acknowledged (with :mod:`lenshouse.client`)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lenshouse.client import Client
from lenshouse.client.retries import parse_urls
from lenshouse.generators.signals import Fleet
from lenshouse.points import PointBatch

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


_STATS_LOCK = threading.Lock()


def batch_client(
    url: str | list[str],
    tenant: str,
    stats: SendStats,
    give_up_after: float = 120.0,
    token: str | None = None,
    timeout: float | None = None,
) -> Client:
    """A client that sends each batch until it is acknowledged, for at most
    ``give_up_after`` seconds, to ``url`` (or spread over several: "A,B"),
    counting every retry in ``stats``. A server that does not answer is left
    sooner when there is somewhere else to go."""
    urls = parse_urls(url)

    def note(failover: bool) -> None:
        with _STATS_LOCK:  # sending threads may share the stats
            stats.retries += 1
            stats.failovers += failover
            if len(stats.failed_at) < 100_000:
                stats.failed_at.append(time.monotonic())

    return Client(
        urls,
        token=token,
        tenant=tenant,
        timeout=timeout or (60.0 if len(urls) == 1 else 15.0),
        retry_for_s=give_up_after,
        on_retry=note,
    )


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
    t0 = time.monotonic()
    with batch_client(url, tenant, stats, give_up_after) as client:

        def send(batch: PointBatch) -> None:
            client.write_body(encode_arrow(batch))
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
