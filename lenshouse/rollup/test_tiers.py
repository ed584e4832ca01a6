"""Every tier holds every point exactly once across crashes and upgrades: a
tier added to a store that already holds data is filled when the store opens
(even after a fill cut short), the first tier's cells stored by the loader
survive a crash beside their insert, a store whose first tier was fed by
a view on raw moves to cells without counting a point twice, and a store made
before the tiers kept M4 points gets them from its raw points."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import lenshouse.lens.planner as planner
import lenshouse.rollup.tiers as tiers
import lenshouse.storage.cell_sql as cell_sql
import lenshouse.storage.schema as schema
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import BadInput, PointBatch
from lenshouse.rollup.cell import M4_NAMES
from lenshouse.rollup.cells import FIRST
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.cell_sql import tier_view_ddl
from lenshouse.storage.embedded import EmbeddedBackend

T0 = 1_700_000_000_000
HOUR = 3_600_000
TEN_MIN = next(t for t in TIERS if t.name == "10m")


def write(node: Node, ts: np.ndarray, value: np.ndarray) -> None:
    sensor = (ts % 3 + 1).astype(np.uint32)  # three sensors, interleaved
    lsn = node.ingestor.write_sync(PointBatch.from_columns("default", sensor, ts, value))
    assert node.ingestor.wait_visible(lsn, 30)


def check_tier(
    node: Node, ts: np.ndarray, value: np.ndarray, tier, start: int, end: int, step: int
) -> None:
    """A lens read wholly from ``tier`` equals the oracle, sensor by sensor, M4
    points included."""
    lens = node.lenses.lens([1, 2, 3], start, end, step=step, m4=True)
    assert {s.tier for s in lens.segments} == {tier}, lens.segments
    for series in lens.series:
        m = ts % 3 + 1 == series.sensor
        expected = brute_force(ts[m], value[m], lens.start, lens.end, lens.step)
        assert mismatch(series, expected) is None, tier


def check(node: Node, ts: np.ndarray, value: np.ndarray) -> None:
    check_tier(node, ts, value, TEN_MIN, T0 - HOUR, T0 + 5 * HOUR, 600_000)


@contextmanager
def older_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A store as made before the 10 min tier existed, open while in use."""
    older = tuple(t for t in TIERS if t is not TEN_MIN)
    with monkeypatch.context() as m:
        for module in (schema, planner, tiers):
            m.setattr(module, "TIERS", older)
        with Node(path, flush_interval=0.02) as node:
            yield node


def test_new_tier_is_filled_once_on_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    old_ts = np.unique(rng.integers(T0, T0 + 4 * HOUR, 200_000)).astype(np.int64)
    old_v = rng.normal(0, 100, len(old_ts))

    with older_store(tmp_path / "data", monkeypatch) as node:
        write(node, old_ts, old_v)
        # An earlier upgrade cut short: the table exists, holds a partial
        # fill, and has no view yet.
        node.backend.execute(schema.tier_table_ddl(TEN_MIN, schema.DEDUP_WINDOW))
        node.backend.execute(
            f"INSERT INTO {TEN_MIN.table} SELECT * FROM rollup_1m WHERE sensor = 1 LIMIT 5"
        )

    with Node(tmp_path / "data", flush_interval=0.02) as node:
        check(node, old_ts, old_v)
        # Late points into old cells and new points: the view feeds the tier.
        new_ts = np.setdiff1d(
            rng.integers(T0 - HOUR, T0 + 5 * HOUR, 50_000).astype(np.int64), old_ts
        )
        new_v = rng.normal(0, 100, len(new_ts))
        write(node, new_ts, new_v)
        check(node, np.concatenate([old_ts, new_ts]), np.concatenate([old_v, new_v]))

    # Opening again fills nothing twice.
    with Node(tmp_path / "data", flush_interval=0.02) as node:
        check(node, np.concatenate([old_ts, new_ts]), np.concatenate([old_v, new_v]))


