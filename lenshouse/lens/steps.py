"""Bucket widths: which step a lens uses when it is asked for ``points``.

A step that a rollup tier divides is answered from whole cells. Asked for P
buckets, a lens takes the coarsest tier whose multiple gives between
``MIN_FILL``·P and P buckets (the fewest rows to read at the resolution
asked). Windows of at most ``RAW_WINDOW_MS`` take the finest step giving at
most P buckets instead, from raw points (at 1 kHz, at most 120k per sensor).
Between the two (at P = 2500, windows of 2 to ~6 minutes) the finest
tier-aligned step gives 0.5–0.8·P: a finer tier would close that gap, at
0.4–1.1 bytes a point (docs/performance.md, §4b).
"""

from __future__ import annotations

from lenshouse.rollup.tiers import TIERS

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

MIN_FILL = 0.8
RAW_WINDOW_MS = 2 * MINUTE
TIER_STEPS_MS = tuple(sorted((t.res_ms for t in TIERS), reverse=True))  # coarsest first


def bucket_count(start: int, end: int, step: int) -> int:
    """Buckets of width ``step``, aligned to the epoch, that meet [start, end)."""
    if end <= start:
        return 0
    return (end - 1) // step - start // step + 1


def whole_buckets(start: int, end: int, step: int) -> tuple[int, int]:
    """[start, end) widened to the step grid: a lens answers whole buckets, so no
    bucket at an edge holds only part of its points and rollup cells cover the
    window up to its ends."""
    return start // step * step, -(-end // step) * step


def finest_step(start: int, end: int, points: int) -> int:
    """The smallest step (whole ms) giving at most ``points`` buckets."""
    lo = max(1, -(-(end - start) // points))
    for step in range(lo, lo + 3):  # usually the first or second fits
        if bucket_count(start, end, step) <= points:
            return step
    hi = lo
    while bucket_count(start, end, hi) > points:  # doubling: bounded by log2(end)
        hi *= 2
    while lo < hi:  # hi always fits; counts seldom rise with the step, so it is about the least
        mid = (lo + hi) // 2
        if bucket_count(start, end, mid) <= points:
            hi = mid
        else:
            lo = mid + 1
    return hi


def aligned_step(start: int, end: int, points: int, res_ms: int, fine: int) -> int:
    """The smallest multiple of ``res_ms`` at or above ``fine`` giving at most
    ``points`` buckets."""
    step = -(-fine // res_ms) * res_ms
    for _ in range(4):  # alignment adds at most one bucket; a few rounds usually do
        if bucket_count(start, end, step) <= points:
            return step
        step += res_ms
    if points > 2:
        # At width/(P-2) or more, at most P buckets meet any window, aligned
        # or not: the smallest such multiple still gives close to P.
        sure = -(-(end - start) // (points - 2))
        step = max(step, -(-sure // res_ms) * res_ms)
    while bucket_count(start, end, step) > points:  # bounded by log2(end)
        step *= 2
    return step


def choose_step(
    start: int, end: int, points: int, tiers_ms: tuple[int, ...] = TIER_STEPS_MS
) -> int:
    """The step for a lens asked for ``points`` buckets (see the module)."""
    fine = finest_step(start, end, points)
    if end - start <= RAW_WINDOW_MS:
        return fine
    steps = [aligned_step(start, end, points, r, fine) for r in tiers_ms]
    for step in steps:
        if bucket_count(start, end, step) >= MIN_FILL * points:
            return step
    return min(steps) if steps else fine
