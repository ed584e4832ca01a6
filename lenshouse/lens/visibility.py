"""What a lens may see: loads that completed, and the ones under way.

A load inserts raw rows and, through materialized views, rollup rows; the two
become visible at slightly different moments. Lenses therefore read raw rows
only up to the last completed load (``raw.seq``), keep rollup reads clear of
any load in flight, and re-run in the rare case that a load started while they
read rows it touches. A lens that keeps racing loads finally reads while new
loads are held back (``quiet``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# A load's footprint is kept per sensor in cells of 2^12 ms (4.1 s): small enough
# to tell a late point from the head, coarse enough to stay short.
CELL_BITS = 12


def footprint_keys(sensor: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Sorted distinct (sensor, ts cell) keys of some points."""
    keys = (sensor.astype(np.uint64) << np.uint64(32)) | (ts >> CELL_BITS).astype(np.uint64)
    if len(keys) > 1:  # batches are mostly runs of one sensor: drop repeats before sorting
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return np.unique(keys)


def footprint_sensors(keys: np.ndarray) -> np.ndarray:
    """The distinct sensors of sorted footprint keys."""
    sensors = (keys >> np.uint64(32)).astype(np.int64)
    if len(sensors) == 0:
        return sensors
    return sensors[np.concatenate(([True], sensors[1:] != sensors[:-1]))]


# A delete's footprint lists every cell of its range; past this many keys it
# claims its whole time range of the tenant instead.
MAX_ERASE_KEYS = 100_000


def erase_footprint(
    tenant: str, sensors: list[int], lo: int, hi: int
) -> Mapping[str, np.ndarray] | None:
    """Footprint of a delete of ``sensors`` over [lo, hi): every cell."""
    cells = np.arange(lo >> CELL_BITS, ((hi - 1) >> CELL_BITS) + 1, dtype=np.uint64)
    if len(cells) * len(sensors) > MAX_ERASE_KEYS:
        return None
    keys = [(np.uint64(s) << np.uint64(32)) | cells for s in sorted(set(sensors))]
    return {tenant: np.concatenate(keys)}


@dataclass(frozen=True)
class LoadSpan:
    """The rows one load adds: its sequence number, tenants and time range, and
    where known the exact (sensor, cell) footprint per tenant. A delete
    (``erases``) is a load too: it removes rows where it touches."""

    seq: int
    tenants: frozenset[str]
    min_ts: int
    max_ts: int
    cells: Mapping[str, np.ndarray] | None = field(default=None, compare=False, hash=False)
    erases: bool = False

    def touches(self, tenant: str, lo: int, hi: int) -> bool:
        return tenant in self.tenants and self.min_ts < hi and self.max_ts >= lo

    def touches_sensor(self, tenant: str, sensor: int, lo: int, hi: int) -> bool:
        """Whether this load writes a point of ``sensor`` in [lo, hi) (or near it)."""
        if not self.touches(tenant, lo, hi):
            return False
        if self.cells is None:
            return True
        keys = self.cells.get(tenant)
        if keys is None:
            return False
        base = sensor << 32
        a = np.searchsorted(keys, np.uint64(base | (lo >> CELL_BITS)), "left")
        b = np.searchsorted(keys, np.uint64(base | ((hi - 1) >> CELL_BITS)), "right")
        return bool(b > a)


@dataclass(frozen=True)
class Snapshot:
    committed_seq: int  # raw rows with seq <= this are complete in every table …
    inflight: tuple[LoadSpan, ...]
    started: int  # loads begun so far
    # … except these loads' (several loaders complete out of seq order).
    hidden: tuple[int, ...] = ()
    # Every load not complete at this snapshot is among ``started_since`` of a
    # snapshot with ``started`` = this: what an answer read here reflects.
    watermark: int = 0
    # Per shard where each shard completes its loads in seq order (cluster
    # mode: a log partition per shard): the loads completed there are those
    # with seq <= floors[k]. Reads pinned to them need no re-check.
    floors: tuple[int, ...] | None = None
    # Per shard, its completed loads still on record, oldest first (time
    # ranges only): what a chunk read at older floors must not meet.
    completed: tuple[tuple[LoadSpan, ...], ...] | None = None