def test_new_tier_counts_a_load_in_doubt_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade that opens a store with a load in doubt (stored, completion not
    recorded): the replay and the fill together count that load once."""
    rng = np.random.default_rng(8)
    ts = np.unique(rng.integers(T0, T0 + 4 * HOUR, 100_000)).astype(np.int64)
    value = rng.normal(0, 100, len(ts))
    with older_store(tmp_path / "data", monkeypatch) as node:
        write(node, ts[: len(ts) // 2], value[: len(ts) // 2])
        before = json.loads((tmp_path / "data" / "loader.json").read_text())
        write(node, ts[len(ts) // 2 :], value[len(ts) // 2 :])
        after = json.loads((tmp_path / "data" / "loader.json").read_text())
    assert after["next_seq"] == before["next_seq"] + 1
    # The second load stored everything, then "crashed" before completing.
    seq, first, last = before["next_seq"], before["next_lsn"], after["next_lsn"] - 1
    pending = {"seq": seq, "first_lsn": first, "last_lsn": last}
    (tmp_path / "data" / "loader.json").write_text(json.dumps({**before, "pending": pending}))

    with Node(tmp_path / "data", flush_interval=0.02) as node:
        assert node.ingestor.loader.state.next_seq == seq + 1
        check(node, ts, value)


# -- the first tier's cells, stored by the loader beside the raw rows ---------


class Crash(BaseException):
    """The process dying: not a storage error, so nothing retries."""


class DiesAtCells(EmbeddedBackend):
    """Dies on the first tier's insert, just before or just after it lands."""

    when: str | None = None

    def insert(self, table: str, data, token: str | None = None) -> None:
        if table == FIRST.table and self.when == "before":
            raise Crash
        super().insert(table, data, token)
        if table == FIRST.table and self.when == "after":
            raise Crash


def totals(node: Node) -> dict[str, int]:
    """Points counted by raw and by every tier."""
    out = {"raw": node.backend.query("SELECT count() AS n FROM raw").column("n")[0].as_py()}
    for tier in TIERS:
        q = f"SELECT toUInt64(sum(cnt)) AS n FROM {tier.table}"
        out[tier.table] = node.backend.query(q).column("n")[0].as_py()
    return out


# Per tier, a bucket width that it divides and the next tier does not.
STEPS = {"100ms": 500, "1s": 5_000, "10s": 30_000, "1m": 300_000, "10m": 1_800_000, "1h": HOUR}


def check_every_tier(node: Node, ts: np.ndarray, value: np.ndarray) -> None:
    assert set(totals(node).values()) == {len(ts)}, totals(node)
    for tier in TIERS:
        check_tier(node, ts, value, tier, T0, T0 + 2 * HOUR, STEPS[tier.name])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_beside_the_cells_insert_counts_every_point_once(tmp_path: Path, when: str) -> None:
    """The loader dies with raw stored and the cells not yet (or just) stored:
    the replay on restart stores each exactly once."""
    rng = np.random.default_rng(9)
    ts = np.unique(rng.integers(T0, T0 + 4 * HOUR, 90_000)).astype(np.int64)
    value = rng.integers(-(2**15), 2**15, len(ts)) / 8.0
    data = tmp_path / "data"
    backend = DiesAtCells(data / "clickhouse")
    node = Node(data, backend=backend, flush_interval=0.02).start()
    write(node, ts[:30_000], value[:30_000])
    backend.when = when
    lsn = node.ingestor.write_sync(
        PointBatch.from_columns(
            "default", (ts[30_000:] % 3 + 1).astype(np.uint32), ts[30_000:], value[30_000:]
        )
    )
    assert not node.ingestor.wait_visible(lsn, 2)  # the loader died mid-load
    assert node.ingestor.loader.state.pending is not None
    node.ingestor.loader.stop(drain=False)
    node.stop()

    with Node(data, flush_interval=0.02, lens_cache_mb=0) as node:
        check_every_tier(node, ts, value)


