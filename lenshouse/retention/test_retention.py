"""Retention on both stores: expiry drops or deletes whole partitions, and
every lens stays equal to the numpy oracle over the raw points *as ingested*
(expired ones included), at the step floor the surviving tiers answer.

Two tenants share six days of data. Tenant ``a`` keeps raw points 2 days,
100 ms cells 3 and 1 s cells 4; ``b`` the defaults. The first run deletes only
``a``'s rows from partitions ``b`` still keeps; then every tenant keeps raw
points 3 days, and the next run drops the partitions both have expired."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from lenshouse.conftest import STORES, store_node
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import BadInput, PointBatch
from lenshouse.retention import maintain
from lenshouse.retention.policy import (
    DAY_MS,
    DEFAULT_POLICY,
    Policy,
    merged,
    parse_keep,
    parse_policy,
    tier_of,
)
from lenshouse.rollup.tiers import TIERS

SENSORS = (1, 2, 3)
EVERY_MS = 2_000  # a point every 2 s per sensor, six days: 777,600 points


def test_policy_rules() -> None:
    assert parse_keep("30d") == 30 * DAY_MS and parse_keep("1y") == 365 * DAY_MS
    assert parse_keep("forever") is None
    for bad in ("0d", "30", "3 parsecs", ""):
        with pytest.raises(BadInput):
            parse_keep(bad)
    with pytest.raises(BadInput, match="less than a finer source"):
        Policy({**DEFAULT_POLICY.keep, "1s": 10 * DAY_MS})  # 1 s kept less than 100 ms
    with pytest.raises(BadInput, match="at least 1d"):
        parse_policy({"raw": "12h"})
    with pytest.raises(BadInput, match="no source"):
        parse_policy({"5s": "1d"})
    now = 1_750_000_000_000
    assert DEFAULT_POLICY.cut("raw", now) == (now - 30 * DAY_MS) // DAY_MS * DAY_MS
    assert DEFAULT_POLICY.cut("1m", now) is None
    rows = {("*", "raw"): 3 * DAY_MS, ("a", "raw"): 2 * DAY_MS}
    assert merged(rows, "a").keep["raw"] == 2 * DAY_MS
    assert merged(rows, "b").keep["raw"] == 3 * DAY_MS
    assert merged(rows, "b").keep["100ms"] == 90 * DAY_MS


def _data(t0: int, rng: np.random.Generator) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for s in SENSORS:
        ts = np.arange(t0, t0 + 6 * DAY_MS, EVERY_MS, dtype=np.int64) + int(rng.integers(0, 999))
        out[s] = (ts, np.round(rng.normal(10, 3, len(ts)), 3))
    return out


@pytest.fixture(scope="module", params=STORES)
def expiring(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Node, dict, int]]:
    node = store_node(request.param, tmp_path_factory.mktemp("retention"), request,
                      flush_interval=0.05).start()  # fmt: skip
    now = int(time.time() * 1000)
    t0 = now // DAY_MS * DAY_MS - 5 * DAY_MS - DAY_MS // 2  # six days up to ~12 h ago
    rng = np.random.default_rng(7)
    data = {"a": _data(t0, rng), "b": _data(t0, rng)}
    lsn = 0
    for tenant, sensors in data.items():
        for s, (ts, v) in sensors.items():
            for i in range(0, len(ts), 50_000):  # out of order inside each batch
                j = rng.permutation(np.arange(i, min(i + 50_000, len(ts))))
                batch = PointBatch.from_columns(tenant, np.full(len(j), s), ts[j], v[j])
                lsn = node.ingestor.write_sync(batch)
    assert node.ingestor.loader.wait_loaded(lsn, 120)
    yield node, data, now
    node.stop()


def _check_lenses(node: Node, data: dict, now: int, rng: np.random.Generator, n: int) -> int:
    """Random lenses of both tenants against the oracle; how many had a floor."""
    floors = 0
    for _ in range(n):
        tenant = str(rng.choice(["a", "b"]))
        sensors = sorted(rng.choice(SENSORS, int(rng.integers(1, 4)), replace=False).tolist())
        t0 = int(data[tenant][1][0][0])
        start = int(rng.integers(t0 - DAY_MS, now))
        end = start + int(rng.choice([60_000, 3_600_000, DAY_MS, 4 * DAY_MS, 7 * DAY_MS]))
        points = int(rng.choice([10, 300, 2500, 20_000]))
        lens = node.lenses.lens(sensors, start, end, points=points, tenant=tenant)
        marks = node.horizons.marks(tenant)
        if lens.floor is not None:
            floors += 1
            assert lens.step % lens.floor.res_ms == 0, lens.floor
            assert marks["raw"] > lens.start and "expired" in lens.floor.reason
        else:
            assert marks.get("raw", lens.start) <= lens.start
        assert lens.series, "every sensor answers"
        for s in lens.series:
            ts, v = data[tenant][s.sensor]
            bad = mismatch(s, brute_force(ts, v, lens.start, lens.end, lens.step))
            assert bad is None, f"{tenant}/{s.sensor} [{start},{end}) step {lens.step}: {bad}"
    return floors


def _exported(node: Node, tenant: str, sensor: int) -> np.ndarray:
    rows, more = node.lenses.export([sensor], 0, 2**62, tenant=tenant)
    assert more is None
    return rows.column("ts").to_numpy()


def test_expiry_keeps_lenses_exact(expiring: tuple[Node, dict, int]) -> None:
    node, data, now = expiring
    store = node.store
    rng = np.random.default_rng(11)
    assert _check_lenses(node, data, now, rng, 10) == 0  # nothing expired yet: no floors

    maintain.set_policy(store, "a", {"raw": "2d", "100ms": "3d", "1s": "4d"})
    report = maintain.run(store, now_ms=now, settle_s=0, horizons=node.horizons)
    cut = (now - 2 * DAY_MS) // DAY_MS * DAY_MS
    assert ("a", "raw", cut) in report.marks
    assert {a.kind for a in report.actions} == {"delete"}, "b still keeps every partition"
    assert all(a.tenants == ("a",) for a in report.actions)
    if all(a.done for a in report.actions):  # (18.16 may finish deletes later)
        assert store.rows_in(None, "a", 0, cut) == 0
    for s in SENSORS:  # a's raw points below the mark are not answered; b's all are
        assert _exported(node, "a", s).min() >= cut
        assert len(_exported(node, "b", s)) == len(data["b"][s][0])
    floors = _check_lenses(node, data, now, rng, 40)
    assert floors >= 5, f"only {floors} of 40 lenses started below a's raw mark"

    # An explicit step the surviving tiers cannot answer is refused, naming why.
    with pytest.raises(BadInput, match="expired"):
        node.lenses.lens([1], cut - DAY_MS, cut - DAY_MS + 60_000, step=10, tenant="a")
    # A late duplicate below the mark must not count twice in the tiers.
    old_ts = data["a"][1][0][:100]
    expired_before = node.ingestor.loader.stats.expired
    lsn = node.ingestor.write_sync(
        PointBatch.from_columns("a", np.ones(100, np.uint32), old_ts, old_ts * 0.0)
    )
    assert node.ingestor.loader.wait_loaded(lsn, 60)
    assert node.ingestor.loader.stats.expired - expired_before == 100

    maintain.set_policy(store, "*", {"raw": "3d"})
    report = maintain.run(store, now_ms=now, settle_s=0, horizons=node.horizons)
    dropped = [a for a in report.actions if a.kind == "drop" and a.source == "raw"]
    cut_b = (now - 3 * DAY_MS) // DAY_MS * DAY_MS
    assert dropped and all(a.hi <= cut_b for a in dropped), report.actions
    assert all(set(a.tenants) == {"a", "b"} for a in dropped)
    assert store.rows_in(None, "b", 0, cut_b) == 0
    assert _check_lenses(node, data, now, rng, 40) >= 5
    again = maintain.run(store, now_ms=now, settle_s=0, horizons=node.horizons)
    assert not again.marks, "marks only move with time or policy"
    assert {a.kind for a in again.actions} <= {"delete"}, "nothing is left to drop"
    if all(a.done for a in report.actions):
        assert not again.actions, "and nothing to delete once deletes are done"


def test_tiers_sharing_a_table_expire_together(expiring: tuple[Node, dict, int]) -> None:
    """A cluster keeps its coarser tiers in one table: one of them expired
    alone loses its own rows (never the partition, which the others still
    need), and a partition all of them have expired goes in one drop."""
    node, data, now = expiring
    store = node.store
    maintain.set_policy(store, "*", {"100ms": "4d", "1s": "4d"})
    report = maintain.run(store, now_ms=now, settle_s=0, horizons=node.horizons)
    at = store.tier_tables
    shared = {a.source for a in report.actions if a.source != "raw"}
    shared = {s for s in shared if not at.alone(tier_of(s))}
    assert all(a.kind == "delete" for a in report.actions if a.source in shared)
    assert _check_lenses(node, data, now, np.random.default_rng(13), 40) >= 5, "10 s and up intact"
    n_1h = store.rows_in(TIERS[-1], "b", 0, 2**62)

    coarser = [t for t in TIERS if t.name not in ("100ms", "1s")]
    maintain.set_policy(store, "*", {t.name: "4d" for t in coarser})
    report = maintain.run(store, now_ms=now, settle_s=0, horizons=node.horizons)
    drops = [a for a in report.actions if a.kind == "drop" and a.source != "raw"]
    for a in drops:  # gone from every tier the dropped partition held
        tier = tier_of(a.source)
        held = [tier] if at.alone(tier) else [t for t in TIERS if not at.alone(t)]
        for t in held:
            assert store.rows_in(t, "b", a.lo, a.hi) == 0, (a, t)
    if shared:  # one drop per partition of the shared table, not one per tier
        parts = [a.partition for a in drops if not at.alone(tier_of(a.source))]
        assert parts and len(parts) == len(set(parts)), drops
        assert store.rows_in(TIERS[-1], "b", 0, 2**62) < n_1h


def test_a_slow_read_of_the_marks_never_undoes_a_newer_one() -> None:
    """Marks only grow: a background read that began before maintenance wrote
    new marks, and ends after the engine read them, must not take them back."""
    import pyarrow as pa

    from lenshouse.retention.horizons import Horizons

    class Marks:
        def __init__(self) -> None:
            self.before = 100

        def expiry_marks(self) -> pa.Table:
            return pa.table({"tenant": ["a"], "source": ["raw"], "before": [self.before]})

    store = Marks()
    h = Horizons(store, refresh_s=0)  # type: ignore[arg-type]
    assert h.raw_mark("a") == 100
    store.before = 200
    h.refresh()
    store.before = 100  # what an older read would bring back
    h.refresh()
    assert h.raw_mark("a") == 200 and h.marks("b") == {}


def test_marks_a_server_left_unread_while_idle_are_read_again_not_refused() -> None:
    """A server reads the marks when lenses ask: after a quiet spell they are
    old without any read having failed, and the next lens reads them again
    instead of being refused; a read that fails refuses it."""
    import pyarrow as pa

    from lenshouse.retention.horizons import STALE_S, Horizons
    from lenshouse.storage.errors import RetryableError

    class Marks:
        def __init__(self) -> None:
            self.reads = 0
            self.down = False

        def expiry_marks(self) -> pa.Table:
            self.reads += 1
            if self.down:
                raise RetryableError("ClickHouse is away")
            return pa.table({"tenant": ["a"], "source": ["raw"], "before": [100]})

    store, now = Marks(), [0.0]
    h = Horizons(store, refresh_s=5, clock=lambda: now[0])  # type: ignore[arg-type]
    assert h.raw_mark("a") == 100 and store.reads == 1
    now[0] = 10 * STALE_S  # nobody asked meanwhile
    assert h.raw_mark("a") == 100 and store.reads == 2
    store.down, now[0] = True, 20 * STALE_S
    with pytest.raises(RetryableError, match="could not be read"):
        h.raw_mark("a")
    reads = store.reads
    with pytest.raises(RetryableError, match="ClickHouse is away"):  # at once, not read again
        h.raw_mark("a")
    assert store.reads == reads
    store.down, now[0] = False, 20 * STALE_S + 5
    assert h.raw_mark("a") == 100
