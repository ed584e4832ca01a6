"""Point-level deduplication: the first accepted value of (tenant, sensor, ts) wins.

The loader asks :class:`SeenIndex` which points of a record are new. The index
is a cache of what ClickHouse holds, one bit per millisecond, in pages of
4096 ms (512 bytes) per (tenant, sensor). A page not in memory is filled from
the raw table with one range query per load, restricted to rows of earlier
loads (``seq < current``), so a load replayed after a crash filters exactly
as it did the first time and its retried insert carries the same rows under
the same deduplication token.

Memory: 512 bytes per sensor per 4.1 s of history kept; the default 65,536
pages (32 MiB) hold ~4.5 minutes for 1000 sensors. Older duplicates cost a
ClickHouse range read of the pages they fall in, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lenshouse.points import PointBatch
from lenshouse.storage.store import Store

PAGE_BITS = 12
PAGE_MS = 1 << PAGE_BITS  # 4096 ms
PAGE_BYTES = PAGE_MS // 8


@dataclass
class Duplicates:
    """Points refused as duplicates in one load, kept to count value conflicts."""

    tenant: list[str] = field(default_factory=list)
    sensor: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)

    def add(self, batch: PointBatch, mask: np.ndarray) -> None:
        if mask.any():
            self.tenant.append(batch.tenant)
            self.sensor.append(batch.sensor[mask])
            self.ts.append(batch.ts[mask])
            self.value.append(batch.value[mask])

    def __len__(self) -> int:
        return sum(len(t) for t in self.ts)


class SeenIndex:
    def __init__(self, store: Store, capacity_pages: int = 65_536) -> None:
        self.store = store
        self.capacity = capacity_pages
        self._bits = np.zeros((min(capacity_pages, 4096), PAGE_BYTES), np.uint8)
        self._slot: dict[tuple[str, int, int], int] = {}
        self._last_use = np.zeros(len(self._bits), np.int64)
        self._free = list(range(len(self._bits) - 1, -1, -1))
        self._load = 0
        self._seq = 0
        # Per (tenant, sensor), pages that may hold stored points: none outside.
        # Pages past a sensor's newest data (the live head) need no query at all.
        self._extent: dict[tuple[str, int], tuple[int, int]] = {}
        self._extent_loaded = False
        self.fill_queries = 0
        self.fill_rows = 0
        # Called before reading raw: the loader waits there for the load it is
        # still storing, so a fill sees every earlier load.
        self.before_read: Callable[[], None] = lambda: None

    @property
    def pages(self) -> int:
        return len(self._slot)

    @property
    def memory_bytes(self) -> int:
        return self._bits.nbytes

    def begin_load(self, seq: int) -> None:
        """Start filtering the records of load ``seq``; evict cold pages first."""
        self._load += 1
        self._seq = seq
        if not self._extent_loaded:
            self._load_extents()
        if len(self._slot) > 0.9 * self.capacity:
            self._evict(int(0.75 * self.capacity))

    def forget(self) -> None:
        """Drop every page, e.g. after a load failed half way through filtering."""
        self._slot.clear()
        self._free = list(range(len(self._bits) - 1, -1, -1))
        self._extent_loaded = False

    def forget_sensors(self, tenant: str, sensors: set[int]) -> None:
        """Drop the pages of some sensors (their points were deleted): they
        are read again from raw when next needed."""
        for key in [k for k in self._slot if k[0] == tenant and k[1] in sensors]:
            self._free.append(self._slot.pop(key))

    def _load_extents(self) -> None:
        """Page ranges per sensor from the coarsest rollup: a superset of what
        earlier loads stored (the tier may also hold part of a load in doubt,
        which only costs an extra query)."""
        self.before_read()
        rows = self.store.extents()
        self._extent = {
            (t, s): (lo >> PAGE_BITS, (hi + 3_600_000) >> PAGE_BITS)
            for t, s, lo, hi in zip(
                rows.column("tenant").to_pylist(),
                rows.column("sensor").to_pylist(),
                rows.column("lo").to_pylist(),
                rows.column("hi").to_pylist(),
            )
        }
        self._extent_loaded = True

    def new_points(self, batch: PointBatch) -> np.ndarray:
        """Mask of points never seen before; marks them as seen."""
        n = len(batch)
        if n == 0:
            return np.zeros(0, bool)
        sensor = batch.sensor.astype(np.int64)
        ts = batch.ts
        ds, dt = np.diff(sensor), np.diff(ts)
        if np.all((ds > 0) | ((ds == 0) & (dt > 0))):
            order, first = None, None  # sorted, no repeats inside the batch: the usual case
        else:
            order = np.lexsort((ts, sensor))
            sensor, ts = sensor[order], ts[order]
            ds, dt = np.diff(sensor), np.diff(ts)
            first = np.concatenate(([True], (ds != 0) | (dt != 0)))
        page = ts >> PAGE_BITS
        starts = np.concatenate(([0], np.flatnonzero((ds != 0) | (np.diff(page) != 0)) + 1))
        slots = self._slots(batch.tenant, sensor[starts], page[starts])
        slot = np.repeat(slots, np.diff(np.append(starts, n)))
        off = ts & (PAGE_MS - 1)
        byte = slot * PAGE_BYTES + (off >> 3)
        bit = (off & 7).astype(np.uint8)
        flat = self._bits.reshape(-1)
        keep = ((flat[byte] >> bit) & 1) == 0
        if first is not None:
            keep &= first
        _set_bits(flat, byte[keep], bit[keep])
        if order is None:
            return keep
        out = np.empty(n, bool)
        out[order] = keep
        return out

    # -- pages --------------------------------------------------------------
    def _slots(self, tenant: str, sensors: np.ndarray, pages: np.ndarray) -> np.ndarray:
        out = np.empty(len(sensors), np.int64)
        missing: list[tuple[int, int, int]] = []
        get = self._slot.get
        extent = self._extent
        for i, (s, p) in enumerate(zip(sensors.tolist(), pages.tolist())):
            slot = get((tenant, s, p))
            if slot is None:
                slot = self._allocate((tenant, s, p))
                lo, hi = extent.get((tenant, s), (p + 1, p - 1))
                if lo <= p <= hi:
                    missing.append((s, p, slot))
                extent[(tenant, s)] = (min(lo, p), max(hi, p))
            out[i] = slot
        self._last_use[out] = self._load
        if missing:
            self._fill(tenant, missing)
        return out

    def _allocate(self, key: tuple[str, int, int]) -> int:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._bits[slot] = 0
        self._slot[key] = slot
        return slot

    def _grow(self) -> None:
        old = len(self._bits)
        self._bits = np.concatenate([self._bits, np.zeros_like(self._bits)])
        self._last_use = np.concatenate([self._last_use, np.zeros(old, np.int64)])
        self._free = list(range(2 * old - 1, old - 1, -1))

    def _evict(self, keep: int) -> None:
        items = sorted(self._slot.items(), key=lambda kv: self._last_use[kv[1]])
        for key, slot in items[: len(items) - keep]:
            del self._slot[key]
            self._free.append(slot)

    def _fill(self, tenant: str, missing: list[tuple[int, int, int]]) -> None:
        """Load the pages in ``missing`` from raw rows of earlier loads."""
        self.before_read()
        self.fill_queries += 1
        rows = self.store.seen_keys(tenant, [(s, p) for s, p, _ in missing], PAGE_MS, self._seq)
        if rows.num_rows == 0:
            return
        self.fill_rows += rows.num_rows
        sensor = rows.column("sensor").to_numpy().astype(np.int64)
        ts = rows.column("ts").to_numpy()
        slot_of = {(s, p): slot for s, p, slot in missing}
        pairs, inv = pair_groups(sensor, ts >> PAGE_BITS)
        # A read of many pages merges nearby ones and brings rows of pages
        # not asked for: those are left alone (in memory already, or not at all).
        slots = np.array([slot_of.get(pair, -1) for pair in pairs])[inv]
        asked = slots >= 0
        off = ts[asked] & (PAGE_MS - 1)
        np.bitwise_or.at(
            self._bits.reshape(-1),
            slots[asked] * PAGE_BYTES + (off >> 3),
            (1 << (off & 7)).astype(np.uint8),
        )


def pair_groups(a: np.ndarray, b: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Distinct (a, b) pairs and, per element, the index of its pair."""
    order = np.lexsort((b, a))
    sa, sb = a[order], b[order]
    new = np.concatenate(([True], (np.diff(sa) != 0) | (np.diff(sb) != 0)))
    group = np.cumsum(new) - 1
    inv = np.empty(len(a), np.int64)
    inv[order] = group
    return list(zip(sa[new].tolist(), sb[new].tolist())), inv


