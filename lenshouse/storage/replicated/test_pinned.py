"""Pinned lens reads (``pinned.py``) against the numpy oracle on a current
server's schema, run for real in chDB's engine (26.x): tier rows there are
folded by merges (``AggregatingMergeTree``, ``seq`` kept as the max of the
folded rows), which 18.16 never does. Loads land one after another, some
points late, merges are forced at random moments, and a read pinned to any
floor must equal the oracle over exactly the points of the loads up to it.
(On 18.16 the same reads run in ``lenshouse/roles/test_cluster_mode.py``.)"""

from __future__ import annotations

import itertools

import chdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenshouse.conftest import STORES, cluster_store
from lenshouse.lens.answer import Series
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.lens.planner import plan, usable_tiers
from lenshouse.lens.steps import whole_buckets
from lenshouse.rollup.cells import cells
from lenshouse.rollup.m4 import M4
from lenshouse.rollup.tiers import TIERS, Tier
from lenshouse.storage.queries import M4_FLAT
from lenshouse.storage.replicated import pinned, schema
from lenshouse.storage.replicated.dialect import CURRENT_LTS
from lenshouse.storage.replicated.test_modern_sql import plain

T0 = 1_700_000_000_000 - 1_800_000 + 357  # the data crosses hours and a 10 min cell
SPAN = 3_600_000
_tenants = itertools.count()


class ChdbTarget:
    """The current server's schema (plain engines) in chDB's engine."""

    def __init__(self, path) -> None:
        self.conn = chdb.connect(str(path))
        self.conn.query("CREATE DATABASE lh")
        self.conn.query("USE lh")
        for sql in schema.statements(CURRENT_LTS, "lenshouse", "lh"):
            if "ENGINE = Distributed" not in sql:
                self.conn.query(plain(sql))

    def arrow(self, sql: str) -> pa.Table:
        return pa.ipc.open_stream(self.conn.query(sql, "ArrowStream").bytes()).read_all()

    def load(self, tenant: str, seq: int, sensor, ts, value) -> None:
        """One load as the loader writes it: raw rows, then the first tier's
        cells (whose views feed every coarser tier), all with the load's seq."""
        rows = ",".join(
            f"('{tenant}', {s}, {t}, {v!r}, {seq})"
            for s, t, v in zip(sensor.tolist(), ts.tolist(), value.tolist())
        )
        self.conn.query(f"INSERT INTO raw_local VALUES {rows}")
        self.conn.query(
            "INSERT INTO rollup_100ms_local SELECT tenant, sensor, intDiv(ts, 100) * 100,"
            " sum(value), count(), min(value), max(value), min((ts, value)), max((ts, value)),"
            f" min((value, ts)), max((value, -ts)), {seq} FROM raw_local WHERE tenant ="
            f" '{tenant}' AND seq = {seq} GROUP BY tenant, sensor, intDiv(ts, 100) * 100"
        )

    def merge(self, tier: Tier) -> None:
        self.conn.query(f"OPTIMIZE TABLE {schema.TIER_TABLES.table(tier, '_local')} FINAL")

    def read(self, tenant, step, groups, floor, origin=0, m4=False, run=None) -> pa.Table:
        run = run or self.arrow
        return pinned.read(run, tenant, step, groups, floor, origin, m4, schema.TIER_TABLES)

    def close(self) -> None:
        self.conn.close()


class ClusterTarget:
    """The 2 × 2 cluster of ClickHouse 18.16, through the cluster store."""

    def __init__(self, doc: dict) -> None:
        self.store = cluster_store(doc)
        self.store.open()

    def load(self, tenant: str, seq: int, sensor, ts, value) -> None:
        order = np.lexsort((ts, sensor))
        sensor, ts, value = sensor[order].astype(np.uint32), ts[order], value[order]
        token = f"pin-{tenant}-{seq}"
        self.store.insert_raw(
            pa.table({
                "tenant": pa.array([tenant] * len(ts)), "sensor": sensor, "ts": ts,
                "value": value, "seq": pa.array(np.full(len(ts), seq, np.uint64)),
            }),
            token,
        )  # fmt: skip
        codes = np.zeros(len(ts), np.int64)
        self.store.insert_cells(cells(codes, [tenant], sensor, ts, value), seq, token + "-cells")

    def merge(self, tier: Tier) -> None:
        table = f"{self.store.conn.database}.{schema.TIER_TABLES.table(tier, '_local')}"
        for shard in self.store.conn.shards:
            for address in shard.replicas:
                self.store.conn.query_replica(address, f"OPTIMIZE TABLE {table}")

    def read(self, tenant, step, groups, floor, origin=0, m4=False) -> pa.Table:
        floors = (floor,) * len(self.store.conn.shards)
        return self.store.pinned_lens_rows(tenant, step, groups, floors, origin, m4)

    def close(self) -> None:
        self.store.close()


@pytest.fixture(scope="module", params=STORES)
def target(request, tmp_path_factory):
    # chDB runs one engine per process: open it for this module alone.
    if request.param == "chdb":
        t = ChdbTarget(tmp_path_factory.mktemp("pinned") / "ch")
    else:
        t = ClusterTarget(request.getfixturevalue("cluster"))
    yield t
    t.close()


