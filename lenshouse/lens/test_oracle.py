"""Every lens path against the numpy oracle, on hypothesis-generated data:
late and out-of-order batches, sparse sensors, windows that cross tier cells,
hours and day partitions and the head's boundary, any step or point count,
buckets on the epoch's grid or off it (an origin), with or without M4 points,
asked repeatedly so that the lens cache answers too."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenshouse.conftest import STORES, store_node
from lenshouse.lens.engine import MAX_BUCKETS, MAX_RAW_WINDOW_MS
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.lens.planner import usable_tiers
from lenshouse.lens.steps import bucket_count
from lenshouse.node import Node
from lenshouse.points import BadInput, PointBatch

DAY = 86_400_000
# Two hours either side of a day boundary: windows cross partitions and 1 h cells.
T0 = 1_700_006_400_000 - 2 * 3_600_000 + 1_234
SPAN = 4 * 3_600_000
_tenants = itertools.count()


@pytest.fixture(scope="module", params=STORES)
def shared_node(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Node]:
    """The same tests on each store: chDB, and the 2 × 2 cluster."""
    data = tmp_path_factory.mktemp("oracle") / "data"
    n = store_node(request.param, data, request, flush_interval=0.02).start()
    # "Now" is the middle of the data and the head holds an hour: windows read
    # the head, the cache and ClickHouse, and cross between them.
    n.head.clock = lambda: (T0 + SPAN // 2) / 1000
    n.head.span_ms = 3_600_000
    n.head.open(None)  # nothing stored yet
    yield n
    n.stop()


@st.composite
def datasets(draw) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per sensor: distinct timestamps (dense bursts plus sparse points) and values."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = {}
    for sensor in range(1, draw(st.integers(1, 4)) + 1):
        parts = []
        for _ in range(draw(st.integers(0, 3))):  # 1 kHz bursts of up to 20 s
            a = int(rng.integers(T0, T0 + SPAN))
            parts.append(np.arange(a, min(a + int(rng.integers(1, 20_000)), T0 + SPAN)))
        parts.append(rng.integers(T0, T0 + SPAN, int(rng.integers(0, 2000))))  # sparse
        ts = np.unique(np.concatenate(parts).astype(np.int64))
        if draw(st.booleans()):  # 16-bit ADC grid or arbitrary floats
            value = rng.integers(-32768, 32768, len(ts)) * (20 / 65536)
        else:
            value = rng.normal(0, 1e3, len(ts)) * 10.0 ** rng.integers(-3, 4, len(ts))
        out[sensor] = (ts, value)
    return out


def write_shuffled(node: Node, tenant: str, data, seed: int) -> None:
    """Write all points in random order and random batch sizes (late, out of order)."""
    sensor = np.concatenate([np.full(len(ts), s, np.uint32) for s, (ts, _) in data.items()])
    ts = np.concatenate([ts for ts, _ in data.values()])
    value = np.concatenate([v for _, v in data.values()])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ts))
    cuts = np.sort(rng.integers(0, len(ts) + 1, int(rng.integers(1, 6))))
    lsn = None
    for part in np.split(perm, cuts):
        if len(part):
            lsn = node.ingestor.write_sync(
                PointBatch.from_columns(tenant, sensor[part], ts[part], value[part])
            )
    if lsn is not None:
        assert node.ingestor.wait_visible(lsn, 90)


# Tier-aligned steps and steps no tier divides (answered from raw points).
ORACLE_STEPS = (1, 2, 5, 24, 40, 100, 240, 300, 1_000, 1_500, 10_000, 35_000, 60_000, 3_600_000)
windows = st.tuples(st.integers(T0 - 60_000, T0 + SPAN), st.integers(1, SPAN + 120_000)).map(
    lambda a: (a[0], a[0] + a[1])
)
# Buckets on the epoch's grid, 1 ms past it (Prometheus' left-open windows), or anywhere.
origins = st.one_of(st.just(0), st.just(1), st.integers(0, 7_200_000))
resolution = st.one_of(
    st.tuples(st.just("points"), st.integers(1, 3000)),
    st.tuples(st.just("step"), st.sampled_from(ORACLE_STEPS)),
    st.tuples(st.just("step"), st.integers(1, 7_200_000)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=datasets(),
    seed=st.integers(0, 2**16),
    queries=st.lists(
        st.tuples(windows, resolution, st.integers(1, 4), origins, st.booleans()),
        min_size=1,
        max_size=12,
    ),
)
def test_lens_equals_brute_force(shared_node: Node, data, seed, queries) -> None:
    tenant = f"oracle{next(_tenants)}"
    write_shuffled(shared_node, tenant, data, seed)
    for (start, end), (kind, amount), nsensors, origin, m4 in queries:
        sensors = list(range(1, nsensors + 1))
        grid = {"origin": origin, "m4": m4} if kind == "step" else {"m4": m4}
        if kind == "step" and bucket_count(start - origin, end - origin, amount) > MAX_BUCKETS:
            continue  # more buckets than a lens serves (refused: test_bad_input)
        if kind == "step" and not usable_tiers(amount) and end - start > MAX_RAW_WINDOW_MS:
            with pytest.raises(BadInput, match="no rollup tier divides it"):
                shared_node.lenses.lens(sensors, start, end, tenant=tenant, step=amount, **grid)
            continue
        for _ in range(2):  # the second time, cached chunks answer too
            lens = shared_node.lenses.lens(
                sensors, start, end, tenant=tenant, **({kind: amount}), **grid
            )
            check_lens(lens, data, start, end, nsensors)
            assert all((s.m4 is not None) == m4 for s in lens.series)


def check_lens(lens, data, start: int, end: int, nsensors: int) -> None:
    assert len(lens.series) == nsensors
    # Whole buckets: the window widened to the grid, by less than a step.
    o = lens.origin
    assert 0 <= o < lens.step and (lens.start - o) % lens.step == 0
    assert (lens.end - o) % lens.step == 0
    assert start - lens.step < lens.start <= start < end <= lens.end < end + lens.step
    for series in lens.series:
        ts, value = data.get(series.sensor, (np.empty(0, np.int64), np.empty(0)))
        expected = brute_force(ts, value, lens.start, lens.end, lens.step, o)
        problem = mismatch(series, expected)
        assert problem is None, (
            f"sensor {series.sensor} window [{start},{end}) step {lens.step} origin {o}:"
            f" {problem}; plan"
            f" {[(s.tier.name if s.tier else 'raw', s.lo, s.hi, s.within) for s in lens.segments]}"
        )


# Below the head (it holds the hour before the middle of the data): steps the
# tiers divide, buckets off their grid, so every bucket is whole tier cells
# inside and raw points at both edges, read from ClickHouse.
BELOW_HEAD = T0 + SPAN // 2 - 3_600_000
off_grid = st.sampled_from((1_000, 10_000, 60_000, 600_000)).flatmap(
    lambda step: st.tuples(
        st.just(step),
        st.integers(1, step - 1).filter(lambda o: o % 100),
        st.integers(T0, BELOW_HEAD - 2 * step),
        st.integers(2 * step, 3_600_000),
    )
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), queries=st.lists(off_grid, min_size=1, max_size=6))
def test_off_grid_buckets_below_the_head(shared_node: Node, seed: int, queries) -> None:
    """Dense enough (a point every ~70 ms) that the raw edges of buckets hold
    points: a plan that drops or doubles an edge answers wrong."""
    tenant = f"offgrid{next(_tenants)}"
    rng = np.random.default_rng(seed)
    data = {}
    for sensor in (1, 2):
        ts = np.unique(rng.integers(T0, BELOW_HEAD, 50_000)).astype(np.int64)
        data[sensor] = (ts, np.round(rng.normal(0, 100, len(ts)), 2))
    write_shuffled(shared_node, tenant, data, seed)
    at_edges = 0
    for step, origin, start, length in queries:
        end = min(start + length, BELOW_HEAD)
        lens = shared_node.lenses.lens([1, 2], start, end, tenant=tenant, step=step, origin=origin)
        check_lens(lens, data, start, end, 2)
        assert lens.end <= BELOW_HEAD + step and lens.origin == origin % step
        raw = [g for g in lens.segments if g.tier is None]
        for ts, _ in data.values():
            inside = ts[(ts >= lens.start) & (ts < lens.end)]
            for g in raw:
                _, a, b = g.within or (step, 0, step)
                offset = (inside - lens.start) % step
                at_edges += int(((inside >= g.lo) & (inside < g.hi) & (offset >= a)
                                 & (offset < b)).sum())  # fmt: skip
    assert at_edges, "no lens had points in its raw edges"


def test_long_window_reads_rollups_not_raw(shared_node: Node) -> None:
    """A day-long lens reads no raw points: its whole buckets are whole tier cells."""
    tenant = "dayscan"
    ts = np.arange(T0, T0 + 2 * DAY, 100, dtype=np.int64)
    data = {1: (ts, np.sin(ts / 1e6))}
    write_shuffled(shared_node, tenant, data, 0)
    start, end = T0 + 12_345, T0 + DAY + 6_789
    lens = shared_node.lenses.lens([1], start, end, points=2500, tenant=tenant)
    raw = sum(s.hi - s.lo for s in lens.segments if s.tier is None)
    assert raw == 0, lens.segments
    expected = brute_force(ts, data[1][1], lens.start, lens.end, lens.step)
    assert mismatch(lens.series[0], expected) is None


def test_tenants_are_isolated(shared_node: Node) -> None:
    ts = np.arange(T0, T0 + 1000, dtype=np.int64)
    write_shuffled(shared_node, "iso_a", {1: (ts, np.ones(1000))}, 1)
    write_shuffled(shared_node, "iso_b", {1: (ts, np.full(1000, 2.0))}, 2)
    a = shared_node.lenses.lens([1], T0, T0 + 1000, step=1000, tenant="iso_a")
    b = shared_node.lenses.lens([1], T0, T0 + 1000, step=1000, tenant="iso_b")
    assert a.series[0].count.sum() == 1000 and b.series[0].count.sum() == 1000
    assert set(a.series[0].avg.tolist()) == {1.0} and set(b.series[0].avg.tolist()) == {2.0}
