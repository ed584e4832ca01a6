"""The rollup tiers and their DDL.

Each tier holds, per (tenant, sensor, cell), the sum, count, min and max of the
raw points in the cell, and its M4 points (:mod:`lenshouse.rollup.m4`). These
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

from lenshouse.rollup.m4 import COLUMNS as M4_COLUMNS
from lenshouse.rollup.m4 import PAIRS

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


def tier_table_ddl(tier: Tier, dedup_window: int) -> str:
    """CREATE statement for a tier's table."""
    # Plain ZSTD on the values measured both smaller and faster to read than
    # Gorilla + ZSTD. Granules of 2048 cells in 16 KiB blocks: a lens decodes
    # whole blocks, and these cut a 10-minute lens's read by a quarter for 17%
    # more tier bytes (about 0.01 byte per raw point).
    part = f"intDiv(t, {tier.partition_ms})"
    table = f"""
CREATE TABLE IF NOT EXISTS {tier.table} (
    tenant LowCardinality(String),
    sensor UInt32,
    t Int64 CODEC(Delta, ZSTD(3)),
    sum SimpleAggregateFunction(sum, Float64) CODEC(ZSTD(1)),
    cnt SimpleAggregateFunction(sum, UInt64) CODEC(T64, ZSTD(1)),
    min SimpleAggregateFunction(min, Float64) CODEC(ZSTD(1)),
    max SimpleAggregateFunction(max, Float64) CODEC(ZSTD(1)),
    {m4_columns(True)}
) ENGINE = AggregatingMergeTree
PARTITION BY {part}
ORDER BY (tenant, sensor, t)
SETTINGS non_replicated_deduplication_window = {dedup_window},
    index_granularity = 2048, min_compress_block_size = 16384"""
    return table


# Folding a column of each pair: min or max (see lenshouse.rollup.m4).
M4_FOLD = {"m4_first": "min", "m4_last": "max", "m4_low": "min", "m4_high": "max"}
# The pairs of raw points, as a raw row contributes them.
M4_OF_RAW = {
    "m4_first": "(ts, value)",
    "m4_last": "(ts, value)",
    "m4_low": "(value, ts)",
    "m4_high": "(value, -ts)",
}
# A row holding no points (what columns added to an older store start as).
M4_IDENTITY = {
    "m4_first": "(toInt64(9223372036854775807), nan)",
    "m4_last": "(toInt64(-9223372036854775808), nan)",
    "m4_low": "(inf, toInt64(0))",
    "m4_high": "(-inf, toInt64(0))",
}


def m4_type(name: str, simple: bool) -> str:
    kind = f"Tuple({', '.join(PAIRS[name])})"
    return f"SimpleAggregateFunction({M4_FOLD[name]}, {kind})" if simple else kind


# Delta applies to each element of a pair: measured 10% smaller than ZSTD alone
# on 16-bit data (the four pairs: 0.141 against 0.159 B per raw point in the
# 100 ms tier).
M4_CODEC = " CODEC(Delta, ZSTD(1))"


def m4_columns(simple: bool, codec: str = M4_CODEC) -> str:
    """The M4 pairs' column definitions (``simple``: as aggregate states)."""
    return ",\n    ".join(f"{c} {m4_type(c, simple)}{codec}" for c in M4_COLUMNS)


def m4_folds(raw: bool) -> str:
    """The pairs folded from raw rows or from tier rows, named as columns."""
    return ", ".join(f"{M4_FOLD[c]}({M4_OF_RAW[c] if raw else c}) AS {c}" for c in M4_COLUMNS)


def tier_source(tier: Tier) -> Tier | None:
    """The tier below ``tier``, which it is computed from; None for the first
    tier, computed from raw points."""
    i = TIERS.index(tier)
    return TIERS[i - 1] if i else None


def tier_select(tier: Tier) -> str:
    """The tier's cells computed from its source: raw points or the tier below."""
    r = tier.res_ms
    source = tier_source(tier)
    if source is None:
        return f"""SELECT tenant, sensor, intDiv(ts, {r}) * {r} AS t,
    sum(value) AS sum, count() AS cnt, min(value) AS min, max(value) AS max,
    {m4_folds(raw=True)}
FROM raw GROUP BY tenant, sensor, t"""
    return f"""SELECT tenant, sensor, intDiv(t, {r}) * {r} AS t,
    sum(sum) AS sum, sum(cnt) AS cnt, min(min) AS min, max(max) AS max,
    {m4_folds(raw=False)}
FROM {source.table} GROUP BY tenant, sensor, t"""


def tier_view_ddl(tier: Tier) -> str:
    """CREATE statement for the materialized view that feeds a tier from its
    source (kept for the coarser tiers; the loader stores the first tier's
    cells itself)."""
    select = tier_select(tier)
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {tier.table}_mv TO {tier.table} AS\n{select}"
