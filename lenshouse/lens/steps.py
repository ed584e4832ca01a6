"""The step ladder: which bucket widths a lens may use.

Every step is a multiple of some rollup tier's cell, so buckets are built from
whole cells. Neighbouring steps differ by at most 2x (and exactly-2x pairs
nest), so for any requested point count P >= 10 on a window of at least P ms
the chosen step yields between P/2 and P buckets.
"""

from __future__ import annotations

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

LADDER_MS: tuple[int, ...] = (
    1, 2, 4, 5, 10, 20, 40, 50,
    100, 200, 400, 500,
    SECOND, 2 * SECOND, 4 * SECOND, 5 * SECOND, 10 * SECOND, 20 * SECOND, 30 * SECOND,
    MINUTE, 2 * MINUTE, 4 * MINUTE, 5 * MINUTE, 10 * MINUTE, 20 * MINUTE, 30 * MINUTE,
    HOUR, 2 * HOUR, 4 * HOUR, 6 * HOUR, 12 * HOUR,
    DAY, 2 * DAY, 4 * DAY, 7 * DAY, 14 * DAY, 28 * DAY,
)  # fmt: skip


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


def choose_step(start: int, end: int, points: int) -> int:
    """The finest ladder step giving at most ``points`` buckets."""
    for step in LADDER_MS:
        if bucket_count(start, end, step) <= points:
            return step
    step = LADDER_MS[-1]
    while bucket_count(start, end, step) > points:
        step *= 2
    return step
