"""The lens cache: whole chunks of buckets that past lenses computed, kept
until a load writes a point into them.

A chunk is ``CHUNK_BUCKETS`` consecutive buckets of one sensor at one step,
aligned to the epoch (or the first buckets of one, up to where the head takes
over), so the same chunk serves every later window that covers
it whole: a live view that moves on, the same sensor in another user's lens.
Only the edges of a window and the chunks a load has touched since are read
from ClickHouse again. A live view's newest chunk grows: its first buckets,
kept while the head still held them, and the head for the rest answer it
without a query (``first_part``).

Exactness rests on two rules, both driven by each load's footprint (the
(sensor, 4.1 s cell) pairs it writes, see ``LoadSpan``):

* a load drops every cached chunk it touches *before* it writes (``Visibility``
  calls :meth:`LensCache.invalidate` from ``begin``);
* a lens stores a chunk only if no load that was in flight when it read, or
  began since, touches that chunk (checked under the cache lock, after the
  load would have been registered).

"Touches" means writes into the buckets the chunk holds (``held``): a load of
newer points leaves the first part of a chunk as it was.

So a chunk in the cache always equals the raw data of the completed loads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from lenshouse.lens.visibility import Loads, LoadSpan, Snapshot

CHUNK_BUCKETS = 64
ENTRY_OVERHEAD = 400  # bytes of Python objects per entry, besides its arrays


@dataclass(frozen=True)
class Chunk:
    """Non-empty buckets of one chunk: bucket numbers and their aggregates."""

    b: np.ndarray  # int64 bucket numbers (t // step)
    sum: np.ndarray
    cnt: np.ndarray
    min: np.ndarray
    max: np.ndarray
    upto: int = CHUNK_BUCKETS  # the chunk's first buckets it holds (its key's last part)

    def first(self, n: int, upto: int) -> Chunk:
        """The first ``upto`` buckets of it, chunk ``n`` (at most what it holds)."""
        return chunk_of(self.b, self.sum, self.cnt, self.min, self.max, n, upto)

    @property
    def nbytes(self) -> int:
        return ENTRY_OVERHEAD + sum(
            a.nbytes for a in (self.b, self.sum, self.cnt, self.min, self.max)
        )


# tenant, sensor, step, chunk number, buckets held: CHUNK_BUCKETS, or fewer for
# the first part of a chunk whose rest the head answers
Key = tuple[str, int, int, int, int]


def chunk_span(step: int) -> int:
    return step * CHUNK_BUCKETS


def chunk_of(
    b: np.ndarray,
    sums: np.ndarray,
    cnts: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
    n: int,
    upto: int,
) -> Chunk:
    """Chunk ``n``'s first ``upto`` buckets out of bucket columns sorted by
    ``b``, copied (the cache outlives the lens they came from)."""
    lo, hi = np.searchsorted(b, [n * CHUNK_BUCKETS, n * CHUNK_BUCKETS + upto])
    return Chunk(
        b[lo:hi].astype(np.int64), sums[lo:hi].copy(), cnts[lo:hi].astype(np.int64),
        mins[lo:hi].copy(), maxs[lo:hi].copy(), upto,
    )  # fmt: skip


def held(key: Key) -> tuple[int, int]:
    """The time range a chunk's buckets cover: only loads writing there change it."""
    _, _, step, n, upto = key
    return n * chunk_span(step), n * chunk_span(step) + upto * step


