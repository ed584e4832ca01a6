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
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lenshouse.rollup.cell import stats_of_points
from lenshouse.rollup.m4 import M4, of_points

# Pages are kept this long after they leave the head (cheap insurance; reads
# fix ``lo`` and take their pages under the same lock, so they need no slack).
EVICT_SLACK_MS = 5_000
POINT_BYTES = 20  # ts + value + the load's seq (relative to the page's)
# Bucket widths whose buckets a page keeps (a lens reads the same widths as
# the lenses before it, live views above all).
CELLS_PER_PAGE = 4
# A sensor's points are kept in pages of 2^12 ms (4.1 s): a one-minute read
# touches 16 of them whatever the loads' sizes, and the head gives up whole
# pages as they age.
PAGE_BITS = 12


@dataclass(frozen=True)
class Page:
    """One sensor's points in one page's time range, sorted by time, with the
    seq of the load that brought each (``seq0`` + ``dseq``).

    The first ``n`` entries of the arrays are this page's; a later version of
    the page may fill the buffers past ``n`` (an in-order append) but never
    rewrites below it, so a reader's slices of a version stay valid without
    the lock."""

    ts: np.ndarray
    value: np.ndarray
    dseq: np.ndarray  # int32 (int64 if the seqs spread wider)
    n: int
    seq0: int
    max_seq: int
    # (step, origin) -> this version's buckets: computed by the first lens
    # that asks, kept for the next (a lens reads every page of its window).
    _cells: dict = field(default_factory=dict, compare=False, repr=False)

    def cells(self, step: int, origin: int) -> Cells:
        """Buckets of all its points (any seq), kept for this version."""
        got = self._cells.get((step, origin))
        if got is None:
            got = buckets(self.ts[: self.n], self.value[: self.n], step, origin)
            if len(self._cells) >= CELLS_PER_PAGE:  # lenses of other widths: the oldest goes
                self._cells.pop(next(iter(self._cells)), None)
            self._cells[(step, origin)] = got
        return got

    def upto(self, lo: int, hi: int, max_seq: int) -> tuple[np.ndarray, np.ndarray]:
        """Its points in [lo, hi) of loads up to ``max_seq``."""
        ts, value = self.ts[: self.n], self.value[: self.n]
        a = 0 if lo <= ts[0] else int(np.searchsorted(ts, lo))
        b = self.n if hi > ts[-1] else int(np.searchsorted(ts, hi))
        ts, value = ts[a:b], value[a:b]
        if self.max_seq > max_seq:  # a load not visible to this reader
            keep = self.dseq[a:b] <= max_seq - self.seq0
            ts, value = ts[keep], value[keep]
        return ts, value

    def with_points(self, ts: np.ndarray, value: np.ndarray, seq: int) -> Page:
        """This page with one load's points added (sorted by time)."""
        seq0 = min(self.seq0, seq)
        max_seq = max(self.max_seq, seq)
        wide = max_seq - seq0 >= 2**31
        if ts[0] >= self.ts[self.n - 1] and seq0 == self.seq0 and not wide:
            return self._appended(ts, value, seq, max_seq)  # the usual case: in order
        old = self.dseq[: self.n].astype(np.int64) + (self.seq0 - seq0)
        new = np.full(len(ts), seq - seq0, np.int64)
        all_ts = np.concatenate((self.ts[: self.n], ts))
        order = np.argsort(all_ts, kind="stable")  # a late load: back in time order
        dseq = np.concatenate((old, new))[order]
        return Page(
            all_ts[order],
            np.concatenate((self.value[: self.n], value))[order],
            dseq if wide else dseq.astype(np.int32),
            len(all_ts),
            seq0,
            max_seq,
        )

    def _appended(self, ts: np.ndarray, value: np.ndarray, seq: int, max_seq: int) -> Page:
        n, k = self.n, len(ts)
        buf_ts, buf_value, buf_dseq = self.ts, self.value, self.dseq
        if n + k > len(buf_ts):  # grown by doubling: appends cost O(1) a point
            cap = max(2 * len(buf_ts), n + k)
            buf_ts, buf_value = _grown(buf_ts, n, cap), _grown(buf_value, n, cap)
            buf_dseq = _grown(buf_dseq, n, cap)
        buf_ts[n : n + k] = ts
        buf_value[n : n + k] = value
        buf_dseq[n : n + k] = seq - self.seq0
        return Page(buf_ts, buf_value, buf_dseq, n + k, self.seq0, max_seq)

    @staticmethod
    def of(ts: np.ndarray, value: np.ndarray, seq: int, expect: int = 0) -> Page:
        """A new page; room for ``expect`` points (what the page before it
        held: a sensor's rate changes seldom) or twice these."""
        cap = max(64, len(ts), expect + expect // 16) if expect else max(64, 2 * len(ts))
        page = Page(np.empty(cap, np.int64), np.empty(cap), np.empty(cap, np.int32), 0, seq, seq)
        return page._appended(ts, value, seq, seq)

    def without(self, lo: int, hi: int) -> Page | None:
        """This page with its points in [lo, hi) removed (None: nothing left)."""
        ts = self.ts[: self.n]
        a, b = np.searchsorted(ts, [lo, hi])
        if a == 0 and b == self.n:
            return None
        keep = np.r_[0:a, b : self.n]
        return Page(ts[keep], self.value[keep], self.dseq[keep], len(keep), self.seq0, self.max_seq)

    @property
    def bytes(self) -> int:
        return len(self.ts) * POINT_BYTES  # held, filled or not


def _grown(buf: np.ndarray, n: int, cap: int) -> np.ndarray:
    out = np.empty(cap, buf.dtype)
    out[:n] = buf[:n]
    return out


class Head:
    """Ownership: one thread adds and erases (the loader's, or the feed's),
    lens threads read; ``_lock`` guards every field below (``_series``,
    ``_by_page``, ``_lo``, ``_floor``, ``points``, ``bytes``) and is never held
    while waiting. The adding thread builds new page versions outside the lock
    (it alone writes them) and swaps them in under it."""

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
        # (tenant, sensor) -> page number -> page; and which series hold a page.
        self._series: dict[tuple[str, int], dict[int, Page]] = {}
        self._by_page: dict[int, set[tuple[str, int]]] = {}
        self._floor = 2**62  # claims nothing until opened
        self._lo = -(2**62)
        self.points = 0
        self.bytes = 0

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
        # Built outside the lock: only this thread writes pages.
        changed = [
            (key, n, self._page(key, n, p_ts, p_value, seq))
            for key, n, p_ts, p_value in _groups(rows)
        ]
        with self._lock:
            for key, n, page in changed:
                pages = self._series.setdefault(key, {})
                old = pages.get(n)
                if old is None:
                    self._by_page.setdefault(n, set()).add(key)
                else:
                    self.points -= old.n
                    self.bytes -= old.bytes
                pages[n] = page
                self.points += page.n
                self.bytes += page.bytes
            self._evict(self._advance_lo() - EVICT_SLACK_MS)
            if self.bytes > self.max_bytes:
                self._shrink()

    def _page(self, key: tuple[str, int], n: int, ts: np.ndarray, value: np.ndarray, seq: int):
        pages = self._series.get(key, {})
        old = pages.get(n)
        if old is not None:
            return old.with_points(ts, value, seq)
        before = pages.get(n - 1)
        return Page.of(ts, value, seq, before.n if before is not None else 0)

    def erase(self, tenant: str, sensors: list[int], lo: int, hi: int) -> None:
        """Drop the sensors' points in [lo, hi) (a delete was applied)."""
        with self._lock:
            for s in sensors:
                pages = self._series.get((tenant, s), {})
                for n in [n for n in pages if lo >> PAGE_BITS <= n <= (hi - 1) >> PAGE_BITS]:
                    self._set(pages, (tenant, s), n, pages[n].without(lo, hi))

    def _set(self, pages: dict[int, Page], key: tuple[str, int], n: int, page: Page | None):
        # Under _lock.
        old = pages[n]
        self.points -= old.n
        self.bytes -= old.bytes
        if page is not None:
            pages[n] = page
            self.points += page.n
            self.bytes += page.bytes
            return
        del pages[n]
        self._by_page[n].discard(key)
        if not self._by_page[n]:
            del self._by_page[n]
        if not pages:
            del self._series[key]

    def covered_ms(self) -> int:
        """How far back from now the head answers."""
        return max(0, int(self.clock() * 1000) - self.lo())

    def _shrink(self) -> None:
        """Over the memory bound (a faster stream than the head was sized
        for): give up the oldest pages until a tenth is free, moving ``lo``
        past them."""
        for n in sorted(self._by_page):  # bounded: each round drops a page number
            if self.bytes <= 0.9 * self.max_bytes:
                break
            self._drop_page(n)
            self._lo = max(self._lo, (n + 1) << PAGE_BITS)

    def _evict(self, below: int) -> None:
        # Under _lock: whole pages that end at or below ``below``.
        for n in [n for n in self._by_page if (n + 1) << PAGE_BITS <= below]:
            self._drop_page(n)

    def _drop_page(self, n: int) -> None:
        for key in list(self._by_page.get(n, ())):
            self._set(self._series[key], key, n, None)

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
    ) -> tuple[int, dict[int, HeadPart]]:
        """(boundary, parts): each sensor's points of loads up to ``max_seq`` in
        [max(start, boundary), end) per sensor. The boundary is ``start`` when
        the head holds the whole window; else ``lo`` rounded up to ``align``,
        or to the coarsest of align/2, align/4, … down to ``step`` that stays
        within the window (so the part below it changes seldom), on the grid
        that starts at ``origin``."""
        if not self.enabled:
            return end, {}
        with self._lock:
            lo = self._advance_lo()
            if start >= lo:
                boundary = start
            else:
                lo -= origin
                q = align
                while q > step and -(-lo // q) * q >= end - origin and (q // 2) % step == 0:
                    q //= 2
                boundary = -(-lo // q) * q + origin
            lo = max(start, boundary)
            if lo >= end:
                return boundary, {}
            held = {s: self._pages((tenant, s), lo, end) for s in sensors}
        return boundary, {s: HeadPart(held[s], lo, end, max_seq) for s in sensors}

    def _pages(self, key: tuple[str, int], lo: int, hi: int) -> list[Page]:
        # Under _lock: the series' pages that meet [lo, hi), in time order.
        pages = self._series.get(key, {})
        span = range(lo >> PAGE_BITS, ((hi - 1) >> PAGE_BITS) + 1)
        return [p for n in span if (p := pages.get(n)) is not None]

    def part(self, tenant: str, sensor: int, lo: int, hi: int, max_seq: int) -> HeadPart | None:
        """One sensor's points in [lo, hi) of loads up to ``max_seq``; None
        if the head does not hold all of them (``lo`` below :meth:`lo`)."""
        if not self.enabled or lo >= hi:
            return None
        with self._lock:
            if lo < self._advance_lo():
                return None
            held = self._pages((tenant, sensor), lo, hi)
        return HeadPart(held, lo, hi, max_seq)


Cells = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class HeadPart:
    """One sensor's part of a lens from the head: its pages' points in
    [lo, hi) of loads up to ``max_seq``, read without the head's lock."""

    pages: list[Page]
    lo: int
    hi: int
    max_seq: int

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(ts, value), sorted by time."""
        return _join([p.upto(self.lo, self.hi, self.max_seq) for p in self.pages])

    def buckets(self, step: int, origin: int = 0) -> Cells:
        """As :func:`buckets` of :meth:`points`, for [lo, hi) on the step's
        grid: whole pages from their kept buckets (a bucket a page edge cuts
        is folded from both pages), a page with points of a load newer than
        ``max_seq`` from its points."""
        if (self.lo - origin) % step or (self.hi - origin) % step:
            return buckets(*self.points(), step, origin)  # not whole buckets: none kept fits
        b_lo, b_hi = (self.lo - origin) // step, (self.hi - origin) // step
        parts = []
        for p in self.pages:
            if p.max_seq <= self.max_seq:
                cells = p.cells(step, origin)
                a, b = np.searchsorted(cells[0], [b_lo, b_hi])
                parts.append(tuple(c[a:b] for c in cells))
            else:
                parts.append(buckets(*p.upto(self.lo, self.hi, self.max_seq), step, origin))
        return _folded([c for c in parts if len(c[0])])

    def m4(self, step: int, origin: int = 0) -> M4:
        """As :func:`m4_buckets` of :meth:`points`."""
        return m4_buckets(*self.points(), step, origin)


def _folded(parts: list[Cells]) -> Cells:
    """Buckets of consecutive pages as one list, a bucket two pages share
    folded into one."""
    if not parts:
        e = np.empty(0)
        return np.empty(0, np.int64), e, np.empty(0, np.int64), e, e
    if len(parts) == 1:
        return parts[0]
    b, sm, cnt, mn, mx = (np.concatenate(c) for c in zip(*parts))
    if (b[1:] != b[:-1]).all():
        return b, sm, cnt, mn, mx
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    return (
        b[starts],
        np.add.reduceat(sm, starts),
        np.add.reduceat(cnt, starts),
        np.minimum.reduceat(mn, starts),
        np.maximum.reduceat(mx, starts),
    )


def _groups(rows: pa.Table):
    """(series key, page number, ts, value) of each page a load writes, each
    group sorted by time: one sort for the whole load, then views of it."""
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
    key = (codes.astype(np.uint64) << np.uint64(32)) | sensor.astype(np.uint64)
    order = np.argsort(key, kind="stable")
    key, ts, value = key[order], ts[order], value[order]
    same = key[1:] == key[:-1]
    if (same & (ts[1:] < ts[:-1])).any():
        order = np.lexsort((ts, key))
        key, ts, value = key[order], ts[order], value[order]
        same = key[1:] == key[:-1]
    page = ts >> PAGE_BITS
    cuts = np.flatnonzero(~same | (page[1:] != page[:-1])) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [len(key)])).tolist()
    for a, b, k, n in zip(starts, ends, key[starts].tolist(), page[starts].tolist()):
        yield (names[k >> 32], k & 0xFFFFFFFF), n, ts[a:b], value[a:b]


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pages' points in page order: in time order already."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def buckets(
    ts: np.ndarray, value: np.ndarray, step: int, origin: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket number, sum, count, min, max) of time-sorted points; bucket n
    is [origin + n·step, origin + (n+1)·step)."""
    if len(ts) == 0:
        e = np.empty(0)
        return np.empty(0, np.int64), e, np.empty(0, np.int64), e, e
    numbers, starts = _starts(ts, step, origin)
    s = stats_of_points(starts, value)
    # Counts are far below 2**63: the unsigned column read as signed, no copy.
    return numbers, s["sum"], s["cnt"].view(np.int64), s["min"], s["max"]


def m4_buckets(ts: np.ndarray, value: np.ndarray, step: int, origin: int = 0) -> M4:
    """Each bucket's M4 points, in the order of :func:`buckets`."""
    if len(ts) == 0:
        return M4.empty()
    return of_points(_starts(ts, step, origin)[1], ts, value)


def _starts(ts: np.ndarray, step: int, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket number, first row) of each non-empty bucket of time-sorted
    points (``ts`` non-empty)."""
    b0, b1 = (int(ts[0]) - origin) // step, (int(ts[-1]) - origin) // step
    if b1 - b0 >= len(ts):  # sparse points: a pass over them is cheaper
        b = (ts - origin) // step
        starts = np.concatenate(([0], np.flatnonzero(b[1:] != b[:-1]) + 1))
        return b[starts], starts
    # Dense points (a lens's usual case): each bucket's first row by binary
    # search, no arithmetic over every point.
    numbers = np.arange(b0, b1 + 1, dtype=np.int64)
    rows = np.searchsorted(ts, numbers * step + origin)
    full = np.empty(len(rows), bool)
    full[:-1] = rows[1:] != rows[:-1]
    full[-1] = True  # the last bucket holds ts[-1]
    return numbers[full], rows[full]
