"""The lens planner: which source answers which part of a window.

Buckets are multiples of the step; the step is a multiple of the tiers it may
use. The window [start, end) is covered by disjoint segments: the coarsest
usable tier takes the whole cells in the middle, finer tiers the partial cells
at the edges, and raw points only what is left at the very edges (less than
one 100 ms cell per side), plus the head that a load in flight is writing.
Each tier cell falls inside exactly one bucket, so summing segments per bucket
gives exactly the raw-data answer.

Buckets may also start at an ``origin`` off the tiers' grid (Prometheus'
left-open windows ``(t − range, t]`` are buckets starting 1 ms after a whole
second). Then no cell may cross a bucket's edge: each bucket is covered the
same way, whole cells inside and raw points at its two edges (less than one
finest cell each), and a segment takes only the part of every bucket between
two offsets (``within``). ClickHouse reads only the raw granules at the edges:
its key analysis knows that ``modulo`` is monotonic between two wraps.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from lenshouse.rollup.tiers import TIERS, Tier


@dataclass(frozen=True)
class Segment:
    tier: Tier | None  # None: raw points
    lo: int
    hi: int
    # (step, a, b): only the times whose offset in their bucket of ``step``
    # (``lo`` a bucket's start) is in [a, b); None: all of [lo, hi).
    within: tuple[int, int, int] | None = None


def usable_tiers(step: int, held: Collection[Tier] | None = None) -> list[Tier]:
    """Tiers whose cells nest inside buckets of ``step``, coarsest first; of
    the ``held`` ones only, when some have expired (see lenshouse.retention)."""
    return [t for t in reversed(TIERS) if step % t.res_ms == 0 and (held is None or t in held)]


def cover(lo: int, hi: int, tiers: list[Tier]) -> list[Segment]:
    """Disjoint segments covering [lo, hi): whole tier cells where possible."""
    if lo >= hi:
        return []
    for i, tier in enumerate(tiers):
        r = tier.res_ms
        a = -(-lo // r) * r
        b = hi // r * r
        if a < b:
            finer = tiers[i + 1 :]
            return [*cover(lo, a, finer), Segment(tier, a, b), *cover(b, hi, finer)]
    return [Segment(None, lo, hi)]


def plan(
    start: int,
    end: int,
    step: int,
    head_cut: int | None = None,
    held: Collection[Tier] | None = None,
    origin: int = 0,
) -> list[Segment]:
    """Segments for a lens of buckets ``origin`` + n·``step`` (``start`` and
    ``end`` on that grid); rollups are not used at or after ``head_cut``."""
    tiers = usable_tiers(step, held)
    if origin % step and any(origin % t.res_ms for t in tiers):
        return _plan_off_grid(start, end, step, head_cut, tiers)
    if head_cut is None or head_cut >= end:
        return cover(start, end, tiers)
    cut = max(start, head_cut)
    return [*cover(start, cut, tiers), *([Segment(None, cut, end)] if cut < end else [])]


def _plan_off_grid(
    start: int, end: int, step: int, head_cut: int | None, tiers: list[Tier]
) -> list[Segment]:
    """Every bucket covered alike (see the module); from the bucket that holds
    ``head_cut`` on, raw points only."""
    cut = end if head_cut is None or head_cut >= end else max(start, head_cut)
    cut = start + (cut - start) // step * step
    out = []
    if start < cut:
        for s in cover(start, start + step, tiers):
            out.append(Segment(s.tier, start, cut, (step, s.lo - start, s.hi - start)))
    if cut < end:
        out.append(Segment(None, cut, end))
    return out


def raw_span(segments: list[Segment]) -> int:
    """Milliseconds of the window read from raw points."""
    return sum(_span(s) for s in segments if s.tier is None)


def _span(s: Segment) -> int:
    if s.within is None:
        return s.hi - s.lo
    step, a, b = s.within
    return (s.hi - s.lo) // step * (b - a)
