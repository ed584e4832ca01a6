"""The lens cache serves repeated windows and never a stale chunk: late points
drop exactly the chunks they land in, and a chunk a load is writing is not
stored."""

from __future__ import annotations

import numpy as np

from lenshouse.lens.cache import CHUNK_BUCKETS, Chunk, LensCache, chunk_span
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.lens.test_concurrent import SPAN, check_during_ingest, make_batches
from lenshouse.lens.test_concurrent import T0 as C0
from lenshouse.lens.visibility import LoadSpan, Visibility, footprint_keys
from lenshouse.node import Node
from lenshouse.points import PointBatch

T0 = 1_700_000_000_000


def span(seq: int, tenant: str, sensor: np.ndarray, ts: np.ndarray) -> LoadSpan:
    return LoadSpan(
        seq, frozenset([tenant]), int(ts.min()), int(ts.max()), {tenant: footprint_keys(sensor, ts)}
    )


def chunk(n: int) -> Chunk:
    b = np.arange(n * CHUNK_BUCKETS, n * CHUNK_BUCKETS + 3, dtype=np.int64)
    return Chunk(b, np.ones(3), np.ones(3, np.int64), np.ones(3), np.ones(3))


def test_footprint_is_exact_per_sensor_and_cell() -> None:
    s = span(1, "t", np.array([1, 1, 2], np.uint32), np.array([T0, T0 + 5, T0 + 60_000]))
    assert s.touches_sensor("t", 1, T0, T0 + 1)
    assert not s.touches_sensor("t", 3, T0, T0 + 1)  # another sensor
    assert not s.touches_sensor("t", 1, T0 + 30_000, T0 + 50_000)  # inside the range, no point
    assert s.touches_sensor("t", 2, T0 + 59_000, T0 + 61_000)
    assert not s.touches_sensor("u", 1, T0, T0 + 1)  # another tenant


def test_a_load_drops_the_chunks_it_writes_and_only_those() -> None:
    vis = Visibility()
    cache = LensCache(vis)
    step = 10
    snap = vis.snapshot()
    keys = [("t", 1, step, n, CHUNK_BUCKETS) for n in range(10)]
    keys.append(("t", 2, step, 0, CHUNK_BUCKETS))
    assert cache.put_many([(k, chunk(k[3])) for k in keys], snap) == len(keys)
    late = 3 * chunk_span(step) + 7  # one late point of sensor 1 in chunk 3
    vis.begin(span(1, "t", np.array([1], np.uint32), np.array([late])))
    assert cache.get(("t", 1, step, 3, CHUNK_BUCKETS)) is None
    # Cells are 4096 ms wide, so neighbours within the same cell may go too,
    # but nothing of another sensor and nothing far away.
    assert cache.get(("t", 2, step, 0, CHUNK_BUCKETS)) is not None
    assert cache.get(("t", 1, step, 9, CHUNK_BUCKETS)) is not None
    assert cache.invalidated >= 1


def test_a_chunk_a_load_is_writing_is_not_stored() -> None:
    vis = Visibility()
    cache = LensCache(vis)
    step = 10
    before = vis.snapshot()
    vis.begin(span(1, "t", np.array([1], np.uint32), np.array([5 * chunk_span(step)])))
    # Read before the load began: the load is among those started since.
    assert cache.put_many([(("t", 1, step, 5, CHUNK_BUCKETS), chunk(5))], before) == 0
    # Read while it is in flight: it is in the snapshot.
    during = vis.snapshot()
    assert cache.put_many([(("t", 1, step, 5, CHUNK_BUCKETS), chunk(5))], during) == 0
    # Chunks it does not touch are stored.
    assert cache.put_many([(("t", 1, step, 40, CHUNK_BUCKETS), chunk(40))], during) == 1
    vis.end(1)
    assert cache.put_many([(("t", 1, step, 5, CHUNK_BUCKETS), chunk(5))], vis.snapshot()) == 1
    assert cache.refused == 2


def test_the_cache_keeps_to_its_memory_bound() -> None:
    cache = LensCache(Visibility(), max_bytes=10 * chunk(0).nbytes)
    snap = cache.visibility.snapshot()
    cache.put_many([(("t", 1, 10, n, CHUNK_BUCKETS), chunk(n)) for n in range(100)], snap)
    assert len(cache) == 10 and cache.bytes <= cache.max_bytes
    assert (
        cache.get(("t", 1, 10, 99, CHUNK_BUCKETS)) is not None
        and cache.get(("t", 1, 10, 0, CHUNK_BUCKETS)) is None
    )


# -- through the engine -------------------------------------------------------------------


def write(node: Node, sensor, ts, value) -> None:
    lsn = node.ingestor.write_sync(
        PointBatch("default", np.asarray(sensor, np.uint32), np.asarray(ts), np.asarray(value))
    )
    assert node.ingestor.wait_visible(lsn, 30)


