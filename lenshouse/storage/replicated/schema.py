"""The cluster's schema, rendered for the server it runs on.

Every table lenshouse writes is a ``*_local`` replicated table on each shard,
read through a ``Distributed`` table of the plain name (``raw``,
``rollup_100ms``, ``sensors``), so the queries of
:mod:`lenshouse.storage.queries` run on either store. Rows are
sharded by :func:`~lenshouse.storage.replicated.sharding.shard_key` of
(tenant, sensor): one sensor's raw rows, every rollup tier of it and its
catalog entry live on one shard, and the coarser tiers' materialized view
reads the local first tier, so no view ever crosses shards.

The coarser tiers (1 s to 1 h) share one table, ``rollup_coarse``, with each
cell's resolution in a ``res`` column (see
:class:`~lenshouse.storage.queries.TierTables`): a load makes three parts per
shard (raw, the first tier, the coarser tiers) instead of seven, and every
part of a replicated table costs keeper writes on each replica, its merges
too. Its partitions are days, as the finer tiers'.

Differences by server (see :class:`~lenshouse.storage.replicated.dialect.Dialect`):

- codecs where the server has them (19.11+), none on 18.16;
- tiers as ``ReplicatedAggregatingMergeTree`` of ``SimpleAggregateFunction``
  columns (19.8+), or on 18.16 a ``ReplicatedMergeTree`` of plain columns whose
  rows merge only when read (lenses fold them with sum/min/max either way);
- ``LowCardinality(String)`` tenants where it is not experimental.

Every tier row carries the ``seq`` of the load that made it. Without insert
deduplication tokens (18.16), a replicated table drops a block whose hash it
has seen; two loads could otherwise produce equal blocks of cells (a sparse
sensor sending the same value twice in one cell, a load apart) and the second
would be dropped. With ``seq`` in every row, blocks of different loads never
hash alike, and a retried load's blocks always do.
"""

from __future__ import annotations

from lenshouse.rollup.cells import FIRST
from lenshouse.rollup.tiers import DAY_MS, TIERS, Tier
from lenshouse.storage.cell_sql import m4_columns, m4_folds, stat_columns, stat_folds
from lenshouse.storage.queries import SHARED_TABLE, TierTables, identifier
from lenshouse.storage.replicated.dialect import Dialect
from lenshouse.storage.schema import EXPIRY_COLUMNS, RETENTION_COLUMNS

# Replicated tables remember this many recent block hashes (or tokens) per
# table; ClickHouse's own default is 100 (1000 in current releases). A load
# writes one block per (shard, day partition) per table, and a retry comes
# within seconds of the first attempt, so any window of a few blocks covers
# it; a larger one only costs keeper nodes.
DEDUP_WINDOW = 1000
DEDUP_WINDOW_SECONDS = 7 * 86400

SHARDING_KEY = "bitXor(cityHash64(tenant), intHash64(sensor))"

COARSER = TIERS[1:]  # fed by one view from the first tier, into one table
TIER_TABLES = TierTables(frozenset(t.name for t in COARSER))


def _codec(d: Dialect, codec: str) -> str:
    return f" CODEC({codec})" if d.codecs else ""


def _tenant_type(d: Dialect) -> str:
    return "LowCardinality(String)" if d.low_cardinality else "String"


def _replicated(engine: str, database: str, table: str, args: str = "") -> str:
    # {shard} and {replica} come from each server's macros.
    path = f"'/clickhouse/tables/{{shard}}/{database}/{table}'"
    extra = f", {args}" if args else ""
    return f"Replicated{engine}({path}, '{{replica}}'{extra})"


def _settings(d: Dialect, extra: str = "") -> str:
    s = (
        f"SETTINGS replicated_deduplication_window = {DEDUP_WINDOW},"
        f" replicated_deduplication_window_seconds = {DEDUP_WINDOW_SECONDS}"
    )
    return s + (f", {extra}" if extra else "")


def raw_local(d: Dialect, cluster: str, database: str) -> str:
    c = _codec
    merge = ", merge_selector_base = 30" if d.modern else ""  # see storage.schema
    return f"""CREATE TABLE IF NOT EXISTS {database}.raw_local ON CLUSTER {cluster} (
    tenant {_tenant_type(d)},
    sensor UInt32{c(d, "Delta, ZSTD(3)")},
    ts Int64{c(d, "Delta, ZSTD(3)")},
    value Float64{c(d, "Delta, ZSTD(1)")},
    seq UInt64{c(d, "Delta, ZSTD(3)")}
) ENGINE = {_replicated("MergeTree", database, "raw_local")}
PARTITION BY intDiv(ts, 86400000)
ORDER BY (tenant, sensor, ts)
{_settings(d)}{merge}"""


