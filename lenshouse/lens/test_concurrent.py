"""Lenses stay exact while loads land: every answer read during ingest equals
the oracle over some prefix of the acknowledged batches (loads apply the log in
order), never a mix of half a load."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import PointBatch

T0 = 1_700_000_000_000
SPAN = 600_000  # ten minutes


def make_batches(rng: np.random.Generator, n: int) -> list[PointBatch]:
    """Each batch: a fresh second at the head plus late points anywhere behind it."""
    batches, used = [], set()
    for k in range(n):
        head = T0 + 300_000 + k * 1000 + np.arange(0, 1000, 2)
        late = rng.integers(T0, T0 + 300_000 + k * 1000, 300)
        ts = np.unique(np.concatenate([head, late]))
        ts = np.array([t for t in ts.tolist() if t not in used], np.int64)
        used.update(ts.tolist())
        sensor = rng.integers(1, 3, len(ts)).astype(np.uint32)
        batches.append(PointBatch("default", sensor, ts, rng.normal(0, 10, len(ts))))
    return batches


def prefix_matching(lens, batches: list[PointBatch], lo: int, hi: int) -> int | None:
    for k in range(lo, hi + 1):
        s = np.concatenate([b.sensor for b in batches[:k]] or [np.empty(0, np.uint32)])
        t = np.concatenate([b.ts for b in batches[:k]] or [np.empty(0, np.int64)])
        v = np.concatenate([b.value for b in batches[:k]] or [np.empty(0)])
        if all(
            mismatch(
                ser,
                brute_force(
                    t[s == ser.sensor], v[s == ser.sensor], lens.start, lens.end, lens.step
                ),
            )
            is None
            for ser in lens.series
        ):
            return k
    return None


def check_during_ingest(
    node: Node,
    batches: list[PointBatch],
    window: Callable[[], tuple[int, int, int]],
    until: Callable[[], bool] = lambda: True,
) -> tuple[int, int]:
    """Write ``batches`` from a thread while reading lenses over ``window()``
    ((start, end, points)); each must equal the oracle over some prefix of the
    acknowledged batches. Reading goes on as long as the writes do, then until
    ``until()`` (at most 200 more lenses, 50 ms apart, so a slow loader gets
    ~10 s; 2 minutes in all). Returns (lenses checked, of those read while racing)."""
    acked = 0
    lsns: list[int] = []
    done = threading.Event()

    def writer() -> None:
        nonlocal acked
        for b in batches:
            lsns.append(node.ingestor.write_sync(b))
            acked += 1
            done.wait(0.01)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    checked = racing = 0
    extra = 0  # reads after the last write
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            finished = done.is_set()
            if finished and checked >= 5 and until():
                break
            if finished:
                extra += 1
                if extra > 200:
                    break
            loaded_lsn = node.ingestor.loader.loaded_lsn
            lo = sum(1 for x in lsns[:acked] if x < loaded_lsn)
            a, b, points = window()
            lens = node.lenses.lens([1, 2], a, b, points=points)
            hi = acked
            k = prefix_matching(lens, batches, lo, hi)
            assert k is not None, f"lens [{a},{b}) step {lens.step} matches no prefix {lo}..{hi}"
            checked += 1
            racing += lo < hi
            if finished:
                time.sleep(0.05)  # waiting for a load: pace the remaining reads
    finally:
        done.set()
        thread.join()
    return checked, racing


def test_lenses_read_during_ingest_equal_a_prefix_of_the_log(node: Node) -> None:
    rng = np.random.default_rng(7)

    def window() -> tuple[int, int, int]:
        a = int(rng.integers(T0, T0 + SPAN))
        return a, int(rng.integers(a + 1, T0 + SPAN + 60_000)), int(rng.integers(50, 2500))

    checked, racing = check_during_ingest(node, make_batches(rng, 60), window)
    assert checked >= 5
    assert racing >= 3, "the test must read while acknowledged batches are still loading"
