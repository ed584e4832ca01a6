"""The loader's order of work: what it reports as loaded (``/healthz``,
``wait_loaded``) every lens already sees, even while it is still recording the
load as done; and a load filtered while the previous one is stored still drops
the points that one brings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lenshouse.ingest.load_state import LoaderState
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.storage.embedded import EmbeddedBackend

T0 = 1_700_000_000_000


def test_a_load_reported_loaded_is_visible_to_lenses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = LoaderState.save

    def slow_save(self, path: Path) -> None:  # a slow disk while recording completion
        save(self, path)
        if self.pending is None:
            time.sleep(0.3)

    with Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=0) as node:
        monkeypatch.setattr(LoaderState, "save", slow_save)
        for k in range(3):
            ts = T0 + k * 1000 + np.arange(500, dtype=np.int64)
            batch = PointBatch.from_columns("default", np.full(500, 1, np.uint32), ts, ts * 0.5)
            lsn = node.ingestor.write_sync(batch)
            deadline = time.monotonic() + 10
            while node.ingestor.loader.loaded_lsn <= lsn:  # what /healthz reports
                assert time.monotonic() < deadline
                time.sleep(0.001)
            lens = node.lenses.lens([1], T0, T0 + 3000, step=1000)
            assert lens.series[0].count.tolist() == [500] * (k + 1)


class SlowRawInsert(EmbeddedBackend):
    def insert(self, table: str, data, token: str | None = None) -> None:
        if table == "raw":
            time.sleep(0.3)  # the next load gets filtered meanwhile
        super().insert(table, data, token)


def test_a_load_filtered_while_the_previous_is_stored_drops_its_repeats(
    tmp_path: Path,
) -> None:
    """The next load is filtered while the previous one is being stored; with a
    dedup memory too small to keep the previous load's pages, the filter reads
    raw, and must wait for that store to see its points."""
    data = tmp_path / "data"
    backend = SlowRawInsert(data / "clickhouse")
    with Node(data, backend=backend, flush_interval=0.02, dedup_pages=4, lens_cache_mb=0) as node:
        sensor = np.repeat(np.arange(1, 21, dtype=np.uint32), 50)
        ts = T0 + np.tile(np.arange(50, dtype=np.int64) * 9000, 20)  # a page per point
        first = PointBatch.from_columns("default", sensor, ts, ts * 0.5)
        node.ingestor.write_sync(first)
        deadline = time.monotonic() + 10
        while not node.ingestor.visibility.snapshot().inflight:  # its store has begun
            assert time.monotonic() < deadline
            time.sleep(0.005)
        again = PointBatch.from_columns("default", sensor, ts, ts * 0.5)
        lsn = node.ingestor.write_sync(again)
        assert node.ingestor.wait_visible(lsn, 30)
        n = node.backend.query("SELECT count() AS n FROM raw").column("n")[0].as_py()
        assert n == len(ts)
        assert node.ingestor.loader.stats.duplicates == len(ts)
        assert node.ingestor.loader.index.fill_queries > 0