@st.composite
def histories(draw):
    """Loads of 1-3 sensors: each mostly the next stretch of time, some of its
    points late (anywhere before), every (sensor, ts) once, as stored."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nsensors = draw(st.integers(1, 3))
    nloads = draw(st.integers(2, 7))
    edges = np.sort(rng.integers(T0, T0 + SPAN, nloads - 1))
    bounds = [T0, *edges.tolist(), T0 + SPAN]
    loads = []
    seen: set[tuple[int, int]] = set()
    for k in range(nloads):
        parts = []
        for sensor in range(1, nsensors + 1):
            n = int(rng.integers(0, 400))
            ts = rng.integers(bounds[k], bounds[k + 1] + 1, n)
            late = rng.integers(T0, bounds[k + 1] + 1, int(rng.integers(0, 40)))
            for t in np.unique(np.concatenate([ts, late])).tolist():
                if (sensor, t) not in seen:
                    seen.add((sensor, t))
                    parts.append((sensor, t))
        arr = np.array(parts, np.int64).reshape(-1, 2)
        value = np.round(rng.normal(0, 100, len(arr)))  # ties of value are common
        loads.append((arr[:, 0], arr[:, 1], value))
    return loads


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    loads=histories(),
    merges=st.lists(st.sampled_from(TIERS), max_size=4),
    lenses=st.lists(
        st.tuples(
            st.integers(-1, 7),  # the floor
            st.integers(T0 - 60_000, T0 + SPAN),
            st.integers(100, SPAN + 60_000),
            st.sampled_from((1, 7, 100, 250, 1_000, 2_000, 10_000, 30_000, 60_000, 600_000)),
            st.one_of(st.just(0), st.integers(0, 600_000)),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_a_pinned_read_equals_the_oracle_over_its_loads(target, loads, merges, lenses) -> None:
    tenant = f"pin{next(_tenants)}"
    merge_after = {int(i) % len(loads): tier for i, tier in enumerate(merges)}
    for seq, (sensor, ts, value) in enumerate(loads):
        if len(ts):
            target.load(tenant, seq, sensor, ts, value)
        if seq in merge_after:  # fold rows of earlier and later loads together
            target.merge(merge_after[seq])
    sensors = sorted({int(s) for sensor, _, _ in loads for s in sensor.tolist()}) or [1]
    if isinstance(target, ClusterTarget):  # the edge-scan guard reads where lenses read
        every = sum(len(ts) for _, ts, _ in loads)
        assert target.store.points_about(tenant, sensors, T0, T0 + SPAN + 1) == every
    for floor, start, width, step, origin, m4 in lenses:
        floor = min(floor, len(loads) - 1)
        if not usable_tiers(step) and width > 600_000:
            width = 600_000  # an untiered step reads raw points: keep it short
        origin %= step
        lo, hi = (x + origin for x in whole_buckets(start - origin, start + width - origin, step))
        groups = [(sensors, plan(lo, hi, step, None, None, origin))]
        rows = target.read(tenant, step, groups, floor, origin, m4)
        for s in sensors:
            got = _series(rows, s, step, origin, m4)
            done = loads[: floor + 1]
            ts = np.concatenate([t[sn == s] for sn, t, _ in done] or [np.empty(0)])
            vs = np.concatenate([v[sn == s] for sn, _, v in done] or [np.empty(0)])
            expected = brute_force(ts.astype(np.int64), vs.astype(float), lo, hi, step, origin)
            problem = mismatch(got, expected)
            assert problem is None, f"sensor {s} [{lo},{hi}) step {step} floor {floor}: {problem}"


def _series(rows: pa.Table, sensor: int, step: int, origin: int, m4: bool) -> Series:
    mine = rows.filter(pc.equal(rows.column("sensor"), sensor))
    col = {n: mine.column(n).to_numpy() for n in mine.column_names}
    m = M4(*(col[f] for f in M4_FLAT)) if m4 else None
    return Series(
        sensor, col["b"] * step + origin, col["sum"], col["cnt"], col["min"], col["max"], m
    )


def test_a_dirty_cell_is_read_again_from_finer_data(tmp_path) -> None:
    """A merge folds a load past the floor into a cell with completed loads:
    the cell is read from the first tier and raw rows, not dropped or taken whole."""
    engine = ChdbTarget(tmp_path / "ch")
    tenant = "dirty"
    ts = np.arange(T0, T0 + 120_000, 10, dtype=np.int64)
    sensor = np.ones(len(ts), np.int64)
    first, second = ts < T0 + 60_000, ts >= T0 + 60_000
    engine.load(tenant, 1, sensor[first], ts[first], np.ones(first.sum()))
    engine.load(tenant, 2, sensor[second], ts[second], np.full(second.sum(), 3.0))
    engine.merge(TIERS[-1])
    engine.merge(TIERS[-2])
    step = 3_600_000
    lo, hi = whole_buckets(T0, T0 + 120_000, step)
    queries: list[str] = []

    def run(sql: str) -> pa.Table:
        queries.append(sql)
        return engine.arrow(sql)

    try:
        rows = engine.read(tenant, step, [([1], plan(lo, hi, step))], 1, run=run)
    finally:
        engine.close()
    assert rows.column("cnt").to_pylist() == [int(first.sum())]
    assert rows.column("sum").to_pylist() == [float(first.sum())]
    assert len(queries) == 3, "the hour cell, its 100 ms cells, the dirty ones from raw"
