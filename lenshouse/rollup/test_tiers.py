"""A tier added to a store that already holds data (an upgrade) holds every
point exactly once: old points by the fill when the store opens, new points
through its view, even when an earlier fill was cut short."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import lenshouse.lens.planner as planner
import lenshouse.storage.schema as schema
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.rollup.tiers import TIERS

T0 = 1_700_000_000_000
HOUR = 3_600_000
TEN_MIN = next(t for t in TIERS if t.name == "10m")


def write(node: Node, ts: np.ndarray, value: np.ndarray) -> None:
    sensor = (ts % 3 + 1).astype(np.uint32)  # three sensors, interleaved
    lsn = node.ingestor.write_sync(PointBatch.from_columns("default", sensor, ts, value))
    assert node.ingestor.wait_visible(lsn, 30)


def check(node: Node, ts: np.ndarray, value: np.ndarray) -> None:
    lens = node.lenses.lens([1, 2, 3], T0 - HOUR, T0 + 5 * HOUR, step=600_000)
    assert {s.tier for s in lens.segments} == {TEN_MIN}, lens.segments
    for series in lens.series:
        m = ts % 3 + 1 == series.sensor
        expected = brute_force(ts[m], value[m], lens.start, lens.end, lens.step)
        assert mismatch(series, expected) is None


@contextmanager
def older_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A store as made before the 10 min tier existed, open while in use."""
    older = tuple(t for t in TIERS if t is not TEN_MIN)
    with monkeypatch.context() as m:
        m.setattr(schema, "TIERS", older)
        m.setattr(planner, "TIERS", older)
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
