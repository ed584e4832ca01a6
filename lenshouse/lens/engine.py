"""The lens engine: plans a lens, runs it as one storage read, and checks
that no load changed what it read while it ran.

Ownership: ``cache`` and ``head`` are thread-safe objects of their own;
``visibility`` is shared with the loader, which alone writes it. The engine
keeps no other mutable state, so any number of request threads use it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lenshouse.lens.answer import Grid, Lens, LensRequest, Series
from lenshouse.lens.cache import (
    CHUNK_BUCKETS,
    Chunk,
    Key,
    LensCache,
    PinnedCache,
    Validity,
    chunk_of,
    chunk_span,
)
from lenshouse.lens.cache import held as held_range
from lenshouse.lens.cluster_head import ClusterHead
from lenshouse.lens.head import Head, HeadPart
from lenshouse.lens.planner import Segment, plan, raw_span, usable_tiers
from lenshouse.lens.steps import bucket_count, choose_step, whole_buckets
from lenshouse.lens.visibility import Loads, Snapshot
from lenshouse.points import Invalid, check_tenant
from lenshouse.retention.horizons import Horizons
from lenshouse.retention.policy import RAW, SOURCES
from lenshouse.rollup.m4 import M4, M4_FIELDS
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.errors import RetryableError
from lenshouse.storage.queries import FLOAT_COLUMNS, M4_FLAT
from lenshouse.storage.schema import M4_SOURCE
from lenshouse.storage.store import Store

MAX_BUCKETS = 20_000
# An explicit step that no tier divides is answered from raw points: at most
# this much window (6M points for 10 sensors at 1 kHz).
MAX_RAW_WINDOW_MS = 10 * 60_000
# A load in flight holds back rollups from its oldest point on; past this much
# raw reading it is cheaper to wait for the load to finish.
MAX_HEAD_RAW_MS = 30_000
# Buckets off the tiers' grid find their edges in the time column of every raw
# point of the window (a PREWHERE scan, ~1.6 ms per million points): at most this
# many (10 sensors × 1 h at 1 kHz).
MAX_EDGE_SCAN_POINTS = 40_000_000
# Reads that may race a load before a lens reads with loads held back.
OPTIMISTIC_READS = 3
# Where loads cannot be held back (loaders in other processes), a lens keeps
# reading optimistically, pausing between reads, for this long, then answers
# 503: a load in flight for a minute means its shard or the keeper is away.
RACE_PATIENCE_S = 20.0
# A live view keeps the first part of its newest chunk up to this long before
# now (newer buckets may still get points): the next view of the sensor reads
# that part from the cache and the rest from the head, with no query.
SETTLED_MS = 10_000
# An export answers at most this many points; the rest through its continuation
# (``after``), so no request holds a month of every sensor in memory at once.
MAX_EXPORT_POINTS = 2_000_000


class LensEngine:
    def __init__(
        self,
        store: Store,
        visibility: Loads,
        cache_bytes: int = 256 << 20,
        head: Head | None = None,
        horizons: Horizons | None = None,
        cluster_head: ClusterHead | None = None,
    ) -> None:
        self.store = store
        self.cluster_head = cluster_head  # lens servers: the newest seconds per shard
        self.visibility = visibility
        self.cache = LensCache(visibility, cache_bytes)
        self.pinned = PinnedCache(cache_bytes)  # lenses pinned to shard floors (cluster mode)
        self.head = head or Head(0)
        self.horizons = horizons
        self.boot = secrets.token_hex(4)  # tags of another process never match
        # Around each lens: a lens server's yielding to loads catching up
        # (lenshouse.lens.catch_up); nothing elsewhere.
        self.pace: Callable[[], AbstractContextManager[None]] = nullcontext

    def resolve_step(
        self, start: int, end: int, points: int | None, step: int | None, origin: int = 0
    ) -> int:
        if end <= start:
            raise Invalid(f"end ({end}) must be after start ({start})")
        if step is not None:
            if step < 1:
                raise Invalid("step must be at least 1 ms")
            if bucket_count(start - origin, end - origin, step) > MAX_BUCKETS:
                raise Invalid(f"step {step} gives more than {MAX_BUCKETS} buckets")
            if not usable_tiers(step) and end - start > MAX_RAW_WINDOW_MS:
                r = TIERS[0].res_ms
                lo = max(r, step // r * r)
                raise Invalid(
                    f"step {step} ms: no rollup tier divides it, so this window would be read"
                    f" from raw points (at most {MAX_RAW_WINDOW_MS // 60_000} minutes);"
                    f" use a multiple of {r} ms (e.g. {lo} or {lo + r})"
                )
            return step
        points = 2500 if points is None else points
        if not 1 <= points <= MAX_BUCKETS:
            raise Invalid(f"points must be 1..{MAX_BUCKETS}")
        return choose_step(start, end, points)

    def lens(
        self,
        sensors: list[int],
        start: int,
        end: int,
        points: int | None = None,
        step: int | None = None,
        tenant: str | None = None,
        origin: int = 0,
        m4: bool = False,
    ) -> Lens:
        """Buckets of ``step`` (or about ``points`` of them) meeting [start, end),
        on the grid of the epoch, or of ``origin`` (with an explicit step: the
        buckets are [origin + n·step, origin + (n+1)·step)); with ``m4``, each
        bucket's first, last, lowest and highest point too."""
        with self.pace():
            return self._lens(sensors, start, end, points, step, tenant, origin, m4)

    def _lens(
        self,
        sensors: list[int],
        start: int,
        end: int,
        points: int | None,
        step: int | None,
        tenant: str | None,
        origin: int,
        m4: bool,
    ) -> Lens:
        tenant = check_tenant(tenant)
        explicit = step is not None
        if origin and not explicit:
            raise Invalid("a lens with an origin needs an explicit step")
        step = self.resolve_step(start, end, points, step, origin)
        origin %= step
        floor = None
        if self.horizons is not None:
            for _ in SOURCES:  # bounded: each round moves to a coarser source
                first = whole_buckets(start - origin, end - origin, step)[0] + origin
                floor = self.horizons.floor(tenant, first)
                if floor is None or step % floor.res_ms == 0:
                    break
                step = floor.step(step, explicit)
        start, end = (x + origin for x in whole_buckets(start - origin, end - origin, step))
        if origin:
            self._check_edges(tenant, sensors, start, end, step)
        if origin and floor is not None and start < dict(floor.expired).get(RAW, start):
            # Off the tiers' grid every bucket reads raw points at its edges.
            raise Invalid(
                f"{floor.reason}; buckets that start {origin} ms past the grid read raw points"
                " at their edges, so the window must start after them"
            )
        if m4:
            self._check_m4(tenant, start)
        req = LensRequest(tenant, sensors, start, end, Grid(step, origin, m4), floor)
        for attempt in range(OPTIMISTIC_READS):
            read = self._read(req, self.visibility.snapshot())
            if read is None:
                break  # cheaper to read with loads held back than to read that much raw
            if read.valid:
                return self._finish(read, req, attempt)
        if not self.visibility.can_hold:
            return self._patient(req)
        with self.visibility.quiet() as snap:
            read = self._read(req, snap, quiet=True)
            if read is None:  # raw points needed below the raw mark (cannot happen when quiet)
                raise RetryableError("this lens needs raw points that have expired")
            return self._finish(read, req, OPTIMISTIC_READS)

    def _check_m4(self, tenant: str, start: int) -> None:
        """Refuse M4 below where this store's tiers began to hold M4 points."""
        if self.horizons is None:
            return
        mark = self.horizons.marks(tenant).get(M4_SOURCE)
        if mark is not None and start < mark:
            raise Invalid(
                f"first/last/tmin/tmax are known from {mark} on: the rollups below that were"
                " made before they kept M4 points, and the raw points have expired"
            )

    def _check_edges(
        self, tenant: str, sensors: list[int], start: int, end: int, step: int
    ) -> None:
        """Off the grid, the time column of every raw point in the window is read
        to find the edges: refused where that would be a long raw scan."""
        if end - start <= MAX_RAW_WINDOW_MS or not usable_tiers(step):
            return
        n = self.store.points_about(tenant, sensors, start, end)
        if n > MAX_EDGE_SCAN_POINTS:
            raise Invalid(
                f"buckets off the tiers' grid read raw points at their edges, which here means"
                f" scanning about {n:,} points (at most {MAX_EDGE_SCAN_POINTS:,}); narrow the"
                " window, or use buckets on the grid (an origin of 0)"
            )

    def _read(self, req: LensRequest, snap: Snapshot, quiet: bool = False) -> _Read | None:
        """One read: the newest part from the head, cached chunks, one query for
        the rest; None if the part a load in flight holds back is too long to
        read from raw, or lies where raw points have expired. The cache holds
        lenses on the epoch's grid without M4 points only."""
        tenant, sensors, start, end, floor = req.tenant, req.sensors, req.start, req.end, req.floor
        step, origin, m4 = req.grid
        if not quiet and _erasing(snap.inflight, tenant, sensors, start, end):
            return None  # rows are being removed: read once the delete is done
        if snap.floors is not None:
            return self._read_pinned(req, snap)
        span = chunk_span(step)
        boundary, head = self.head.read(
            tenant, sensors, start, end, snap.committed_seq, span, step, origin
        )
        stored_end = min(end, max(start, boundary))  # [start, stored_end) comes from storage
        caching = self.cache.enabled and not origin and not m4
        cached, missing = ({}, {})
        bridged: dict[int, tuple[int, int]] = {}
        if caching:
            cached, missing = self._cached(tenant, sensors, start, stored_end, step, boundary)
            bridged = self._bridge(req, stored_end, snap.committed_seq, cached, missing, head)
        wanted = _wanted(sensors, missing if caching else None, step, start, stored_end)
        cut = None
        if wanted and not quiet:
            cut = self._head_cut(snap, tenant, sensors, *_bounds(wanted))
            if cut is not None and caching:
                # Whole chunks would be read from raw past the cut, beyond the
                # window: read only the window, cache only chunks it holds whole.
                wanted, missing = _clip(wanted, missing, start, stored_end, step)
                cut = self._head_cut(snap, tenant, sensors, *_bounds(wanted)) if wanted else None
        held = floor.tiers if floor is not None else None
        groups = [
            (ids, [g for a, b in rs for g in plan(a, b, step, cut, held, origin)])
            for rs, ids in wanted.items()
        ]
        segments = [g for _, segs in groups for g in segs]
        if floor is not None:
            raw_mark = dict(floor.expired)[RAW]
            if any(g.tier is None and g.lo < raw_mark for g in segments):
                return None
        if cut is not None:
            plain = [
                g for rs in wanted for a, b in rs for g in plan(a, b, step, None, held, origin)
            ]
            if raw_span(segments) - raw_span(plain) > MAX_HEAD_RAW_MS * len(groups):
                return None
        # Raw rows of a load in flight are hidden by their seq; with none in
        # flight, the cheaper unfiltered read is checked afterwards instead.
        max_seq = snap.committed_seq if cut is not None else None
        table = (
            self.store.lens_rows(tenant, step, groups, max_seq, snap.hidden, origin, m4)
            if groups
            else None
        )
        cols = _columns(table, m4)
        read = _Read(tenant, step, snap, segments, cached, missing, cols, head, origin, m4)
        read.bridged = bridged
        read.valid = quiet or self._still_valid(
            snap, tenant, sensors, segments, cut is None, cached, step, (start, end)
        )
        return read

    def _bridge(
        self,
        req: LensRequest,
        stored_end: int,
        max_seq: int,
        cached: dict[int, dict[int, Chunk]],
        missing: dict[int, list[tuple[int, int]]],
        head: dict[int, HeadPart],
    ) -> dict[int, tuple[int, int]]:
        """Sensors whose last missing chunk ends where the head's part begins
        and whose first part is kept, where the head holds the rest: that
        part and the head from its end answer the chunk, without a query. The
        (chunk, buckets) so answered, per sensor."""
        step = req.grid.step
        span = chunk_span(step)
        out = {}
        for sensor, chunks in list(missing.items()):
            n, need = chunks[-1]
            if n * span + need * step != stored_end:
                continue
            first = self.cache.first_part(req.tenant, sensor, step, n)
            if first is None:
                continue
            if first.upto >= need:  # a longer part: its start is the chunk wanted
                cached.setdefault(sensor, {})[n] = first.first(n, need)
            else:
                rest = n * span + first.upto * step
                part = self.head.part(req.tenant, sensor, rest, req.end, max_seq)
                if part is None:
                    continue  # the head no longer holds the rest
                cached.setdefault(sensor, {})[n] = first
                head[sensor] = part
                out[sensor] = (n, need)
            chunks.pop()
            if not chunks:
                del missing[sensor]
        return out

    def _read_pinned(self, req: LensRequest, snap: Snapshot) -> _Read | None:
        """One read of exactly the loads complete at ``snap`` on each shard
        (their ``floors``), whatever loads run meanwhile: no re-read. Only a
        delete begun during the read (rows masked, not added) can spoil it."""
        tenant, sensors, start, end, floor = req.tenant, req.sensors, req.start, req.end, req.floor
        step, origin, m4 = req.grid
        held = floor.tiers if floor is not None else None
        caching = self.pinned.enabled and not origin and not m4 and snap.completed is not None
        boundaries, head = self._pinned_head(tenant, sensors, start, end, snap, step, origin)
        cached: dict[int, dict[int, Chunk]] = {}
        missing: dict[int, list[tuple[int, int]]] = {}
        wanted: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for boundary, ids in _by_boundary(sensors, boundaries).items():
            stored_end = min(end, max(start, boundary))  # the rest comes from the head
            if caching:
                c, m = self._pinned_cached(tenant, ids, start, stored_end, step, snap, boundary)
                cached |= c
                missing |= m
            for rs, group in _wanted(
                ids, missing if caching else None, step, start, stored_end
            ).items():
                wanted.setdefault(rs, []).extend(group)
        groups = [
            (ids, [g for a, b in rs for g in plan(a, b, step, None, held, origin)])
            for rs, ids in wanted.items()
        ]
        segments = [g for _, segs in groups for g in segs]
        if floor is not None and any(
            g.tier is None and g.lo < dict(floor.expired)[RAW] for g in segments
        ):
            # As a read with loads held back says (no waiting changes it).
            raise RetryableError("this lens needs raw points that have expired")
        table = (
            self.store.pinned_lens_rows(tenant, step, groups, snap.floors, origin, m4)
            if groups
            else None
        )
        cols = _columns(table, m4)
        read = _Read(tenant, step, snap, segments, cached, missing, cols, head, origin, m4)
        read.valid = True
        if self.store.can_erase:
            newer = self.visibility.started_since(snap)
            read.valid = newer is not None and not _erasing(newer, tenant, sensors, start, end)
        return read

    def _pinned_head(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        snap: Snapshot,
        step: int,
        origin: int,
    ) -> tuple[dict[int, int], dict[int, HeadPart]]:
        """Per sensor where the head's part begins (``end``: no head), and the
        head's points from there on, once every load complete at ``snap`` is
        accounted for."""
        head = self.cluster_head
        if head is None or not head.enabled:
            return dict.fromkeys(sensors, end), {}
        head.settle(snap)
        return head.read(tenant, sensors, start, end, snap, step, origin)

    def _pinned_cached(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        step: int,
        snap: Snapshot,
        boundary: int,
    ) -> tuple[dict[int, dict[int, Chunk]], dict[int, list[tuple[int, int]]]]:
        """Cached chunks still valid at ``snap``, and per sensor the (chunk,
        buckets) it lacks; a chunk the head's ``boundary`` (or the window's
        end) cuts is held up to it."""
        if start >= end:
            return {}, {}
        valid = Validity(snap, tenant)
        return _lookup(
            lambda key: self.pinned.get(key, valid), tenant, sensors, start, end, step, boundary
        )

    def _patient(self, req: LensRequest) -> Lens:
        """Reads until one is valid, with pauses that let the loads in the way
        finish; a 503 once they have taken ``RACE_PATIENCE_S``."""
        deadline = time.monotonic() + RACE_PATIENCE_S
        attempt, pause = OPTIMISTIC_READS, 0.05
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
            read = self._read(req, self.visibility.snapshot())
            attempt += 1
            if read is not None and read.valid:
                return self._finish(read, req, attempt)
        raise RetryableError(
            f"loads in flight kept changing this lens's data for {RACE_PATIENCE_S:.0f} s"
        )

    def _cached(
        self, tenant: str, sensors: list[int], start: int, end: int, step: int, boundary: int
    ) -> tuple[dict[int, dict[int, Chunk]], dict[int, list[tuple[int, int]]]]:
        """Cached chunks meeting [start, end), and per sensor the (chunk, buckets)
        it lacks; a chunk the head's ``boundary`` cuts is held up to it."""
        if not self.cache.enabled or start >= end:
            return {}, {}
        return _lookup(self.cache.get, tenant, sensors, start, end, step, boundary)

    def _finish(self, read: _Read, req: LensRequest, retries: int) -> Lens:
        step, origin, m4 = req.grid
        start, end = req.start, req.end
        series = read.series(req.sensors, (start - origin) // step, (end - origin) // step)
        if read.snap.floors is not None:
            if read.missing:
                self.pinned.put_many(read.fills(req.sensors), read.snap)
        elif self.cache.enabled and not origin and not m4:
            # Below the loads in flight too: a view behind a lagging loader
            # keeps parts those loads will not write into.
            settled = min(
                [int(self.head.clock() * 1000) - SETTLED_MS]
                + [s.min_ts for s in read.snap.inflight]
            )
            grown = _first_parts(req, series, read.bridged, settled)
            self.cache.put_many(read.fills(req.sensors) + grown, read.snap)
        return Lens(
            start, end, step, series, read.segments, retries, req.floor, origin,
            read.snap.watermark,
        )  # fmt: skip

    def unchanged_since(
        self, watermark: int, tenant: str, sensors: list[int], start: int, end: int
    ) -> bool:
        """Whether no load after ``watermark`` (a lens's) touched these sensors
        in [start, end): a lens of them there would answer what it did then."""
        newer = self.visibility.begun_after(watermark)
        if newer is None:
            return False  # too long ago to tell
        return not any(
            span.touches_sensor(check_tenant(tenant), s, start, end)
            for span in newer
            for s in sensors
        )

    def export(
        self,
        sensors: list[int],
        start: int,
        end: int,
        tenant: str | None = None,
        limit: int = MAX_EXPORT_POINTS,
        after: tuple[int, int] | None = None,
    ) -> tuple[pa.Table, tuple[int, int] | None]:
        """Raw points of completed loads in [start, end), ordered by sensor and
        time, at most ``limit`` of them past ``after``; and the key to continue
        after if there are more (None: this was the last part)."""
        if end <= start:
            raise Invalid(f"end ({end}) must be after start ({start})")
        if not 1 <= limit <= MAX_EXPORT_POINTS:
            raise Invalid(f"limit must be 1..{MAX_EXPORT_POINTS} points")
        tenant = check_tenant(tenant)
        mark = self.horizons.raw_mark(tenant) if self.horizons is not None else None
        if mark is not None and start < mark:
            start = min(mark, end)  # below it raw points have expired (or are going)
        snap = self.visibility.snapshot()
        if snap.floors is not None:
            rows = self.store.pinned_export_rows(
                tenant, sensors, start, end, snap.floors, limit + 1, after
            )
        else:
            rows = self.store.export_rows(
                tenant, sensors, start, end, snap.committed_seq, limit + 1, snap.hidden, after
            )
        rows = rows.select(["sensor", "ts", "value"])
        if rows.num_rows <= limit:
            return rows, None
        rows = rows.slice(0, limit)
        last = rows.num_rows - 1
        return rows, (
            int(rows.column("sensor")[last].as_py()),
            int(rows.column("ts")[last].as_py()),
        )

    @staticmethod
    def _head_cut(
        snap: Snapshot, tenant: str, sensors: list[int], start: int, end: int
    ) -> int | None:
        """Where the loads in flight that write the lens's sensors begin: a load
        of other sensors (another shard's, say, stuck while it is away) cannot
        change this lens."""
        cuts = [
            s.min_ts
            for s in snap.inflight
            if any(s.touches_sensor(tenant, sensor, start, end) for sensor in sensors)
        ]
        return min(cuts) if cuts else None

    def _still_valid(
        self,
        snap: Snapshot,
        tenant: str,
        sensors: list[int],
        segments: list[Segment],
        raw_checked: bool,
        chunks: dict[int, dict[int, Chunk]],
        step: int,
        window: tuple[int, int],
    ) -> bool:
        """False if a load begun during the read wrote rows it used: rollup cells,
        cached chunks, and raw rows too when they were read without a seq filter;
        or if a delete began anywhere in the window (raw rows and the head too)."""
        newer = self.visibility.started_since(snap)
        if newer is None:
            return False
        if not newer:
            return True
        if _erasing(newer, tenant, sensors, *window):
            return False
        if any(
            span.touches_sensor(tenant, sensor, seg.lo, seg.hi)
            for span in newer
            for seg in segments
            if seg.tier is not None or raw_checked
            for sensor in sensors
        ):
            return False
        return not any(
            span.touches_sensor(tenant, sensor, *held_range((tenant, sensor, step, n, c.upto)))
            for span in newer
            for sensor, kept in chunks.items()
            for n, c in kept.items()
        )


def _erasing(spans, tenant: str, sensors: list[int], start: int, end: int) -> bool:
    """Whether a delete among ``spans`` removes rows of the lens's sensors."""
    return any(
        s.erases and any(s.touches_sensor(tenant, x, start, end) for x in sensors) for s in spans
    )


_COLUMNS = ("sensor", "b", "sum", "cnt", "min", "max")


def _columns(table: pa.Table | None, m4: bool = False) -> dict[str, np.ndarray]:
    names = _COLUMNS + (M4_FLAT if m4 else ())
    if table is None:
        return {n: np.empty(0, np.float64 if n in FLOAT_COLUMNS else np.int64) for n in names}
    cols = {n: table.column(n).to_numpy() for n in names}
    for n in names:
        if n not in FLOAT_COLUMNS and n != "sensor":
            cols[n] = cols[n].astype(np.int64, copy=False)
    return cols


def _lookup(
    get: Callable[[Key], Chunk | None],
    tenant: str,
    sensors: list[int],
    start: int,
    end: int,
    step: int,
    boundary: int,
) -> tuple[dict[int, dict[int, Chunk]], dict[int, list[tuple[int, int]]]]:
    """The chunks ``get`` has for [start, end) per sensor, and the (chunk,
    buckets) each lacks; a chunk that ``boundary`` cuts is held up to it."""
    span = chunk_span(step)
    chunks = []
    for n in range(start // span, -(-end // span)):
        upto = (boundary - n * span) // step if boundary < (n + 1) * span else CHUNK_BUCKETS
        chunks.append((n, upto))
    cached: dict[int, dict[int, Chunk]] = {}
    missing: dict[int, list[tuple[int, int]]] = {}
    for sensor in sensors:
        for n, upto in chunks:
            chunk = get((tenant, sensor, step, n, upto))
            if chunk is None:
                missing.setdefault(sensor, []).append((n, upto))
            else:
                cached.setdefault(sensor, {})[n] = chunk
    return cached, missing


def _wanted(
    sensors: list[int],
    missing: dict[int, list[tuple[int, int]]] | None,
    step: int,
    start: int,
    end: int,
) -> dict[tuple[tuple[int, int], ...], list[int]]:
    """The time ranges to read per sensor (the chunks it lacks, or with no
    cache all of [start, end)); sensors lacking the same are read together."""
    wanted: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for sensor in sensors:
        if missing is not None:
            ranges = tuple(_chunk_ranges(missing.get(sensor, []), step))
        else:
            ranges = ((start, end),) if start < end else ()
        if ranges:
            wanted.setdefault(ranges, []).append(sensor)
    return wanted


def _by_boundary(sensors: list[int], boundaries: dict[int, int]) -> dict[int, list[int]]:
    """Sensors grouped by where their head's part begins (one per shard)."""
    out: dict[int, list[int]] = {}
    for s in sensors:
        out.setdefault(boundaries[s], []).append(s)
    return out


def _bounds(wanted: dict[tuple[tuple[int, int], ...], list[int]]) -> tuple[int, int]:
    return min(r[0][0] for r in wanted), max(r[-1][1] for r in wanted)


def _clip(
    wanted: dict[tuple[tuple[int, int], ...], list[int]],
    missing: dict[int, list[tuple[int, int]]],
    lo: int,
    hi: int,
    step: int,
) -> tuple[dict[tuple[tuple[int, int], ...], list[int]], dict[int, list[tuple[int, int]]]]:
    """Ranges cut to [lo, hi), and of the missing chunks those still read whole."""
    clipped: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for ranges, ids in wanted.items():
        cut = tuple((max(a, lo), min(b, hi)) for a, b in ranges if max(a, lo) < min(b, hi))
        if cut:
            clipped.setdefault(cut, []).extend(ids)
    span = chunk_span(step)
    whole = {
        sensor: [(n, u) for n, u in chunks if lo <= n * span and n * span + u * step <= hi]
        for sensor, chunks in missing.items()
    }
    return clipped, {sensor: chunks for sensor, chunks in whole.items() if chunks}


def _chunk_ranges(chunks: list[tuple[int, int]], step: int) -> list[tuple[int, int]]:
    """Time ranges of (chunk, buckets) in ascending order, neighbours merged."""
    span = chunk_span(step)
    ranges: list[tuple[int, int]] = []
    for n, upto in chunks:
        lo, hi = n * span, n * span + upto * step
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


@dataclass
class _Read:
    """What one read of a lens got: cached chunks and the query's rows."""

    tenant: str
    step: int
    snap: Snapshot
    segments: list[Segment]
    cached: dict[int, dict[int, Chunk]]
    missing: dict[int, list[tuple[int, int]]]
    cols: dict[str, np.ndarray]
    head: dict[int, HeadPart]
    origin: int = 0
    m4: bool = False
    valid: bool = False
    # (chunk, buckets) per sensor answered by a kept first part and the head
    bridged: dict[int, tuple[int, int]] = field(default_factory=dict)

    def _rows(self, sensor: int) -> dict[str, np.ndarray]:
        m = self.cols["sensor"] == sensor
        return {k: v[m] for k, v in self.cols.items() if k != "sensor"}

    def series(self, sensors: list[int], b_lo: int, b_hi: int) -> list[Series]:
        """Each sensor's buckets in [b_lo, b_hi) from the query, the cache and the head."""
        out = []
        for sensor in sensors:
            parts = [self._rows(sensor)]
            for c in self.cached.get(sensor, {}).values():
                parts.append({"b": c.b, "sum": c.sum, "cnt": c.cnt, "min": c.min, "max": c.max})
            if sensor in self.head:
                b, sm, cnt, mn, mx = self.head[sensor].buckets(self.step, self.origin)
                part = {"b": b, "sum": sm, "cnt": cnt, "min": mn, "max": mx}
                if self.m4:
                    m = self.head[sensor].m4(self.step, self.origin)
                    part |= {flat: getattr(m, f) for flat, f in zip(M4_FLAT, M4_FIELDS)}
                parts.append(part)
            if sensor in self.head and not any(len(p["b"]) for p in parts[:-1]):
                rows = parts[-1]  # the head's alone: in order, inside the window
            else:
                rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                keep = (rows["b"] >= b_lo) & (rows["b"] < b_hi)
                order = np.argsort(rows["b"][keep], kind="stable")
                rows = {k: v[keep][order] for k, v in rows.items()}
            m = M4(*(rows[flat] for flat in M4_FLAT)) if self.m4 else None
            out.append(
                Series(
                    sensor,
                    rows["b"] * self.step + self.origin,
                    rows["sum"],
                    rows["cnt"],
                    rows["min"],
                    rows["max"],
                    m,
                )
            )
        return out

    def fills(self, sensors: list[int]) -> list[tuple[Key, Chunk]]:
        """Chunks this read computed that the cache lacks, per sensor."""
        items: list[tuple[Key, Chunk]] = []
        for sensor in sensors:
            r = self._rows(sensor)
            b = r["b"].astype(np.int64)
            for n, upto in self.missing.get(sensor, ()):
                chunk = chunk_of(b, r["sum"], r["cnt"], r["min"], r["max"], n, upto)
                items.append(((self.tenant, sensor, self.step, n, upto), chunk))
        return items


def _first_parts(
    req: LensRequest, series: list[Series], bridged: dict[int, tuple[int, int]], settled: int
) -> list[tuple[Key, Chunk]]:
    """Chunks to keep from a lens's answer (exact, as of its snapshot): each
    bridged chunk, and the first part of the chunk holding ``settled`` up to
    it, where the window holds that chunk from its start."""
    step = req.grid.step
    span = chunk_span(step)
    mark = min(req.end, settled // step * step)
    items = []
    for s in series:
        wanted = {}
        if s.sensor in bridged and bridged[s.sensor][0] * span >= req.start:
            wanted = dict([bridged[s.sensor]])  # the window holds the chunk from its start
        if mark > req.start:
            n = (mark - 1) // span
            if n * span >= req.start:
                upto = (mark - n * span) // step
                wanted[n] = max(wanted.get(n, 0), upto)
        b = s.t // step
        for n, upto in wanted.items():
            chunk = chunk_of(b, s.sum, s.count, s.min, s.max, n, upto)
            items.append(((req.tenant, s.sensor, step, n, upto), chunk))
    return items
