"""A lens beside a load in flight: rollups up to the load's oldest point, raw
rows of completed loads after it, in one query, exactly. (A module of its own:
chDB opens one data directory per process, and the oracle module keeps one
open for all its tests.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lenshouse.lens.test_oracle import T0, check_lens, write_shuffled
from lenshouse.lens.visibility import CELL_BITS, LoadSpan
from lenshouse.node import Node


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_lens_beside_a_load_in_flight(tmp_path, cache_mb: float) -> None:
    """While a load is in flight, rollups are read up to its oldest point and raw
    rows of completed loads after it: both sources in one query, still exact.
    With the cache on, the read keeps to the window: whole chunks would put
    more than MAX_HEAD_RAW_MS of raw after the cut and send the lens to wait."""
    node = Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=cache_mb).start()
    try:
        rng = np.random.default_rng(5)
        ts = np.unique(rng.integers(T0, T0 + 600_000, 200_000)).astype(np.int64)
        data = {1: (ts, rng.normal(0, 50, len(ts))), 2: (ts[::3], rng.normal(0, 5, len(ts[::3])))}
        write_shuffled(node, "default", data, 1)
        seq = node.ingestor.loader.state.next_seq
        cut = T0 + 300_123
        start, end = T0 + 1_500, cut + 20_000  # under MAX_HEAD_RAW_MS of raw after the cut
        out: dict = {}
        reader = threading.Thread(
            target=lambda: out.update(lens=node.lenses.lens([1, 2], start, end, step=2_000))
        )
        node.ingestor.visibility.begin(LoadSpan(seq, frozenset(["default"]), cut, cut + 1_000))
        try:
            reader.start()
            reader.join(30)
        finally:
            node.ingestor.visibility.end(seq)  # frees a lens that fell back to waiting
            reader.join(30)
        lens = out["lens"]
        assert lens.retries == 0  # answered beside the load, not after it
        assert {s.tier is None for s in lens.segments} == {True, False}, lens.segments
        check_lens(lens, data, start, end, 2)
        # Asked again after the load: cached chunks (whole ones only) and the rest.
        for _ in range(2):
            check_lens(node.lenses.lens([1, 2], start, end, step=2_000), data, start, end, 2)
    finally:
        node.stop()


def _footprint(sensor: int, lo: int, hi: int) -> np.ndarray:
    cells = np.arange(lo >> CELL_BITS, ((hi - 1) >> CELL_BITS) + 1, dtype=np.uint64)
    return (np.uint64(sensor) << np.uint64(32)) | cells


def test_a_load_in_flight_cuts_only_the_lenses_of_its_sensors(tmp_path) -> None:
    """A load whose footprint holds other sensors (another shard's, stuck while
    that shard is away) leaves a lens of these sensors to its rollups; a load
    that writes one of them cuts the lens at its oldest point."""
    node = Node(tmp_path / "data", flush_interval=0.02, lens_cache_mb=0).start()
    try:
        rng = np.random.default_rng(7)
        ts = np.unique(rng.integers(T0, T0 + 600_000, 100_000)).astype(np.int64)
        data = {1: (ts, rng.normal(0, 50, len(ts))), 2: (ts[::2], rng.normal(0, 5, len(ts[::2])))}
        write_shuffled(node, "default", data, 3)
        cut = T0 + 300_123
        start, end = T0 + 1_500, cut + 20_000
        for sensor, expect_cut in ((9, False), (2, True)):
            seq = node.ingestor.loader.state.next_seq
            foot = {"default": _footprint(sensor, cut, cut + 1_000)}
            span = LoadSpan(seq, frozenset(["default"]), cut, cut + 1_000, foot)
            node.ingestor.visibility.begin(span)
            try:
                lens = node.lenses.lens([1, 2], start, end, step=2_000)
            finally:
                node.ingestor.visibility.end(seq)
            assert lens.retries == 0
            raw = [s for s in lens.segments if s.tier is None]
            assert bool(raw) == expect_cut, (sensor, lens.segments)
            if expect_cut:
                assert min(s.lo for s in raw) <= cut
            check_lens(lens, data, start, end, 2)
    finally:
        node.stop()
