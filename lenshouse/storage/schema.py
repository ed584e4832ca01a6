"""The ClickHouse schema: raw points, the sensor catalog, and the rollup tiers."""

from __future__ import annotations

from dataclasses import dataclass, field

from lenshouse.rollup.cell import M4, STAT_NAMES
from lenshouse.rollup.cell import M4_NAMES as M4_COLUMNS
from lenshouse.rollup.tiers import TIERS, Tier, tier_source
from lenshouse.storage.backend import Backend
from lenshouse.storage.cell_sql import (
    M4_CODEC,
    M4_IDENTITY,
    STATS_OF_NOTHING,
    m4_folds,
    m4_type,
    tier_select,
    tier_table_ddl,
    tier_view_ddl,
)

# Insert tokens are remembered for this many blocks per table: far more than
# the loads that can be in doubt after a crash.
DEDUP_WINDOW = 1000

# Merges of raw were two thirds of ingest's CPU: the default selector (base 5)
# rewrote each row ~6 times over a day. With base 30 a partition keeps a few
# dozen parts instead of a few, and 300M rows inserted at 5M/s cost 103 ns of
# merge CPU per row, against 248 (docs/performance.md). Lenses do not mind the
# parts: each part's ts range (kept for the partition key) prunes it.
RAW_MERGE_SETTINGS = "merge_selector_base = 30"
# Parts merged away are kept this long in case a power loss takes the merged
# part with the page cache (chDB keeps none; a server keeps them 480 s): the
# loader syncs the filesystem at least every 5 s (lenshouse.ingest.loader), so
# 15 s is enough. The cleanup runs every 5–15 s instead of backing off to
# 300 s, so a minute after ingest stops the data directory is the store's
# files, not twice them.
OLD_PARTS_SETTINGS = (
    "old_parts_lifetime = 15, cleanup_delay_period = 5, max_cleanup_delay_period = 15"
)