def test_a_store_whose_view_fed_the_first_tier_is_upgraded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made when a view on raw fed the first tier, opened with a load in
    doubt: the replay runs as that load was made (by the view), then the view
    goes and the loader stores cells; every point counts once."""
    rng = np.random.default_rng(10)
    ts = np.unique(rng.integers(T0, T0 + 4 * HOUR, 120_000)).astype(np.int64)
    value = rng.integers(-(2**15), 2**15, len(ts)) / 8.0
    data = tmp_path / "data"
    Node(data).stop()
    backend = EmbeddedBackend(data / "clickhouse")
    backend.execute(tier_view_ddl(FIRST))
    backend.close()

    with monkeypatch.context() as m:  # the older version: the view stays
        m.setattr(Node, "_finish_upgrade", lambda self: None)
        with Node(data, flush_interval=0.02) as node:
            assert not node.ingestor.loader.store_cells
            write(node, ts[:40_000], value[:40_000])
            before = json.loads((data / "loader.json").read_text())
            write(node, ts[40_000:80_000], value[40_000:80_000])
            after = json.loads((data / "loader.json").read_text())
    assert after["next_seq"] == before["next_seq"] + 1
    seq, first, last = before["next_seq"], before["next_lsn"], after["next_lsn"] - 1
    pending = {"seq": seq, "first_lsn": first, "last_lsn": last}
    (data / "loader.json").write_text(json.dumps({**before, "pending": pending}))

    with Node(data, flush_interval=0.02, lens_cache_mb=0) as node:
        names = node.backend.query("SELECT name FROM system.tables").column("name").to_pylist()
        assert f"{FIRST.table}_mv" not in names
        assert node.ingestor.loader.store_cells
        check_every_tier(node, ts[:80_000], value[:80_000])
        write(node, ts[80_000:], value[80_000:])
        check_every_tier(node, ts, value)


# -- M4 points in a store made before the tiers kept them ---------------------


def without_m4(data: Path, expire_before: int) -> None:
    """Make the store at ``data`` one of before M4: no M4 columns, views that
    fold none, no mark; and tenant "b"'s raw points before ``expire_before``
    expired (its tiers keep them)."""
    backend = EmbeddedBackend(data / "clickhouse")
    try:
        for tier in TIERS[1:]:
            backend.execute(f"DROP VIEW {tier.table}_mv")
        for tier in TIERS:
            for c in M4_NAMES:
                backend.execute(f"ALTER TABLE {tier.table} DROP COLUMN {c}")
        for tier in TIERS[1:]:
            old = tier_view_ddl(tier).replace(f",\n    {cell_sql.m4_folds(raw=False)}", "")
            assert "m4" not in old
            backend.execute(old)
        backend.execute("ALTER TABLE expiry DELETE WHERE source = 'm4' SETTINGS mutations_sync = 1")
        backend.execute(
            f"ALTER TABLE raw DELETE WHERE tenant = 'b' AND ts < {expire_before}"
            " SETTINGS mutations_sync = 1"
        )
        backend.execute(f"INSERT INTO expiry VALUES ('b', 'raw', {expire_before})")
    finally:
        backend.close()


def test_a_store_made_before_m4_gets_m4_from_its_raw_points(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    ts = np.unique(rng.integers(T0, T0 + 4 * HOUR, 60_000)).astype(np.int64)
    value = rng.integers(-(2**15), 2**15, len(ts)) / 8.0  # ties of value, as ADCs make
    data = tmp_path / "data"
    with Node(data, flush_interval=0.02) as node:
        for tenant in ("default", "b"):
            batch = PointBatch.from_columns(tenant, (ts % 3 + 1).astype(np.uint32), ts, value)
            assert node.ingestor.wait_visible(node.ingestor.write_sync(batch), 30)
    mark = T0 + 2 * HOUR
    without_m4(data, mark)

    with Node(data, flush_interval=0.02, lens_cache_mb=0) as node:
        for tier in TIERS:  # tenant "default": M4 of every point, in every tier
            check_tier(node, ts, value, tier, T0, T0 + 2 * HOUR, STEPS[tier.name])
        with pytest.raises(BadInput, match="first/last/tmin/tmax are known from"):
            node.lenses.lens([1], T0, T0 + 4 * HOUR, step=HOUR, tenant="b", m4=True)
        above = -(-mark // HOUR) * HOUR  # whole buckets from the mark on
        lens = node.lenses.lens([1, 2, 3], above, T0 + 4 * HOUR, step=HOUR, tenant="b", m4=True)
        assert {s.tier.name for s in lens.segments} == {"1h"}
        for series in lens.series:
            m = ts % 3 + 1 == series.sensor
            expected = brute_force(ts[m], value[m], lens.start, lens.end, lens.step)
            assert mismatch(series, expected) is None
        # Without M4, the expired part still answers from the tiers.
        plain = node.lenses.lens([1], T0, T0 + 4 * HOUR, step=HOUR, tenant="b")
        assert plain.series[0].count.sum() == np.count_nonzero(ts % 3 + 1 == 1)
        # Late points flow through the new views with their M4 points.
        late = np.setdiff1d(rng.integers(T0, T0 + 2 * HOUR, 5_000).astype(np.int64), ts)
        late_v = rng.normal(0, 100, len(late))
        write(node, late, late_v)
        both = np.concatenate([ts, late]), np.concatenate([value, late_v])
        for tier in TIERS:
            check_tier(node, *both, tier, T0, T0 + 2 * HOUR, STEPS[tier.name])
