"""Hot and cold volumes on two local directories: maintenance moves the
partitions older than ``hot`` to the cold one, lenses stay equal to the
oracle, and a reopened data directory finds its cold disk again."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.retention import maintain
from lenshouse.rollup.tiers import DAY_MS
from lenshouse.storage.tiering import Tiering

NOW = T0 = 0  # read when the module's first test starts (see _clock)


@pytest.fixture(scope="module", autouse=True)
def _clock() -> None:
    """The clock read when these tests run, not when the suite was collected."""
    global NOW, T0
    NOW = int(time.time() * 1000)
    T0 = NOW // DAY_MS * DAY_MS - 3 * DAY_MS  # three days and some up to now


def parts_by_disk(node: Node) -> dict[tuple[str, int], set[str]]:
    rows = node.backend.query(
        "SELECT table, toInt64(partition) AS p, disk_name FROM system.parts"
        " WHERE database = currentDatabase() AND active"
        " AND (table = 'raw' OR table LIKE 'rollup_%')"
    ).to_pylist()
    out: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        out.setdefault((r["table"], r["p"]), set()).add(r["disk_name"])
    return out


def check(node: Node, ts: np.ndarray, v: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    for _ in range(12):
        start = int(rng.integers(T0 - DAY_MS, NOW))
        end = start + int(rng.choice([60_000, 3_600_000, DAY_MS, 4 * DAY_MS]))
        lens = node.lenses.lens([1], start, end, points=int(rng.choice([100, 2500])))
        bad = mismatch(lens.series[0], brute_force(ts, v, lens.start, lens.end, lens.step))
        assert bad is None, (start, end, lens.step, bad)


def test_old_partitions_move_to_the_cold_volume(tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    ts = np.arange(T0, NOW, 997, dtype=np.int64)
    v = np.round(np.sin(ts / 3e6) * 100, 2)
    node = Node(tmp_path / "data", flush_interval=0.05, tiering=Tiering(cold, DAY_MS)).start()
    try:
        lsn = node.ingestor.write_sync(
            PointBatch.from_columns("default", np.ones(len(ts), np.uint32), ts, v)
        )
        assert node.ingestor.wait_visible(lsn, 60)
        assert all(d == {"default"} for d in parts_by_disk(node).values())
        report = maintain.run(node.store, NOW, settle_s=0, horizons=node.horizons)
        placed = parts_by_disk(node)
        moved = set(report.moved)
        assert ("raw", T0 // DAY_MS) in moved and ("raw", NOW // DAY_MS) not in moved
        for (table, p), disks in placed.items():
            assert disks == ({"cold"} if (table, p) in moved else {"default"}), (table, p)
        assert any(cold.rglob("*.bin")), "parts are on the cold directory"
        check(node, ts, v)
        assert maintain.run(node.store, NOW, settle_s=0).moved == [], "nothing left to move"
    finally:
        node.stop()
    # Reopened without the option: the data directory remembers its cold disk.
    node = Node(tmp_path / "data", flush_interval=0.05).start()
    try:
        assert parts_by_disk(node) == placed
        check(node, ts, v)
    finally:
        node.stop()
