"""A load in doubt whose rows ClickHouse lost while keeping their insert token.

ClickHouse's non-replicated deduplication log can name a part that a killed
process never committed; a replay with the same token is then dropped. These
tests build that state for real: a load is stored, its part is removed from
disk while the store is closed (the log still names it), and the load is put
back in doubt. On restart every table must hold the load exactly once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lenshouse.ingest import loader as loader_module
from lenshouse.ingest.reconcile import tier_shortfall
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.rollup.cells import cells
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.attach import attach_rows
from lenshouse.storage.embedded import EmbeddedBackend
from lenshouse.storage.errors import RetryableError
from lenshouse.storage.store import EmbeddedStore

DAY = 86_400_000
A0 = 1_700_000_000_000 // DAY * DAY  # the first load's day
B0 = A0 + 40 * DAY  # the load put in doubt: its own partition in every table
TABLES = ["raw"] + [t.table for t in TIERS]


def batch(t0: int, sensors: int) -> PointBatch:
    """Points of sensors 1..``sensors`` over 2.5 s at 1 kHz, from ``t0`` + 50 ms."""
    ts = np.tile(t0 + 50 + np.arange(2500, dtype=np.int64), sensors)
    sensor = np.repeat(np.arange(1, sensors + 1, dtype=np.uint32), 2500)
    return PointBatch.from_columns("default", sensor, ts, np.sin(ts / 7.0) * sensor)


A, B = batch(A0, 3), batch(B0, 4)


def totals(node: Node, table: str) -> tuple[int, float, float, float]:
    """count, sum, min and max of load B's range in ``table``."""
    if table == "raw":
        sql = "SELECT count() AS n, sum(value) AS s, min(value) AS lo, max(value) AS hi FROM raw"
        where = "ts"
    else:
        sql = f"SELECT sum(cnt) AS n, sum(sum) AS s, min(min) AS lo, max(max) AS hi FROM {table}"
        where = "t"
    row = node.backend.query(f"{sql} WHERE {where} >= {B0 - DAY} AND {where} < {B0 + DAY}")
    return tuple(row.column(c)[0].as_py() for c in ("n", "s", "lo", "hi"))


def expected() -> tuple[int, float, float, float]:
    return len(B), float(B.value.sum()), float(B.value.min()), float(B.value.max())


def store_then_lose(data: Path, lose: str | None) -> None:
    """Store loads A and B, then leave B in doubt with ``lose``'s part of it
    gone from disk and its insert token still in the deduplication log."""
    with Node(data, flush_interval=0.02, lens_cache_mb=0) as node:
        for b in (A, B):
            lsn = node.ingestor.write_sync(b)
            assert node.ingestor.loader.wait_loaded(lsn, 30)
        parts = node.backend.query(
            "SELECT table, path FROM system.parts WHERE active AND database = currentDatabase()"
            f" AND partition_id IN ('{B0 // DAY}', '{B0 // (30 * DAY)}')"
        )
        paths = dict(zip(parts.column("table").to_pylist(), parts.column("path").to_pylist()))
        state = node.ingestor.loader.state
        seq, lsn = state.next_seq - 1, state.next_lsn - 1
    if lose is not None:
        shutil.rmtree(paths[lose])
    path = data / "loader.json"
    doc = json.loads(path.read_text())
    doc.update(next_lsn=lsn, next_seq=seq, pending={"seq": seq, "first_lsn": lsn, "last_lsn": lsn})
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("lose", TABLES)
def test_a_replay_adds_back_what_clickhouse_lost(tmp_path: Path, lose: str) -> None:
    store_then_lose(tmp_path / "data", lose)
    with Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=0) as node:
        stats = node.ingestor.loader.stats
        assert (stats.reconciled, stats.repaired) == (1, 1)
        for table in TABLES:
            n, s, lo, hi = totals(node, table)
            want = expected()
            assert (n, lo, hi) == (want[0], want[2], want[3]), table
            assert s == pytest.approx(want[1], rel=1e-12, abs=1e-9), table
        # Nothing else was touched: load A is still whole.
        raw_a = node.backend.query(f"SELECT count() AS n FROM raw WHERE ts < {A0 + DAY}")
        assert raw_a.column("n")[0].as_py() == len(A)
        # And a lens over B agrees with its points.
        lens = node.lenses.lens([1, 2, 3, 4], B0, B0 + 3000, step=100)
        for series in lens.series:
            mine = B.sensor == series.sensor
            want = np.bincount((B.ts[mine] - B0) // 100, minlength=30)
            assert series.count.tolist() == want[want > 0].tolist()


def test_a_replay_with_nothing_lost_adds_nothing(tmp_path: Path) -> None:
    store_then_lose(tmp_path / "data", None)
    with Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=0) as node:
        stats = node.ingestor.loader.stats
        assert (stats.reconciled, stats.repaired) == (1, 0)
        for table in TABLES:
            assert totals(node, table)[0] == len(B), table


