"""The head: the last few seconds of loaded points, kept in memory.

Live views ask again and again for the newest seconds, which every load
changes; reading them from ClickHouse would cost a query per view per second.
The loader hands each completed load's rows to the head (before the load
becomes visible), per sensor and sorted by time; lenses read the head for the
part of their window at or after :meth:`Head.lo` and ClickHouse for the rest.

What the head holds is exact: every loaded point with a timestamp at or after
``lo`` is in it, tagged with its load's ``seq``, so a lens reading "loads up to
seq N" gets the same points from the head as from ClickHouse. After a restart
the head claims nothing below the newest timestamp already stored.

Memory: 16 bytes per point held. The default 65 s holds a live one-minute view
whole; at 1M points/s that is ~1.1 GB with the eviction slack.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lenshouse.rollup.cell import stats_of_points
from lenshouse.rollup.m4 import M4, of_points

# Points are kept this long after they leave the head (cheap insurance; reads
# fix ``lo`` and slice under the same lock, so they need no slack).
EVICT_SLACK_MS = 5_000
POINT_BYTES = 16  # ts + value


@dataclass(frozen=True)
class Piece:
    """One sensor's points from one load, sorted by time."""

    seq: int
    ts: np.ndarray
    value: np.ndarray


class Head:
    """Ownership: the loader's (or the feed's) thread adds and erases, lens
    threads read; ``_lock`` guards every field below (``_series``, ``_lo``,
    ``_floor``, ``_adds``, ``points``), and is never held while waiting."""

    def __init__(
        self,
        seconds: float = 65.0,
        clock: Callable[[], float] = time.time,
        max_bytes: int = 2 << 30,
    ) -> None:
        self.span_ms = int(seconds * 1000)
        self.clock = clock
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._series: dict[tuple[str, int], list[Piece]] = {}
        self._floor = 2**62  # claims nothing until opened
        self._lo = -(2**62)
        self._adds = 0
        self.points = 0

    @property
    def enabled(self) -> bool:
        return self.span_ms > 0

    def open(self, newest_stored_ms: int | None) -> None:
        """Start claiming points above what storage held before this process."""
        with self._lock:
            self._floor = -(2**62) if newest_stored_ms is None else newest_stored_ms + 1
            self._lo = -(2**62)

    def disown_below(self, ts: int) -> None:
        """Claim nothing below ``ts`` any more (points of a load this head
        will never hold lie below it)."""
        with self._lock:
            self._floor = max(self._floor, ts)

    def lo(self) -> int:
        """Every loaded point at or after this time is in the head. It never
        moves back, even if the wall clock does."""
        with self._lock:
            return self._advance_lo()

    def _advance_lo(self) -> int:
        # Under _lock: it writes _lo, which reads and adds rely on.
        self._lo = max(self._lo, self._floor, int(self.clock() * 1000) - self.span_ms)
        return self._lo

    def add(self, seq: int, rows: pa.Table) -> None:
        """Take a completed load's rows (tenant, sensor, ts, value)."""
        if not self.enabled or rows.num_rows == 0:
            return
        ts = rows.column("ts").to_numpy()
        keep = ts >= self.lo() - EVICT_SLACK_MS  # history loads skip the head at once
        if not keep.any():
            return
        if not keep.all():
            rows = rows.filter(pa.array(keep))
        pieces = list(_pieces(seq, rows))
        with self._lock:
            for key, piece in pieces:
                self._series.setdefault(key, []).append(piece)
                self.points += len(piece.ts)
            self._adds += 1
            # Pieces mostly arrive in time order: drop from the front of each
            # series, and look behind the front (late pieces) now and then.
            self._evict(self._advance_lo() - EVICT_SLACK_MS, sweep=self._adds % 64 == 0)
            if self.points * POINT_BYTES > self.max_bytes:
                self._shrink()

    def erase(self, tenant: str, sensors: list[int], lo: int, hi: int) -> None:
        """Drop the sensors' points in [lo, hi) (a delete was applied)."""
        with self._lock:
            for s in sensors:
                pieces = self._series.get((tenant, s))
                if not pieces:
                    continue
                kept = []
                for p in pieces:
                    a, b = np.searchsorted(p.ts, [lo, hi])
                    self.points -= int(b - a)
                    if a == b:
                        kept.append(p)
                    elif a > 0 or b < len(p.ts):
                        ts = np.concatenate((p.ts[:a], p.ts[b:]))
                        kept.append(Piece(p.seq, ts, np.concatenate((p.value[:a], p.value[b:]))))
                if kept:
                    self._series[(tenant, s)] = kept
                else:
                    del self._series[(tenant, s)]

    @property
    def bytes(self) -> int:
        return self.points * POINT_BYTES

    def covered_ms(self) -> int:
        """How far back from now the head answers."""
        return max(0, int(self.clock() * 1000) - self.lo())

    def _shrink(self) -> None:
        """Over the memory bound (a faster stream than the head was sized
        for): give up the oldest part of the window, moving ``lo`` forward."""
        now = int(self.clock() * 1000)
        lo = self._advance_lo()
        excess = 1 - self.max_bytes / (self.points * POINT_BYTES)
        cut = self._lo = lo + int(max(0, now - lo) * min(1.0, excess + 0.1)) + 1
        for key in list(self._series):
            kept = []
            for p in self._series[key]:
                a = int(np.searchsorted(p.ts, cut))
                self.points -= a
                if a < len(p.ts):
                    kept.append(p if a == 0 else Piece(p.seq, p.ts[a:].copy(), p.value[a:].copy()))
            if kept:
                self._series[key] = kept
            else:
                del self._series[key]

    def read(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        max_seq: int,
        align: int,
        step: int = 1,
        origin: int = 0,
    ) -> tuple[int, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """(boundary, points): the boundary is ``lo`` rounded up to ``align``, or
        to the coarsest of align/2, align/4, … down to ``step`` that stays
        within the window (so the part below it changes seldom), on the grid
        that starts at ``origin``; points of loads up to ``max_seq`` in
        [max(start, boundary), end) per sensor."""
        if not self.enabled:
            return end, {}
        with self._lock:
            lo = self._advance_lo() - origin
            q = align
            while q > step and -(-lo // q) * q >= end - origin and (q // 2) % step == 0:
                q //= 2
            boundary = -(-lo // q) * q + origin
            lo = max(start, boundary)
            if lo >= end:
                return boundary, {}
            parts = {
                s: [
                    _slice(p, lo, end)
                    for p in self._series.get((tenant, s), ())
                    if p.seq <= max_seq
                ]
                for s in sensors
            }
        return boundary, {s: _join(ps) for s, ps in parts.items()}

    def _evict(self, below: int, sweep: bool) -> None:
        # Under _lock. Runs at every add over every series: count only what goes.
        for key in list(self._series):
            pieces = self._series[key]
            if sweep:
                kept = [p for p in pieces if p.ts[-1] >= below]
                gone = [p for p in pieces if p.ts[-1] < below]
            else:
                i = 0
                while i < len(pieces) and pieces[i].ts[-1] < below:
                    i += 1
                if i == 0:
                    continue
                kept, gone = pieces[i:], pieces[:i]
            if gone:
                self.points -= sum(len(p.ts) for p in gone)
                if kept:
                    self._series[key] = kept
                else:
                    del self._series[key]


def _pieces(seq: int, rows: pa.Table):
    tenant = rows.column("tenant")
    sensor = rows.column("sensor").to_numpy()
    ts = rows.column("ts").to_numpy()
    value = rows.column("value").to_numpy()
    if isinstance(tenant, pa.ChunkedArray):
        tenant = tenant.combine_chunks()
    if pa.types.is_dictionary(tenant.type):
        names = tenant.dictionary.to_pylist()
        codes = tenant.indices.to_numpy(zero_copy_only=False)
    else:
        names, codes = np.unique(tenant.to_numpy(zero_copy_only=False), return_inverse=True)
        names = list(names)
    # Group by (tenant, sensor), each group sorted by time: one sort for the
    # whole load, then views of it (a load's pieces age, and go, together).
    key = (codes.astype(np.uint64) << np.uint64(32)) | sensor.astype(np.uint64)
    order = np.argsort(key, kind="stable")
    key, ts, value = key[order], ts[order], value[order]
    same = key[1:] == key[:-1]
    if (same & (ts[1:] < ts[:-1])).any():
        order = np.lexsort((ts, key))
        key, ts, value = key[order], ts[order], value[order]
        same = key[1:] == key[:-1]
    cuts = np.flatnonzero(~same) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [len(key)])).tolist()
    for a, b, k in zip(starts, ends, key[starts].tolist()):
        yield (names[k >> 32], k & 0xFFFFFFFF), Piece(seq, ts[a:b], value[a:b])


def _slice(p: Piece, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.searchsorted(p.ts, [lo, hi])
    return p.ts[a:b], p.value[a:b]


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    if len(parts) == 1:
        return parts[0]
    ts = np.concatenate([p[0] for p in parts])
    value = np.concatenate([p[1] for p in parts])
    if (ts[1:] < ts[:-1]).any():  # a late load's piece: restore time order
        o = np.argsort(ts, kind="stable")
        ts, value = ts[o], value[o]
    return ts, value


def buckets(
    ts: np.ndarray, value: np.ndarray, step: int, origin: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket number, sum, count, min, max) of time-sorted points; bucket n
    is [origin + n·step, origin + (n+1)·step)."""
    if len(ts) == 0:
        e = np.empty(0)
        return np.empty(0, np.int64), e, np.empty(0, np.int64), e, e
    b = (ts - origin) // step
    starts = np.concatenate(([0], np.flatnonzero(b[1:] != b[:-1]) + 1))
    s = stats_of_points(starts, value)
    # Counts are far below 2**63: the unsigned column read as signed, no copy.
    return b[starts], s["sum"], s["cnt"].view(np.int64), s["min"], s["max"]


def m4_buckets(ts: np.ndarray, value: np.ndarray, step: int, origin: int = 0) -> M4:
    """Each bucket's M4 points, in the order of :func:`buckets`."""
    b = (ts - origin) // step
    starts = np.concatenate(([0], np.flatnonzero(b[1:] != b[:-1]) + 1)) if len(b) else b
    return of_points(starts, ts, value)