def _set_bits(flat: np.ndarray, byte: np.ndarray, bit: np.ndarray) -> None:
    """flat[byte] |= 1 << bit, where equal bytes are adjacent in ``byte``."""
    if len(byte) == 0:
        return
    mask = np.left_shift(np.uint8(1), bit)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(byte)) + 1))
    flat[byte[starts]] |= np.bitwise_or.reduceat(mask, starts)


def count_conflicts(store: Store, dups: Duplicates, max_seq: int) -> int:
    """Refused duplicates whose value differs from the stored (first) value."""
    conflicts = 0
    for tenant in sorted(set(dups.tenant)):
        idx = [i for i, t in enumerate(dups.tenant) if t == tenant]
        sensor = np.concatenate([dups.sensor[i] for i in idx]).astype(np.int64)
        ts = np.concatenate([dups.ts[i] for i in idx])
        value = np.concatenate([dups.value[i] for i in idx])
        pairs = set(zip(sensor.tolist(), (ts >> PAGE_BITS).tolist()))
        rows = store.stored_values(tenant, pairs, PAGE_MS, max_seq)
        conflicts += _differing(
            rows.column("sensor").to_numpy().astype(np.int64),
            rows.column("ts").to_numpy(),
            rows.column("value").to_numpy(),
            sensor,
            ts,
            value,
        )
    return conflicts


def _differing(s1, t1, v1, s2, t2, v2) -> int:
    """How many keys (s2, t2) are stored in (s1, t1) with a value other than v2."""
    if len(s1) == 0:
        return 0
    pos, found = key_lookup(s1, t1, s2, t2)
    return int(np.count_nonzero(found & (v1[pos] != v2)))


def key_lookup(
    s1: np.ndarray, t1: np.ndarray, s2: np.ndarray, t2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each key (s2, t2): its position among the keys (s1, t1), and
    whether it is there (where not, the position is meaningless)."""
    if len(s1) == 0:
        return np.zeros(len(s2), np.int64), np.zeros(len(s2), bool)
    ids = np.unique(np.concatenate([s1, s2]))
    k1 = (np.searchsorted(ids, s1) << 42) + t1  # ts < 2^42 until the year 2109
    k2 = (np.searchsorted(ids, s2) << 42) + t2
    order = np.argsort(k1)
    pos = order[np.minimum(np.searchsorted(k1[order], k2), len(k1) - 1)]
    return pos, k1[pos] == k2