def tier_local(d: Dialect, cluster: str, database: str, tier: Tier | None) -> str:
    """The first tier's table (``tier``), or the coarser tiers' (None)."""
    name = f"{SHARED_TABLE if tier is None else tier.table}_local"
    part = f"intDiv(t, {DAY_MS})"
    res, key = ("", "") if tier is not None else ("\n    res UInt32,", "res, ")
    c = _codec
    if d.simple_aggregates:
        engine = "AggregatingMergeTree"

        def agg(fn: str, kind: str) -> str:
            return f"SimpleAggregateFunction({fn}, {kind})"
    else:
        engine = "MergeTree"

        def agg(fn: str, kind: str) -> str:
            return kind

    return f"""CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster} (
    tenant {_tenant_type(d)},
    sensor UInt32,{res}
    t Int64{c(d, "Delta, ZSTD(3)")},
    {stat_columns(agg, lambda codec: c(d, codec))},
    {m4_columns(d.simple_aggregates, c(d, "Delta, ZSTD(1)"))},
    seq {agg("max", "UInt64")}
) ENGINE = {_replicated(engine, database, name)}
PARTITION BY {part}
ORDER BY (tenant, sensor, {key}t)
{_settings(d, "index_granularity = 2048")}"""


def coarser_view(cluster: str, database: str) -> str:
    """The view feeding every coarser tier from the first tier's local table,
    in one block (one part) per insert.

    Each coarser cell folds the first tier's cells (the loader's), not the
    tier below: 18.16 does not pass a view's output on to the views of its
    target table, and a hundredth of the raw rows is cheap to fold once per
    tier."""
    resolutions = ", ".join(f"toUInt32({t.res_ms})" for t in COARSER)
    view = f"{database}.{SHARED_TABLE}_mv"
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {view} ON CLUSTER {cluster}
TO {database}.{SHARED_TABLE}_local AS
SELECT tenant, sensor, res, intDiv(t, res) * res AS t,
    {stat_folds(raw=False)},
    {m4_folds(raw=False)}, max(seq) AS seq
FROM {database}.{FIRST.table}_local ARRAY JOIN [{resolutions}] AS res
GROUP BY tenant, sensor, res, t"""


def sensors_local(d: Dialect, cluster: str, database: str) -> str:
    # labels is a JSON object; the highest version wins (see storage.schema).
    return f"""CREATE TABLE IF NOT EXISTS {database}.sensors_local ON CLUSTER {cluster} (
    tenant {_tenant_type(d)},
    sensor UInt32,
    labels String,
    version Int64
) ENGINE = {_replicated("ReplacingMergeTree", database, "sensors_local", "version")}
ORDER BY (tenant, sensor)
{_settings(d)}"""


def retention_local(cluster: str, database: str, table: str, columns: str, version: str) -> str:
    """A small table of which every shard holds a whole copy (written to each
    shard; read from whichever answer, newest row winning)."""
    engine = _replicated("ReplacingMergeTree", database, f"{table}_local", version)
    return f"""CREATE TABLE IF NOT EXISTS {database}.{table}_local ON CLUSTER {cluster} ({columns})
ENGINE = {engine}
ORDER BY (tenant, source)"""


def copies(cluster: str, database: str, table: str) -> str:
    """The Distributed table over every shard's copy (no sharding key: never
    inserted into)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster}"
        f" AS {database}.{table}_local ENGINE = Distributed({cluster}, {database}, {table}_local)"
    )


def distributed(cluster: str, database: str, table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster}"
        f" AS {database}.{table}_local"
        f" ENGINE = Distributed({cluster}, {database}, {table}_local, {SHARDING_KEY})"
    )


def statements(d: Dialect, cluster: str, database: str) -> list[str]:
    """Every statement that creates the schema in ``database`` (which exists),
    in order; each is idempotent."""
    cluster, database = identifier(cluster), identifier(database)
    out = [raw_local(d, cluster, database)]
    out += [tier_local(d, cluster, database, t) for t in (FIRST, None)]
    out.append(sensors_local(d, cluster, database))
    shared = ("raw", "sensors", FIRST.table, SHARED_TABLE)
    out += [distributed(cluster, database, n) for n in shared]
    out.append(retention_local(cluster, database, "retention", RETENTION_COLUMNS, "version"))
    out.append(retention_local(cluster, database, "expiry", EXPIRY_COLUMNS, "before"))
    out += [copies(cluster, database, name) for name in ("retention", "expiry")]
    # The view last: the coarser tiers fill only from cells stored after it.
    out.append(coarser_view(cluster, database))
    return out


def tables() -> set[str]:
    """Every table and view ``statements`` creates."""
    out = {"raw", "sensors", FIRST.table, SHARED_TABLE, "retention", "expiry"}
    return {n for t in out for n in (t, f"{t}_local")} | {f"{SHARED_TABLE}_mv"}