def raw_ddl(dedup_window: int = DEDUP_WINDOW, table: str = "raw") -> str:
    """The raw table; ``dedup_window=0`` keeps no insert tokens (bare inserts)."""
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    tenant LowCardinality(String),
    sensor UInt32 CODEC(Delta, ZSTD(3)),
    ts Int64 CODEC(Delta, ZSTD(3)),
    value Float64 CODEC(Delta, ZSTD(1)),
    seq UInt64 CODEC(Delta, ZSTD(3))
) ENGINE = MergeTree
PARTITION BY intDiv(ts, 86400000)
ORDER BY (tenant, sensor, ts)
SETTINGS non_replicated_deduplication_window = {dedup_window}, {RAW_MERGE_SETTINGS},
    {OLD_PARTS_SETTINGS}"""


# Delta+ZSTD on the float's bits suits ADC-quantised, slowly changing signals:
# 1.66 bytes per value on the generator's 16-bit data, against 2.4 for Gorilla.
# Delta+ZSTD(3) on sensor, ts and seq is as small as DoubleDelta (under 0.01
# byte per row each) and decodes about three times faster: a 10 s lens read
# 30% less time.
# ``seq`` is the load that brought the row: lenses read raw rows up to the last
# completed load, so they never see half of a load.

SENSORS_DDL = """
CREATE TABLE IF NOT EXISTS sensors (
    tenant LowCardinality(String),
    sensor UInt32,
    labels String,
    version Int64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, sensor)"""
# labels is a JSON object; the highest version wins (explicit PUTs use the
# time, implicit registration on first write uses 0).

# Retention (lenshouse.retention): each tenant's keep per source ("raw" or a
# tier's name; tenant "*" for every tenant; keep_ms -1 is forever), newest
# version winning; and the expiry marks: a source holds none of a tenant's
# data before ``before`` once maintenance has run. Marks only grow.
RETENTION_COLUMNS = "tenant String, source String, keep_ms Int64, version Int64"
EXPIRY_COLUMNS = "tenant String, source String, before Int64"
RETENTION_DDL = f"""
CREATE TABLE IF NOT EXISTS retention ({RETENTION_COLUMNS})
ENGINE = ReplacingMergeTree(version) ORDER BY (tenant, source)"""
EXPIRY_DDL = f"""
CREATE TABLE IF NOT EXISTS expiry ({EXPIRY_COLUMNS})
ENGINE = ReplacingMergeTree(before) ORDER BY (tenant, source)"""


# The expiry row that says a store's tiers hold M4 points for all they hold
# but what the per-tenant "m4" marks exclude (tenant "*" is no tenant's name).
M4_SOURCE = "m4"
M4_DONE = f"SELECT count() AS n FROM expiry WHERE tenant = '*' AND source = '{M4_SOURCE}'"


@dataclass
class Upgrade:
    """What opening an existing store leaves to do once the load in doubt, if
    any, is replayed (nothing loads meanwhile)."""

    tiers: list[Tier] = field(default_factory=list)  # new tiers, to fill
    raw_view: bool = False  # the first tier is still fed by a view on raw
    m4: bool = False  # the tiers' M4 points are to be filled from raw

    def finish(self, backend: Backend) -> None:
        if self.raw_view:
            # From now on the loader stores the first tier's cells itself.
            backend.execute(f"DROP VIEW IF EXISTS {TIERS[0].table}_mv")
            self.raw_view = False
        if self.m4:
            fill_m4(backend)
            self.m4 = False
        add_tiers(backend, self.tiers)
        self.tiers = []


def create_schema(backend: Backend) -> Upgrade:
    """Create what is missing; for a store that already holds data, return
    what waits for the log's replay: tiers new to it, and a first tier still
    fed by a view on raw (the loader replays a load in doubt as it was made)."""
    existing = set(
        backend.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
        .column("name")
        .to_pylist()
    )
    backend.execute(raw_ddl())
    backend.execute(SENSORS_DDL)
    backend.execute(RETENTION_DDL)
    backend.execute(EXPIRY_DDL)
    if "raw" not in existing:  # a new store: every tier, empty
        add_tiers(backend, list(TIERS), fill=False)
        backend.execute(f"INSERT INTO expiry VALUES ('*', '{M4_SOURCE}', 0)")
        return Upgrade()
    # Stores made before the merge setting get it too (a no-op otherwise).
    backend.execute(f"ALTER TABLE raw MODIFY SETTING {RAW_MERGE_SETTINGS}, {OLD_PARTS_SETTINGS}")
    for tier in TIERS:
        if tier.table in existing:
            backend.execute(f"ALTER TABLE {tier.table} MODIFY SETTING {OLD_PARTS_SETTINGS}")
    # Every store has had the first tier; a coarser one is complete once its
    # view exists.
    new = [t for t in TIERS[1:] if f"{t.table}_mv" not in existing]
    m4 = not backend.query(M4_DONE).column("n")[0].as_py()
    if m4:
        add_m4_columns(backend, [t for t in TIERS if t.table in existing and t not in new])
    return Upgrade(new, raw_view=f"{TIERS[0].table}_mv" in existing, m4=m4)


def add_m4_columns(backend: Backend, tiers: list[Tier]) -> None:
    """Give a store made before M4 existed its columns, holding no points, and
    views that carry them (nothing loads meanwhile)."""
    for tier in tiers:
        have = set(
            backend.query(
                "SELECT name FROM system.columns WHERE database = currentDatabase()"
                f" AND table = '{tier.table}'"
            )
            .column("name")
            .to_pylist()
        )
        for p in M4:
            if p.name not in have:
                backend.execute(
                    f"ALTER TABLE {tier.table} ADD COLUMN {p.name} {m4_type(p, True)}"
                    f" DEFAULT {M4_IDENTITY[p.name]}{M4_CODEC}"
                )
        if tier_source(tier) is not None:
            backend.execute(f"DROP VIEW IF EXISTS {tier.table}_mv")
            backend.execute(tier_view_ddl(tier))


def fill_m4(backend: Backend) -> None:
    """Add to the first tier, a day of raw points at a time, rows holding only
    the M4 points of the raw points (count 0: no other aggregate moves); the
    views carry them up. Redone whole after a crash: folding them twice
    changes nothing. Where a tenant's raw points have expired, the tiers below
    its raw mark lack M4: a mark says so, and M4 lenses start after it."""
    first = TIERS[0]
    days = backend.query("SELECT DISTINCT intDiv(ts, 86400000) AS d FROM raw ORDER BY d")
    r = first.res_ms
    names = ", ".join(M4_COLUMNS)
    stats = ", ".join(STAT_NAMES)
    no_stats = STATS_OF_NOTHING
    for day in days.column("d").to_pylist():
        backend.execute(
            f"INSERT INTO {first.table} (tenant, sensor, t, {stats}, {names})"
            f" SELECT tenant, sensor, intDiv(ts, {r}) * {r} AS t, {no_stats},"
            f" {m4_folds(raw=True)} FROM raw WHERE intDiv(ts, 86400000) = {int(day)}"
            " GROUP BY tenant, sensor, t"
        )
    backend.execute(
        f"INSERT INTO expiry SELECT tenant, '{M4_SOURCE}', max(before) FROM expiry"
        " WHERE source = 'raw' GROUP BY tenant"
    )
    backend.execute(f"INSERT INTO expiry VALUES ('*', '{M4_SOURCE}', 0)")


def add_tiers(backend: Backend, tiers: list[Tier], fill: bool = True) -> None:
    """Create ``tiers`` and the views that feed all but the first (the loader
    stores its cells). With ``fill``, each is first filled from its source,
    so it holds every stored point exactly once; nothing may load meanwhile.
    The view comes last, so a fill cut short is redone from scratch. (Filled
    before a replay, a tier would count the replayed load twice: once from
    the fill, once through its new view.)"""
    for tier in tiers:
        backend.execute(tier_table_ddl(tier, DEDUP_WINDOW))
        backend.execute(f"ALTER TABLE {tier.table} MODIFY SETTING {OLD_PARTS_SETTINGS}")
        if fill:
            backend.execute(f"TRUNCATE TABLE {tier.table}")
            backend.execute(f"INSERT INTO {tier.table} {tier_select(tier)}")
        if tier_source(tier) is not None:
            backend.execute(tier_view_ddl(tier))