class Loads(Protocol):
    """What lenses ask about loads: :class:`Visibility` in the process that
    loads, or the keeper's record of every loader's loads in cluster mode
    (:class:`lenshouse.lens.cluster_visibility.ClusterVisibility`)."""

    can_hold: bool

    def snapshot(self) -> Snapshot: ...
    def started_since(self, snap: Snapshot) -> list[LoadSpan] | None: ...
    def begun_after(self, started: int) -> list[LoadSpan] | None:
        """Loads after a snapshot's ``started`` (or ``watermark``); None if
        some are no longer on record."""

    def on_begin(self, callback: Callable[[LoadSpan], None]) -> None: ...
    def quiet(self) -> AbstractContextManager[Snapshot]: ...

    @property
    def committed_seq(self) -> int: ...


class Visibility:
    """One process's loads, told by its loader (``begin``/``end``).

    Ownership: the loader thread calls ``begin`` and ``end``; any thread reads
    snapshots; every field is guarded by ``_cond``."""

    # Lenses that keep racing loads may hold new loads back (``quiet``).
    can_hold = True

    def __init__(self, committed_seq: int = -1, history: int = 256) -> None:
        self._cond = threading.Condition()
        self._committed = committed_seq
        self._inflight: dict[int, LoadSpan] = {}
        self._started = 0
        self._recent: deque[tuple[int, LoadSpan]] = deque(maxlen=history)
        self._readers = 0  # lenses holding loads back (see ``quiet``)
        self._writer_waiting = False
        self._on_begin: list[Callable[[LoadSpan], None]] = []

    def on_begin(self, callback: Callable[[LoadSpan], None]) -> None:
        """Call ``callback(span)`` once a load is registered, before it writes."""
        self._on_begin.append(callback)

    def begin(self, span: LoadSpan) -> None:
        with self._cond:
            self._writer_waiting = True
            self._cond.wait_for(lambda: self._readers == 0)
            self._writer_waiting = False
            self._started += 1
            self._inflight[span.seq] = span
            self._recent.append((self._started, span))
        for callback in self._on_begin:
            callback(span)

    def end(self, seq: int) -> None:
        with self._cond:
            self._inflight.pop(seq, None)
            self._committed = max(self._committed, seq)
            self._cond.notify_all()

    @contextmanager
    def quiet(self) -> Iterator[Snapshot]:
        """Hold new loads back while reading: the fallback for a lens whose
        optimistic reads kept racing loads. The loader waits at most one read."""
        with self._cond:
            self._cond.wait_for(lambda: not self._inflight and not self._writer_waiting)
            self._readers += 1
        try:
            yield self.snapshot()
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    def snapshot(self) -> Snapshot:
        with self._cond:
            mark = self._started
            if self._inflight:  # the first load still in flight, and every one after it
                mark = min((n for n, span in self._recent if span.seq in self._inflight),
                           default=0) - 1  # fmt: skip
            return Snapshot(
                self._committed, tuple(self._inflight.values()), self._started, watermark=mark
            )

    def started_since(self, snap: Snapshot) -> list[LoadSpan] | None:
        """Loads begun after ``snap``; None if too many to tell."""
        return self.begun_after(snap.started)

    def begun_after(self, started: int) -> list[LoadSpan] | None:
        """Loads begun after the ``started``-th; None if too many to tell."""
        with self._cond:
            if self._started == started:
                return []
            newer = [span for n, span in self._recent if n > started]
            if len(newer) < self._started - started:
                return None
            return newer

    @property
    def committed_seq(self) -> int:
        with self._cond:
            return self._committed
