"""Exactly once at the point level: replays, overlaps, re-split batches and
restarts neither double a point nor lose one, in raw data or in rollups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenshouse.conftest import tier_points
from lenshouse.ingest.dedup import PAGE_MS, SeenIndex
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.retention.policy import tier_of as tier_named
from lenshouse.rollup.tiers import TIERS, Tier

T0 = 1_700_000_000_000


def batch(sensor, ts, value=None, tenant="default") -> PointBatch:
    ts = np.asarray(ts, np.int64)
    value = np.asarray(value if value is not None else ts % 1000 / 7.0, np.float64)
    return PointBatch.from_columns(tenant, np.broadcast_to(sensor, ts.shape).copy(), ts, value)


def write_all(node: Node, batches: list[PointBatch]) -> None:
    lsn = None
    for b in batches:
        lsn = node.ingestor.write_sync(b)
    assert node.ingestor.wait_visible(lsn, 30)


def stored(node: Node, tenant: str = "default") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = node.backend.query(
        f"SELECT sensor, ts, value FROM raw WHERE tenant = '{tenant}' ORDER BY sensor, ts"
    )
    return (t.column("sensor").to_numpy(), t.column("ts").to_numpy(), t.column("value").to_numpy())


def tier_count(node: Node, tier: Tier, tenant: str = "default") -> int:
    return tier_points(node.store, tier, f"tenant = '{tenant}'")


class EmptyStore:
    """Stands in for storage in unit tests of the index: holds nothing, and
    counts the reads of raw keys."""

    def __init__(self) -> None:
        self.raw_reads = 0

    def extents(self):
        import pyarrow as pa

        return pa.table({"tenant": [], "sensor": [], "lo": [], "hi": []})

    def seen_keys(self, tenant, pairs, unit_ms, below_seq):
        import pyarrow as pa

        self.raw_reads += 1
        return pa.table({"sensor": pa.array([], pa.uint32()), "ts": pa.array([], pa.int64())})


def test_index_finds_repeats_inside_and_across_batches() -> None:
    idx = SeenIndex(EmptyStore())
    idx.begin_load(0)
    b1 = batch(1, [T0 + 5, T0 + 1, T0 + 5, T0 + 9])  # unsorted, with a repeat
    assert idx.new_points(b1).tolist() == [True, True, False, True]
    b2 = batch(1, [T0 + 9, T0 + 10, T0 + PAGE_MS * 3])
    assert idx.new_points(b2).tolist() == [False, True, True]
    assert idx.new_points(batch(2, [T0 + 9])).tolist() == [True]  # other sensor
    assert idx.new_points(batch(1, [T0 + 9], tenant="other")).tolist() == [True]


def test_index_on_the_live_head_never_queries_storage() -> None:
    store = EmptyStore()
    idx = SeenIndex(store)
    for k in range(20):
        idx.begin_load(k)
        ts = T0 + k * 1000 + np.arange(1000)
        sensors = np.repeat(np.arange(50, dtype=np.uint32), 1000)
        keep = idx.new_points(PointBatch("default", sensors, np.tile(ts, 50), np.zeros(50_000)))
        assert keep.all()
    assert store.raw_reads == 0


def test_replays_in_other_shapes_store_each_point_once(node: Node) -> None:
    rng = np.random.default_rng(3)
    ts = T0 + np.arange(20_000)
    value = rng.integers(-32768, 32768, len(ts)) / 3276.8
    original = [batch(7, ts[i : i + 5000], value[i : i + 5000]) for i in range(0, 20_000, 5000)]
    write_all(node, original)
    # identical replay, an overlapping window, a shuffled re-split, then new points
    perm = rng.permutation(len(ts))
    replays = [
        original[1],
        batch(7, ts[2500:12_500], value[2500:12_500]),
        *[batch(7, ts[p], value[p]) for p in np.array_split(perm, 7)],
        batch(7, T0 + 20_000 + np.arange(100), np.ones(100)),
    ]
    write_all(node, replays)
    _s, t, v = stored(node)
    assert len(t) == 20_100 and len(np.unique(t)) == 20_100
    assert np.array_equal(v[:20_000], value)
    for tier in TIERS:
        assert tier_count(node, tier) == 20_100, tier
    stats = node.ingestor.loader.stats
    assert stats.duplicates == 5000 + 10_000 + 20_000
    assert stats.conflicts == 0


def test_first_value_wins_and_conflicts_are_counted(node: Node) -> None:
    write_all(node, [batch(1, T0 + np.arange(10), np.zeros(10))])
    write_all(node, [batch(1, T0 + np.arange(5, 15), np.ones(10))])
    _, t, v = stored(node)
    assert t.tolist() == (T0 + np.arange(15)).tolist()
    assert v.tolist() == [0.0] * 10 + [1.0] * 5
    assert node.ingestor.loader.stats.conflicts == 5
    assert node.ingestor.loader.stats.duplicates == 5


def test_duplicates_older_than_the_memory_horizon_are_found_in_storage(node: Node) -> None:
    write_all(node, [batch(1, T0 + np.arange(0, 600_000, 10))])  # 10 minutes at 100 Hz
    node.ingestor.loader.index.forget()  # as after a restart: nothing in memory
    write_all(node, [batch(1, T0 + np.arange(100_000, 110_000, 5))])
    _, t, _ = stored(node)
    assert len(t) == 60_000 + 1000  # only the odd-5 ms points were new
    assert node.ingestor.loader.index.fill_queries >= 1


def test_replay_after_restart_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    b = batch(3, T0 + np.arange(3000))
    with Node(data, flush_interval=0.02) as n:
        write_all(n, [b])
    with Node(data, flush_interval=0.02) as n:
        write_all(n, [b, batch(3, T0 + np.arange(2000, 4000))])
        _, t, _ = stored(n)
        assert len(t) == 4000
        assert tier_count(n, tier_named("1s")) == 4000


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory):
    n = Node(tmp_path_factory.mktemp("dedup") / "data", flush_interval=0.02).start()
    yield n
    n.stop()


_seq = iter(range(10**9))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), sends=st.integers(1, 6), points=st.integers(1, 30_000))
def test_random_replays_keep_lenses_exact(shared_node: Node, seed, sends, points) -> None:
    """Random distinct keys, sent in random overlapping slices several times."""
    tenant = f"replay{next(_seq)}"
    rng = np.random.default_rng(seed)
    span = int(rng.integers(points, 5 * points + 2)) * int(rng.choice([1, 10, 1000]))
    ts = np.unique(T0 + rng.integers(0, span, points))
    sensor = rng.integers(1, 4, len(ts)).astype(np.uint32)
    value = rng.normal(0, 100, len(ts))
    batches = []
    for _ in range(sends):
        perm = rng.permutation(len(ts))[: int(rng.integers(1, len(ts) + 1))]
        for part in np.array_split(perm, int(rng.integers(1, 5))):
            if len(part):
                batches.append(PointBatch.from_columns(tenant, sensor[part], ts[part], value[part]))
    # ensure every key was sent at least once
    batches.append(PointBatch.from_columns(tenant, sensor, ts, value))
    order = rng.permutation(len(batches))
    write_all(shared_node, [batches[i] for i in order])
    _s, t, _ = stored(shared_node, tenant)
    assert len(t) == len(ts)
    assert tier_count(shared_node, tier_named("1m"), tenant) == len(ts)
    start, end = int(ts.min()) - 7, int(ts.max()) + 13
    lens = shared_node.lenses.lens([1, 2, 3], start, end, points=1000, tenant=tenant)
    for series in lens.series:
        m = sensor == series.sensor
        assert (
            mismatch(series, brute_force(ts[m], value[m], lens.start, lens.end, lens.step)) is None
        )


class WideReads(EmptyStore):
    """Answers a page read with the page's stored points and, as a merged
    range read does, points of a neighbouring page that was not asked for."""

    def __init__(self, stored: dict[int, list[int]]) -> None:
        super().__init__()
        self.stored = stored  # sensor -> timestamps

    def seen_keys(self, tenant, pairs, unit_ms, below_seq):
        import pyarrow as pa

        self.raw_reads += 1
        lo = min(p for _, p in pairs) * unit_ms
        hi = (max(p for _, p in pairs) + 2) * unit_ms  # one page beyond
        s = [(k, t) for k, ts in self.stored.items() for t in ts if lo <= t < hi]
        return pa.table(
            {
                "sensor": pa.array([k for k, _ in s], pa.uint32()),
                "ts": pa.array([t for _, t in s], pa.int64()),
            }
        )

    def extents(self):
        import pyarrow as pa

        return pa.table(
            {"tenant": ["default"], "sensor": pa.array([1], pa.uint32()),
             "lo": [T0 - PAGE_MS], "hi": [T0 + 10 * PAGE_MS]}
        )  # fmt: skip


def test_a_read_bringing_pages_not_asked_for_marks_only_those_asked() -> None:
    base = T0 // PAGE_MS * PAGE_MS
    store = WideReads({1: [base + 5, base + PAGE_MS + 7]})
    idx = SeenIndex(store)
    idx.begin_load(1)
    # Only the first page is asked for; the read also returns the next page's point.
    assert idx.new_points(batch(1, [base + 5, base + 6])).tolist() == [False, True]
    # The next page, read on its own when first met, still knows its stored point.
    assert idx.new_points(batch(1, [base + PAGE_MS + 7, base + PAGE_MS + 8])).tolist() == [
        False,
        True,
    ]