def test_without_reconciling_the_replay_loses_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hazard itself: the replay alone is dropped as a duplicate."""
    store_then_lose(tmp_path / "data", "raw")
    monkeypatch.setattr(loader_module.Loader, "_reconcile", lambda self, *a: None)
    with Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=0) as node:
        assert totals(node, "raw")[0] == 0
        assert totals(node, TIERS[0].table)[0] == len(B)


def test_a_short_cell_gets_the_difference_and_a_surplus_is_reported(tmp_path: Path) -> None:
    """Cells shared with other loads (late points): the tier holds load 0's
    share, the source both loads'; the top-up row makes the tier fold to
    exactly the source's cells, and a cell holding more than its source is
    counted, not changed."""
    backend = EmbeddedBackend(tmp_path / "clickhouse")
    store = EmbeddedStore(backend)
    store.open()
    ts = A0 + np.arange(1000, dtype=np.int64)
    value = np.cos(ts / 3.0) * 100
    loads = [ts % 2 == k for k in (0, 1)]  # load 1 brings the odd milliseconds

    def rows(mask: np.ndarray, seq: int) -> pa.Table:
        n = int(mask.sum())
        return pa.table(
            {
                "tenant": pa.array(["default"] * n).dictionary_encode(),
                "sensor": pa.array(np.ones(n, np.uint32)),
                "ts": pa.array(ts[mask]),
                "value": pa.array(value[mask]),
                "seq": pa.array(np.full(n, seq, np.uint64)),
            }
        )

    def cells_of(mask: np.ndarray) -> pa.Table:
        n = int(mask.sum())
        return cells(
            np.zeros(n, np.int32), ["default"], np.ones(n, np.uint32), ts[mask], value[mask]
        )

    attach_rows(backend, "raw", pa.concat_tables([rows(loads[0], 0), rows(loads[1], 1)]))
    first = TIERS[0]
    attach_rows(backend, first.table, cells_of(loads[0]))  # load 1's cells were lost
    short, surplus = tier_shortfall(store, first, cells_of(loads[1]), None)
    assert (short.num_rows, surplus) == (10, 0)
    attach_rows(backend, first.table, short)
    got = backend.query(
        f"SELECT t, sum(sum) AS s, sum(cnt) AS n, min(min) AS lo, max(max) AS hi"
        f" FROM {first.table} GROUP BY t ORDER BY t"
    )
    want = cells_of(np.ones(len(ts), bool))
    for col, name in (("n", "cnt"), ("lo", "min"), ("hi", "max"), ("t", "t")):
        assert got.column(col).to_pylist() == want.column(name).to_pylist()
    np.testing.assert_allclose(got.column("s").to_numpy(), want.column("sum").to_numpy(), 1e-12)
    again, surplus = tier_shortfall(store, first, cells_of(loads[1]), None)
    assert (again.num_rows, surplus) == (0, 0)

    attach_rows(backend, first.table, cells_of(ts < A0 + 100))  # cell 0 twice over
    short, surplus = tier_shortfall(store, first, cells_of(loads[1]), None)
    assert (short.num_rows, surplus) == (0, 1)


class LandsThenFails(EmbeddedBackend):
    """The first raw insert lands, then reports an error: the loader retries."""

    failed = False

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        super().insert(table, data, token)
        if table == "raw" and not self.failed:
            self.failed = True
            raise RetryableError("connection reset after the insert")


def test_a_retried_insert_is_reconciled(tmp_path: Path) -> None:
    backend = LandsThenFails(tmp_path / "data" / "clickhouse")
    with Node(tmp_path / "data", backend=backend, flush_interval=0.02, lens_cache_mb=0) as node:
        lsn = node.ingestor.write_sync(B)
        assert node.ingestor.loader.wait_loaded(lsn, 30)
        stats = node.ingestor.loader.stats
        assert (stats.insert_errors, stats.reconciled, stats.repaired) == (1, 1, 0)
        for table in TABLES:
            assert totals(node, table)[0] == len(B), table
