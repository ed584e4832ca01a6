"""The step ladder and the planner, proved on random windows."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from lenshouse.lens.planner import cover, plan, raw_span, usable_tiers
from lenshouse.lens.steps import LADDER_MS, bucket_count, choose_step
from lenshouse.rollup.tiers import TIERS

T0 = 1_700_000_000_000
windows = st.tuples(st.integers(T0, T0 + 40 * 86_400_000), st.integers(1, 400 * 86_400_000)).map(
    lambda a: (a[0], a[0] + a[1])
)


def test_ladder_neighbours_differ_at_most_2x_and_2x_pairs_nest() -> None:
    for a, b in itertools.pairwise(LADDER_MS):
        assert b <= 2 * a, (a, b)
        if b == 2 * a:
            assert b % a == 0


def test_every_step_is_a_multiple_of_a_tier_or_raw_and_at_most_50_cells() -> None:
    for step in LADDER_MS:
        tiers = usable_tiers(step)
        finest_needed = tiers[0].res_ms if tiers else 1
        assert step // finest_needed <= 50 or step >= 86_400_000, step


@settings(max_examples=500, deadline=None)
@given(windows, st.integers(10, 20_000))
def test_chosen_step_gives_between_half_and_all_points(window, points) -> None:
    start, end = window
    step = choose_step(start, end, points)
    n = bucket_count(start, end, step)
    assert n <= points
    if end - start >= points and step > 1:
        assert n >= points / 2, (start, end, points, step, n)


@settings(max_examples=500, deadline=None)
@given(windows, st.sampled_from(LADDER_MS), st.none() | st.integers(T0, T0 + 500 * 86_400_000))
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
