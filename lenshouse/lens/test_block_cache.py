"""Lens reads through ClickHouse's uncompressed cache: a window read again
decodes no block twice, and what later loads add is still seen, because the
cache holds blocks of immutable parts, never answers. (A module of its own:
the cache size is set when chDB opens its data directory.)"""

from __future__ import annotations

import numpy as np
import pytest

from lenshouse.lens.test_oracle import T0, check_lens, write_shuffled
from lenshouse.node import Node
from lenshouse.storage.introspect import profile_events

EVENTS = ("UncompressedCacheHits", "UncompressedCacheMisses")


def cache_size(node: Node) -> int:
    t = node.backend.query(
        "SELECT value FROM system.server_settings WHERE name = 'uncompressed_cache_size'"
    )
    return int(t.column("value")[0].as_py())


@pytest.mark.parametrize("block_cache_mb", [0, 64])
def test_repeated_lens_reads_cached_blocks_and_sees_late_points(
    tmp_path, block_cache_mb: float
) -> None:
    node = Node(
        tmp_path / "data", flush_interval=0.02, lens_cache_mb=0, block_cache_mb=block_cache_mb
    ).start()
    try:
        assert cache_size(node) == block_cache_mb * 2**20
        rng = np.random.default_rng(3)
        ts = np.unique(rng.integers(T0, T0 + 1_200_000, 300_000)).astype(np.int64)
        data = {1: (ts, rng.normal(0, 50, len(ts))), 2: (ts[::2], rng.normal(0, 5, len(ts[::2])))}
        write_shuffled(node, "default", data, 1)
        # 400 ms steps: the 100 ms tier, with raw at the unaligned edges.
        start, end = T0 + 10_001, T0 + 1_000_003
        check_lens(node.lenses.lens([1, 2], start, end, step=400), data, start, end, 2)
        before = profile_events(node.backend, EVENTS)
        check_lens(node.lenses.lens([1, 2], start, end, step=400), data, start, end, 2)
        after = profile_events(node.backend, EVENTS)
        hits = after["UncompressedCacheHits"] - before["UncompressedCacheHits"]
        if block_cache_mb:
            assert hits > 0
        else:
            assert hits == 0  # off: every block is decoded again

        # Late points into the cached window land in new parts: the next read
        # sees them, from cached blocks and new ones alike.
        late = np.setdiff1d(np.arange(T0 + 20_000, T0 + 900_000, 7, dtype=np.int64), ts)
        late_values = rng.normal(100, 1, len(late))
        write_shuffled(node, "default", {1: (late, late_values)}, 2)
        merged = np.concatenate([ts, late])
        order = np.argsort(merged, kind="stable")
        data[1] = (merged[order], np.concatenate([data[1][1], late_values])[order])
        check_lens(node.lenses.lens([1, 2], start, end, step=400), data, start, end, 2)
    finally:
        node.stop()
