"""Lenses yield to a loader catching up: when the yielding starts and stops
(hysteresis, staleness), that yielding lenses run one at a time with their
pause, that they run side by side otherwise, and that the lag a loader
announces reaches the policy."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from lenshouse.lens.catch_up import STALE_S, CatchUp
from lenshouse.stream.loaded import COLUMNS, Feed, encode
from lenshouse.stream.partitions import LogLayout


def test_a_partition_far_behind_starts_the_yielding_until_it_is_close_again() -> None:
    c = CatchUp(start_s=10, stop_s=2)
    assert not c.catching_up(now=0)
    c.note(0, 5.0, now=0)
    assert not c.catching_up(now=0), "5 s behind is within steady state"
    c.note(0, 12.0, now=1)
    c.note(1, 0.5, now=1)
    assert c.catching_up(now=1)
    c.note(0, 5.0, now=2)
    assert c.catching_up(now=2), "still behind: it lasts until under stop_s"
    c.note(0, 1.5, now=3)
    assert not c.catching_up(now=3)


def test_a_partition_not_heard_of_no_longer_counts() -> None:
    c = CatchUp()
    c.note(3, 60.0, now=100)
    assert c.catching_up(now=100 + STALE_S - 1)
    assert not c.catching_up(now=100 + STALE_S + 1)


def _lenses(c: CatchUp, n: int, seconds: float) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []

    def one() -> None:
        with c.turn():
            t0 = time.monotonic()
            time.sleep(seconds)
            spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return sorted(spans)


def test_yielding_lenses_run_one_at_a_time_each_followed_by_its_pause() -> None:
    c = CatchUp(share=0.5)
    c.note(0, 30.0)
    spans = _lenses(c, 4, 0.05)
    assert len(spans) == 4 and c.yielded == 4
    for (s0, e0), (s1, _) in itertools.pairwise(spans):
        assert s1 >= e0, "one at a time"
        assert s1 - s0 >= 0.1 - 0.005, "a lens of 50 ms at a share of 1/2: 50 ms pause"


def test_lenses_run_side_by_side_while_nothing_is_behind() -> None:
    c = CatchUp()
    c.note(0, 1.0)
    barrier = threading.Barrier(3, timeout=5)

    def one() -> None:
        with c.turn():
            barrier.wait()  # breaks (times out) if the lenses were serialized

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not barrier.broken and c.yielded == 0


def test_the_lag_a_loader_announces_reaches_the_policy() -> None:
    layout = LogLayout("LH", 2)
    c = CatchUp()
    loads: list[tuple[int, int, int, int]] = []
    feed = Feed(None, None, layout, lambda p, s, prev, rows: loads.append((p, s, prev, len(rows))),
                c.note)  # fmt: skip
    rows = pa.table({k: pa.array(v) for k, v in zip(COLUMNS, (
        ["t"] * 3, np.arange(3, dtype=np.uint32), np.arange(3, dtype=np.int64), np.ones(3)
    ), strict=True)})  # fmt: skip
    for headers, body in encode(7, 6, rows, lag_s=42.0):
        msg = SimpleNamespace(subject=layout.loaded_subject(1), headers=headers, data=body)
        asyncio.run(feed._on_message(msg))
    assert c.catching_up()
    subject, headers, body = feed._queue.get_nowait()
    feed._take(subject, headers, body)
    assert loads == [(1, 7, 6, 3)]


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError):
        CatchUp(share=share)
