"""The rollup tiers: which cell widths the stores keep, and each one's source.

Each tier holds, per (tenant, sensor, cell), the states of
:mod:`lenshouse.rollup.cell`: the sum, count, min and max of the raw points in
the cell, and its M4 points (:mod:`lenshouse.rollup.m4`). These
states merge exactly: a late point simply adds
another partial row for its cell, and queries fold rows with sum/min/max, so a
tier answers exactly what raw data would, merged or not.

The loader stores the first tier's cells itself, beside the raw rows (see
:mod:`lenshouse.rollup.cells`); each coarser tier is fed by a materialized view
on the tier below it, so no view touches raw points. Both inserts carry a
deduplication token, and the views inherit it, so a retried load neither
doubles raw rows nor any tier.

Tiers were picked by cost: a 10 ms tier costs about as much disk as raw data,
100 ms about a tenth of that, 1 s and coarser almost nothing (the 10 min tier
keeps month-long lenses as fast as hour-long ones; the 10 s tier bridges 1 s
and 1 min, so that a lens at 0.8–1 of the points asked reads at most ~80k
cells a sensor, see :mod:`lenshouse.lens.steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Tier:
    name: str
    res_ms: int

    @property
    def table(self) -> str:
        return f"rollup_{self.name}"

    @property
    def partition_ms(self) -> int:
        """A day per partition keeps late data to small merges; coarse tiers use
        30 days, so that a month-long lens touches few parts. Retention drops
        whole partitions."""
        return DAY_MS if self.res_ms < 60_000 else 30 * DAY_MS


TIERS: tuple[Tier, ...] = (
    Tier("100ms", 100),
    Tier("1s", 1_000),
    Tier("10s", 10_000),
    Tier("1m", 60_000),
    Tier("10m", 600_000),
    Tier("1h", 3_600_000),
)


def tier_source(tier: Tier) -> Tier | None:
    """The tier below ``tier``, which it is computed from; None for the first
    tier, computed from raw points."""
    i = TIERS.index(tier)
    return TIERS[i - 1] if i else None
