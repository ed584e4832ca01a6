"""Merges run niced; the threads that load and answer lenses do not."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.priority import BACKGROUND_NICE, BACKGROUND_THREADS

T0 = 1_700_000_000_000


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def threads_named(names: frozenset[str]) -> list[int]:
    out = []
    for entry in Path("/proc/self/task").iterdir():
        try:
            if (entry / "comm").read_text().strip() in names:
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def test_merge_threads_yield_to_lenses(tmp_path: Path) -> None:
    own = nice_of(threading.get_native_id())
    node = Node(tmp_path / "data", flush_interval=0.02).start()
    try:
        lsn = 0
        for k in range(12):  # enough parts for merges to start
            ts = np.arange(T0 + k * 10_000, T0 + (k + 1) * 10_000, dtype=np.int64)
            batch = PointBatch.from_columns("default", np.full(len(ts), 1, np.uint32), ts, ts / 7)
            lsn = node.ingestor.write_sync(batch)
            assert node.ingestor.wait_visible(lsn, 30)
        background = threads_named(BACKGROUND_THREADS)
        assert background, "ClickHouse's merge threads exist once tables do"
        assert all(nice_of(t) >= BACKGROUND_NICE for t in background)
        assert node.renicer.lowered >= len(background)
        # The caller (here: what serves lenses), the loader and ClickHouse's
        # query threads keep their priority.
        assert nice_of(threading.get_native_id()) == own
        loader = node.ingestor.loader._thread
        assert loader is not None and nice_of(loader.native_id) == own
        assert all(nice_of(t) == own for t in threads_named(frozenset({"ThreadPool"})))
        lens = node.lenses.lens([1], T0, T0 + 120_000, points=100)
        assert int(sum(s.count.sum() for s in lens.series)) == 120_000
    finally:
        node.stop()


def test_nice_zero_leaves_every_thread_alone(tmp_path: Path) -> None:
    node = Node(tmp_path / "data", flush_interval=0.02, background_nice=0).start()
    try:
        batch = PointBatch.from_columns(
            "default", np.ones(10, np.uint32), T0 + np.arange(10, dtype=np.int64), np.ones(10)
        )
        assert node.ingestor.wait_visible(node.ingestor.write_sync(batch), 30)
        assert node.renicer.lowered == 0 and node.renicer.restored == 0
    finally:
        node.stop()
