"""Step choice and the planner, proved on random windows."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from lenshouse.lens.planner import cover, plan, raw_span, usable_tiers
from lenshouse.lens.steps import (
    MIN_FILL,
    RAW_WINDOW_MS,
    aligned_step,
    bucket_count,
    choose_step,
    finest_step,
)
from lenshouse.rollup.tiers import TIERS

T0 = 1_700_000_000_000
windows = st.tuples(st.integers(T0, T0 + 40 * 86_400_000), st.integers(1, 400 * 86_400_000)).map(
    lambda a: (a[0], a[0] + a[1])
)


@settings(max_examples=1000, deadline=None)
@given(windows, st.integers(10, 20_000))
def test_chosen_step_gives_four_fifths_of_the_points_from_whole_cells(window, points) -> None:
    start, end = window
    step = choose_step(start, end, points)
    n = bucket_count(start, end, step)
    assert n <= points
    if end - start <= RAW_WINDOW_MS:
        if end - start >= 10 * points and points >= 20:  # whole-ms steps of 10 ms or more
            assert n >= MIN_FILL * points, (start, end, points, step, n)
        return
    tiers = usable_tiers(step)
    assert tiers, "beyond the raw window every bucket is made of whole cells"
    finest = TIERS[0].res_ms
    if n < MIN_FILL * points:  # only where 100 ms cells cannot be fine enough
        assert step == aligned_step(start, end, points, finest, finest_step(start, end, points))
    rows = (end - start) // tiers[0].res_ms  # cells a sensor reads, about
    assert rows <= max(40 * points, 100_000), (start, end, points, step)


def test_the_finest_step_is_the_smallest_that_fits() -> None:
    for start, end, points in ((T0 + 7, T0 + 60_000, 2500), (T0, T0 + 10, 3), (5, 15, 2)):
        step = finest_step(start, end, points)
        assert bucket_count(start, end, step) <= points
        assert step == 1 or bucket_count(start, end, step - 1) > points


def test_typical_windows_get_four_fifths_of_2500_points() -> None:
    minute, hour, day = 60_000, 3_600_000, 86_400_000
    for width in (10_000, minute, 10 * minute, hour, day, 7 * day, 30 * day):
        n = bucket_count(T0 + 123, T0 + 123 + width, choose_step(T0 + 123, T0 + 123 + width, 2500))
        assert 2000 <= n <= 2500, (width, n)


steps = st.one_of(
    st.integers(1, 5_000),
    st.sampled_from([t.res_ms for t in TIERS]).flatmap(
        lambda r: st.integers(1, 120).map(lambda k: k * r)
    ),
)


@settings(max_examples=500, deadline=None)
@given(windows, steps, st.none() | st.integers(T0, T0 + 500 * 86_400_000))
def test_plan_covers_window_exactly_with_whole_cells(window, step, cut) -> None:
    start, end = window
    segs = plan(start, end, step, cut)
    # disjoint, ordered, and covering [start, end)
    assert segs[0].lo == start and segs[-1].hi == end
    for a, b in itertools.pairwise(segs):
        assert a.hi == b.lo
    for s in segs:
        assert s.lo < s.hi
        if s.tier is not None:
            r = s.tier.res_ms
            assert s.lo % r == 0 and s.hi % r == 0, "tier segments hold whole cells"
            assert step % r == 0, "cells nest inside buckets"
            if cut is not None:
                assert s.hi <= max(cut, start)
    if cut is None or cut >= end:
        # without a load in flight, raw covers less than a finest cell at each edge
        finest = min((t.res_ms for t in usable_tiers(step)), default=None)
        if finest is not None:
            assert raw_span(segs) < 2 * finest


def test_cover_uses_coarsest_tier_for_the_middle() -> None:
    day = 86_400_000
    segs = cover(T0 + 17, T0 + day + 5, list(reversed(TIERS)))
    coarsest = max(segs, key=lambda s: s.hi - s.lo)
    assert coarsest.tier is TIERS[-1]
    assert raw_span(segs) == (100 - 17 % 100) % 100 + 5