class LensCache:
    """Chunks of lenses computed in this process (the embedded server).

    Ownership: lens request threads get and put; the loader's thread drops
    what a load will write into (``invalidate``, from ``on_begin``, before
    the load's rows can be read). ``_lock`` guards ``_entries``,
    ``_by_sensor``, ``bytes`` and the counters; ``max_bytes`` is set once."""

    def __init__(self, visibility: Loads, max_bytes: int = 256 << 20) -> None:
        self.visibility = visibility
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, Chunk] = OrderedDict()
        self._by_sensor: dict[tuple[str, int], set[Key]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.invalidated = 0
        self.refused = 0  # chunks a lens could not store: a load was writing them
        visibility.on_begin(self.invalidate)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Chunk | None:
        with self._lock:
            chunk = self._entries.get(key)
            if chunk is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return chunk

    def first_part(self, tenant: str, sensor: int, step: int, n: int) -> Chunk | None:
        """The longest first part of chunk ``n`` held (a lens wanting fewer
        buckets takes its start; one wanting more, the head for the rest)."""
        with self._lock:
            keys = [
                k for k in self._by_sensor.get((tenant, sensor), ()) if k[2] == step and k[3] == n
            ]
            if not keys:
                return None
            key = max(keys, key=lambda k: k[4])
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]

    def put_many(self, items: list[tuple[Key, Chunk]], snap: Snapshot) -> int:
        """Store chunks read under ``snap`` that no load since has touched; returns how many."""
        if not self.enabled or not items:
            return 0
        stored = 0
        with self._lock:
            newer = self.visibility.started_since(snap)
            if newer is None:
                self.refused += len(items)
                return 0
            loads = [*snap.inflight, *newer]
            for key, chunk in items:
                tenant, sensor = key[0], key[1]
                lo, hi = held(key)
                if any(s.touches_sensor(tenant, sensor, lo, hi) for s in loads):
                    self.refused += 1
                    continue
                self._store(key, chunk)
                stored += 1
            self._evict()
        return stored

    def invalidate(self, span: LoadSpan) -> None:
        """Drop every chunk ``span`` writes into; runs before the load inserts."""
        with self._lock:
            if not self._entries:
                return
            for tenant in span.tenants:
                keys = None if span.cells is None else span.cells.get(tenant)
                for (t, sensor), entries in list(self._by_sensor.items()):
                    if t != tenant:
                        continue
                    if keys is not None and not _has_sensor(keys, sensor):
                        continue
                    for key in list(entries):
                        if span.touches_sensor(tenant, sensor, *held(key)):
                            self._drop(key)
                            self.invalidated += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_sensor.clear()
            self.bytes = 0

    # -- bookkeeping under the lock -------------------------------------------
    def _store(self, key: Key, chunk: Chunk) -> None:
        if key in self._entries:
            self._drop(key)
        for other in list(self._by_sensor.get((key[0], key[1]), ())):
            if other[2:4] == key[2:4] and other[4] < key[4]:
                self._drop(other)  # a shorter first part of the same chunk
        self._entries[key] = chunk
        self._by_sensor.setdefault((key[0], key[1]), set()).add(key)
        self.bytes += chunk.nbytes

    def _drop(self, key: Key) -> None:
        chunk = self._entries.pop(key)
        self.bytes -= chunk.nbytes
        entries = self._by_sensor[(key[0], key[1])]
        entries.discard(key)
        if not entries:
            del self._by_sensor[(key[0], key[1])]

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))


def _has_sensor(keys: np.ndarray, sensor: int) -> bool:
    base = np.uint64(sensor << 32)
    i = np.searchsorted(keys, base, "left")
    return bool(i < len(keys) and (int(keys[i]) >> 32) == sensor)


class PinnedCache:
    """Chunks of pinned reads (cluster mode: lens servers, which see no load
    begin): each is kept with the shard floors it was read at, and serves a
    later snapshot only while no load completed since then (every partition's
    loads on record, ``Snapshot.completed``) wrote into its time range.

    A chunk read as of floors F equals the raw points of the loads up to F; a
    later snapshot at F' reads the loads up to F'; the loads between are on
    record with their time range (the keeper keeps each partition's last
    ones), so if none of them meets the chunk's range, the chunk equals its
    read at F' too. If some are no longer on record, the chunk is dropped.

    Ownership: any request thread; ``_lock`` guards ``_entries`` and ``bytes``."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[Chunk, tuple[int, ...]]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.invalidated = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, valid: Validity) -> Chunk | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not valid(entry[1], key):
                self._drop(key)
                self.invalidated += 1
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put_many(self, items: list[tuple[Key, Chunk]], snap: Snapshot) -> int:
        if not self.enabled or not items or snap.floors is None:
            return 0
        with self._lock:
            for key, chunk in items:
                if key in self._entries:
                    self._drop(key)
                self._entries[key] = (chunk, snap.floors)
                self.bytes += chunk.nbytes
            while self.bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))
        return len(items)

    def _drop(self, key: Key) -> None:
        chunk, _ = self._entries.pop(key)
        self.bytes -= chunk.nbytes


class Validity:
    """Whether a chunk read at some floors still holds at ``snap`` for
    ``tenant``: per partition, the loads completed after the chunk's floor
    (all on record), their time ranges folded from the newest back, so that
    one lookup answers for any chunk."""

    def __init__(self, snap: Snapshot, tenant: str) -> None:
        assert snap.floors is not None and snap.completed is not None
        self.floors = snap.floors
        self.parts = []
        for spans in snap.completed:
            oldest = spans[0].seq if spans else None
            mine = [s for s in spans if tenant in s.tenants]
            seqs = np.array([s.seq for s in mine], np.int64)
            lo = np.minimum.accumulate(np.array([s.min_ts for s in mine][::-1], np.int64))[::-1]
            hi = np.maximum.accumulate(np.array([s.max_ts for s in mine][::-1], np.int64))[::-1]
            self.parts.append((oldest, seqs, lo, hi))

    def __call__(self, floors: tuple[int, ...], key: Key) -> bool:
        lo, hi = held(key)
        for then, now, (oldest, seqs, first, last) in zip(floors, self.floors, self.parts):
            if then == now:
                continue
            if then > now or oldest is None or oldest > then:
                return False  # an older snapshot, or loads since then no longer on record
            i = int(np.searchsorted(seqs, then, "right"))
            if i < len(seqs) and first[i] < hi and last[i] >= lo:
                return False
        return True
