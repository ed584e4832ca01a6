"""What the loader reports as loaded (``/healthz``, ``wait_loaded``) every lens
already sees: a client that waits for its write and then asks a lens gets its
points, even while the loader is still recording the load as done."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lenshouse.ingest import loader as loader_module
from lenshouse.node import Node
from lenshouse.points import PointBatch

T0 = 1_700_000_000_000


def test_a_load_reported_loaded_is_visible_to_lenses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = loader_module.LoaderState.save

    def slow_save(self, path: Path) -> None:  # a slow disk while recording completion
        save(self, path)
        if self.pending is None:
            time.sleep(0.3)

    with Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=0) as node:
        monkeypatch.setattr(loader_module.LoaderState, "save", slow_save)
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