def check(node: Node, data: dict, start: int, end: int, points: int) -> None:
    lens = node.lenses.lens(sorted(data), start, end, points=points)
    for series in lens.series:
        ts, value = data[series.sensor]
        order = np.argsort(ts)
        expected = brute_force(ts[order], value[order], lens.start, lens.end, lens.step)
        assert mismatch(series, expected) is None


def test_repeated_lenses_hit_and_late_points_are_seen(node: Node) -> None:
    rng = np.random.default_rng(3)
    data = {}
    for sensor in (1, 2):
        ts = np.arange(T0, T0 + 600_000, 3, dtype=np.int64)
        data[sensor] = (ts, rng.normal(0, 1, len(ts)))
        write(node, np.full(len(ts), sensor), ts, data[sensor][1])
    cache = node.lenses.cache
    start, end = T0 + 1_234, T0 + 590_000
    check(node, data, start, end, 2500)
    assert len(cache) > 0 and cache.hits == 0
    check(node, data, start, end, 2500)
    assert cache.hits > 0
    # Late points in the middle of the window (new timestamps of sensor 2).
    late = np.arange(T0 + 300_001, T0 + 300_500, 3, dtype=np.int64)
    late_values = np.full(len(late), 1e6)
    hits, invalidated = cache.hits, cache.invalidated
    write(node, np.full(len(late), 2), late, late_values)
    data[2] = (np.concatenate([data[2][0], late]), np.concatenate([data[2][1], late_values]))
    check(node, data, start, end, 2500)
    assert cache.invalidated > invalidated  # the late points dropped their chunk
    assert cache.hits > hits  # and the rest was still served


def test_lenses_with_the_cache_read_during_ingest_equal_a_prefix(node: Node) -> None:
    """Live-view style reads (a few fixed steps, windows moving with the head)
    while batches with late points land: cached chunks and the in-memory head
    never mix states."""
    rng = np.random.default_rng(11)
    node.head.clock = lambda: (C0 + 420_000) / 1000  # the head holds the newest 200 s
    node.head.span_ms = 200_000
    node.head.open(None)  # nothing stored yet

    def window() -> tuple[int, int, int]:
        width = int(rng.choice([60_000, 300_000]))
        end = C0 + 300_000 + int(rng.integers(0, SPAN - 300_000))
        return end - width, end, 500

    cache = node.lenses.cache
    # On a busy machine loads may invalidate every chunk before it is read
    # again, and the first load may come after the last write: reads go on
    # (checked the same way) until the cache has served one and the head holds points.
    checked, _ = check_during_ingest(
        node, make_batches(rng, 60), window, until=lambda: cache.hits > 0 and node.head.points > 0
    )
    assert checked >= 5 and cache.hits > 0 and cache.invalidated > 0
    assert node.head.points > 0


def test_a_live_view_grows_its_newest_chunk_from_the_head(node: Node) -> None:
    """A view that moves with the data keeps its newest chunk's first part; the
    next view answers that chunk from the part and the head, with no query,
    and equals the raw points, late ones included."""
    rng = np.random.default_rng(5)
    now = [C0 + 200_000]
    node.head.clock = lambda: now[0] / 1000
    node.head.span_ms = 20_000
    node.head.open(None)
    store = node.lenses.store
    queries = []
    read = store.lens_rows
    store.lens_rows = lambda *a, **k: queries.append(1) or read(*a, **k)  # type: ignore[method-assign]
    data = {1: (np.empty(0, np.int64), np.empty(0)), 2: (np.empty(0, np.int64), np.empty(0))}
    cache = node.lenses.cache
    free = 0  # views answered with no query
    for second in range(60):
        for sensor in (1, 2):
            ts = np.arange(now[0] - 1_000, now[0], 10, dtype=np.int64)
            if sensor == 2 and second % 17 == 16:  # late points, 30 s back
                ts = np.concatenate([ts, ts - 30_000 + 5])
            value = rng.normal(0, 1, len(ts))
            write(node, np.full(len(ts), sensor), ts, value)
            data[sensor] = (
                np.concatenate([data[sensor][0], ts]),
                np.concatenate([data[sensor][1], value]),
            )
        now[0] += 1_000
        if second >= 5:
            before = len(queries)
            lens = node.lenses.lens([1, 2], now[0] - 100_000, now[0], step=500)
            free += len(queries) == before
            for series in lens.series:
                ts, value = data[series.sensor]
                order = np.argsort(ts, kind="stable")
                e = brute_force(ts[order], value[order], lens.start, lens.end, lens.step)
                assert mismatch(series, e) is None, (second, series.sensor)
    assert free >= 20, free  # most views: first parts and the head alone
    assert cache.invalidated > 0  # the late points dropped the parts they fell in
