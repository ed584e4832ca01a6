"""Every query lenshouse reads ClickHouse with, built in one place.

Both stores read the same tables by the same names: the embedded store's own
MergeTree tables, or a cluster's ``Distributed`` tables over its shards. The
tenant is checked against the tenant grammar and quoted as a literal (old
servers have no query parameters); sensor ids, times and sequence numbers are
integers, formatted as such.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lenshouse.rollup.cell import M4_NAMES as M4_COLUMNS
from lenshouse.rollup.m4 import PAIRS
from lenshouse.rollup.tiers import Tier
from lenshouse.storage.cell_sql import (
    M4_FOLD,
    M4_OF_RAW,
    STAT_NO_ROWS,
    STAT_ROW_FOLDS,
    stat_folds,
    stat_rows,
)

_TENANT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_CONDITIONS = 2000


def tenant_literal(tenant: str) -> str:
    """``tenant`` as a SQL string literal; anything outside the grammar is refused."""
    if not _TENANT.match(tenant):
        raise ValueError(f"not a tenant name: {tenant!r}")
    return f"'{tenant}'"


def identifier(name: str) -> str:
    """A table or cluster name, checked (identifiers cannot be parameters)."""
    if not _IDENT.match(name):
        raise ValueError(f"not an identifier: {name!r}")
    return name


def string_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ints(values: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in values)


@dataclass(frozen=True)
class TierTables:
    """Where a store keeps each tier's cells: each in a table of its own
    (``rollup_100ms``, ``rollup_1s``, …), except the tiers named in ``shared``,
    kept together in ``SHARED_TABLE`` with their resolution in a ``res``
    column. A cluster keeps its coarser tiers so: an insert makes one part per
    partition of a table, and each replicated part costs keeper work, so one
    table instead of five makes the tiers' cost per load a fifth."""

    shared: frozenset[str] = frozenset()

    def table(self, tier: Tier, suffix: str = "") -> str:
        name = SHARED_TABLE if tier.name in self.shared else tier.table
        return identifier(name + suffix)

    def where(self, tier: Tier, cond: str) -> str:
        """``cond`` on the tier's rows of its table."""
        return f"res = {int(tier.res_ms)} AND ({cond})" if tier.name in self.shared else cond

    def alone(self, tier: Tier) -> bool:
        """Whether the tier's table holds that tier only (its partitions can go alone)."""
        return tier.name not in self.shared


SHARED_TABLE = "rollup_coarse"
OWN_TABLES = TierTables()


def cell_conditions(
    pairs: Iterable[tuple[int, int]], unit_ms: int, column: str, limit: int = MAX_CONDITIONS
) -> str:
    """A WHERE clause reading the (sensor, cell) pairs, cells being
    ``unit_ms`` wide on ``column``: sensors that share a run of cells share one
    range; when runs are many, nearby runs merge (reading a little more) so
    that the query stays small (at most ``limit`` ranges: an old server's
    index analysis slows down badly on thousands of them)."""
    runs: dict[tuple[int, int], set[int]] = {}
    by_sensor: dict[int, list[int]] = {}
    for s, p in pairs:
        by_sensor.setdefault(int(s), []).append(int(p))
    gap = 1
    while True:
        runs.clear()
        for s, cells in by_sensor.items():
            cells.sort()
            lo = hi = cells[0]
            for p in cells[1:]:
                if p - hi > gap:
                    runs.setdefault((lo, hi), set()).add(s)
                    lo = p
                hi = p
            runs.setdefault((lo, hi), set()).add(s)
        if len(runs) <= limit:
            break
        gap *= 4
    return " OR ".join(
        f"({column} >= {lo * unit_ms} AND {column} < {(hi + 1) * unit_ms}"
        f" AND sensor IN ({_ints(sorted(ss))}))"
        for (lo, hi), ss in runs.items()
    )


# -- ingest: deduplication and reconciling -------------------------------------
def seen_keys(tenant: str, pairs, unit_ms: int, below_seq: int, limit: int = MAX_CONDITIONS) -> str:
    """Keys of raw rows of earlier loads in the (sensor, cell) pairs."""
    return (
        f"SELECT sensor, ts FROM raw WHERE tenant = {tenant_literal(tenant)}"
        f" AND seq < {int(below_seq)} AND ({cell_conditions(pairs, unit_ms, 'ts', limit)})"
    )


def stored_values(
    tenant: str, pairs, unit_ms: int, max_seq: int, limit: int = MAX_CONDITIONS
) -> str:
    return (
        f"SELECT sensor, ts, value FROM raw WHERE tenant = {tenant_literal(tenant)}"
        f" AND seq <= {int(max_seq)} AND ({cell_conditions(pairs, unit_ms, 'ts', limit)})"
    )


def load_keys(tenant: str, seq: int, pairs, unit_ms: int, limit: int = MAX_CONDITIONS) -> str:
    """Keys of the raw rows load ``seq`` stored in the pairs."""
    return (
        f"SELECT sensor, ts FROM raw WHERE tenant = {tenant_literal(tenant)}"
        f" AND seq = {int(seq)} AND ({cell_conditions(pairs, unit_ms, 'ts', limit)})"
    )


# The M4 pairs folded and taken apart into plain columns (old servers and the
# native protocol's readers handle tuples poorly): see lenshouse.rollup.m4.
M4_FLAT = ("m4_tf", "m4_vf", "m4_tl", "m4_vl", "m4_tmin", "m4_tmax")
# The float columns of a lens read (the rest are integers).
FLOAT_COLUMNS = frozenset({"sum", "min", "max", "m4_vf", "m4_vl"})


def m4_flat(pairs: dict[str, str], cond: str | None = None) -> str:
    """``pairs``: per M4 column, the expression of its pair in each row;
    ``cond``: fold only the rows where it holds."""
    f = {
        c: f"{M4_FOLD[c]}If({pairs[c]}, {cond})" if cond else f"{M4_FOLD[c]}({pairs[c]})"
        for c in M4_COLUMNS
    }
    return (
        f"tupleElement({f['m4_first']}, 1) AS m4_tf, tupleElement({f['m4_first']}, 2) AS m4_vf,"
        f" tupleElement({f['m4_last']}, 1) AS m4_tl, tupleElement({f['m4_last']}, 2) AS m4_vl,"
        f" tupleElement({f['m4_low']}, 2) AS m4_tmin,"
        f" negate(tupleElement({f['m4_high']}, 2)) AS m4_tmax"
    )


_M4_OF_TIER = {c: c for c in M4_COLUMNS}


def folded(
    tier: Tier | None,
    tenant: str,
    r: int,
    pairs,
    limit: int = MAX_CONDITIONS,
    at: TierTables = OWN_TABLES,
) -> str:
    """Per (sensor, cell of ``r`` ms): sum, count, min, max and M4 folded from
    raw (``tier`` None) or a tier's rows."""
    column = "ts" if tier is None else "t"
    cond = f"tenant = {tenant_literal(tenant)} AND ({cell_conditions(pairs, r, column, limit)})"
    if tier is None:
        source = "raw"
        folds = f"{_RAW_AGGS}, {m4_flat(M4_OF_RAW)}"
    else:
        source, cond = at.table(tier), at.where(tier, cond)
        folds = f"{_TIER_AGGS}, {m4_flat(_M4_OF_TIER)}"
    r = int(r)
    return (
        f"SELECT sensor, intDiv({column}, {r}) * {r} AS c, {folds} FROM {source}"
        f" WHERE {cond} GROUP BY sensor, c"
    )


def extents(coarsest: Tier, at: TierTables = OWN_TABLES) -> str:
    return (
        f"SELECT tenant, sensor, min(t) AS lo, max(t) AS hi FROM {at.table(coarsest)}"
        f" WHERE {at.where(coarsest, '1')} GROUP BY tenant, sensor"
    )


NEWEST = "SELECT max(ts) AS ts, count() AS n FROM raw"
KNOWN_SENSORS = "SELECT DISTINCT tenant, sensor FROM sensors"
TABLES = "SELECT name FROM system.tables WHERE database = currentDatabase()"


def sensors_of(tenant: str) -> str:
    return (
        "SELECT sensor, argMax(labels, version) AS labels FROM sensors"
        f" WHERE tenant = {tenant_literal(tenant)} GROUP BY sensor ORDER BY sensor"
    )


def seq_filter(max_seq: int, hidden: tuple[int, ...] = ()) -> str:
    """Rows of loads up to ``max_seq``, except the ``hidden`` ones (loads in
    flight below it, when several loaders complete out of order)."""
    cond = f" AND seq <= {int(max_seq)}"
    return cond + (f" AND seq NOT IN ({_ints(sorted(hidden))})" if hidden else "")


def export(
    tenant: str,
    sensors: list[int],
    start: int,
    end: int,
    max_seq: int,
    limit: int,
    hidden: tuple[int, ...] = (),
    after: tuple[int, int] | None = None,
    table: str = "raw",
) -> str:
    """Raw points in (sensor, ts) order; ``after``: only those past that key
    (the continuation of an export cut at its limit)."""
    past = ""
    if after is not None:
        s, t = int(after[0]), int(after[1])
        past = f" AND (sensor > {s} OR (sensor = {s} AND ts > {t}))"
    return (
        f"SELECT sensor, ts, value FROM {identifier(table)}"
        f" WHERE tenant = {tenant_literal(tenant)}"
        f" AND sensor IN ({_ints(sensors)}) AND ts >= {int(start)} AND ts < {int(end)}"
        f"{past}{seq_filter(max_seq, hidden)} ORDER BY sensor, ts LIMIT {int(limit)}"
    )


# -- retention -----------------------------------------------------------------
RETENTION = (
    "SELECT tenant, source, argMax(keep_ms, version) AS keep_ms FROM retention"
    " GROUP BY tenant, source"
)
EXPIRY = "SELECT tenant, source, max(before) AS before FROM expiry GROUP BY tenant, source"


def source_table(tier: Tier | None, at: TierTables = OWN_TABLES) -> str:
    return "raw" if tier is None else at.table(tier)


def time_column(tier: Tier | None) -> str:
    return "ts" if tier is None else "t"


def partitions(table: str, database: str | None = None) -> str:
    """The active partitions of a local table, with their size."""
    db = "currentDatabase()" if database is None else string_literal(identifier(database))
    return (
        "SELECT partition, sum(bytes_on_disk) AS bytes, sum(rows) AS rows FROM system.parts"
        f" WHERE database = {db} AND table = {string_literal(table)} AND active"
        " GROUP BY partition ORDER BY partition"
    )


def mutations_running(table: str, database: str) -> str:
    return (
        "SELECT count() AS n FROM system.mutations WHERE database ="
        f" {string_literal(identifier(database))} AND table = {string_literal(table)}"
        " AND NOT is_done"
    )


def points_about(
    coarsest: Tier,
    tenant: str,
    sensors: list[int],
    lo: int,
    hi: int,
    suffix: str = "",
    at: TierTables = OWN_TABLES,
) -> str:
    """At least the loaded points of ``sensors`` in [lo, hi): whole coarsest
    cells (``suffix``: of a shard's local table)."""
    r = coarsest.res_ms
    cond = (
        f"tenant = {tenant_literal(tenant)} AND sensor IN ({_ints(sensors)})"
        f" AND t >= {int(lo) // r * r} AND t < {int(hi)}"
    )
    table = at.table(coarsest, suffix)
    return f"SELECT sum(cnt) AS n FROM {table} WHERE {at.where(coarsest, cond)}"


def _in_range(tier: Tier | None, tenant: str, lo: int, hi: int, at: TierTables) -> str:
    t = time_column(tier)
    cond = f"tenant = {tenant_literal(tenant)} AND {t} >= {int(lo)} AND {t} < {int(hi)}"
    return cond if tier is None else at.where(tier, cond)


def rows_in(tier: Tier | None, tenant: str, lo: int, hi: int, at: TierTables = OWN_TABLES) -> str:
    return (
        f"SELECT count() AS n FROM {source_table(tier, at)}"
        f" WHERE {_in_range(tier, tenant, lo, hi, at)}"
    )


def drop_partition(table: str, partition: int, on_cluster: str = "") -> str:
    return f"ALTER TABLE {table}{on_cluster} DROP PARTITION {int(partition)}"


def delete_range(
    table: str,
    tier: Tier | None,
    tenant: str,
    lo: int,
    hi: int,
    on: str = "",
    at: TierTables = OWN_TABLES,
) -> str:
    return f"ALTER TABLE {table}{on} DELETE WHERE {_in_range(tier, tenant, lo, hi, at)}"


# -- deletes (lenshouse.ingest.erase) -------------------------------------------
def _erase_where(
    tier: Tier | None,
    tenant: str,
    sensors: Iterable[int],
    lo: int,
    hi: int,
    at: TierTables = OWN_TABLES,
) -> str:
    t = time_column(tier)
    cond = (
        f"tenant = {tenant_literal(tenant)} AND sensor IN ({_ints(sensors)})"
        f" AND {t} >= {int(lo)} AND {t} < {int(hi)}"
    )
    return cond if tier is None else at.where(tier, cond)


def erase(
    table: str, tier: Tier | None, tenant: str, sensors, lo: int, hi: int,
    at: TierTables = OWN_TABLES,
) -> str:  # fmt: skip
    """A lightweight delete (rows masked at once, removed by later merges)."""
    return f"DELETE FROM {table} WHERE {_erase_where(tier, tenant, sensors, lo, hi, at)}"


def hot_partitions(table: str, cold_volume: str) -> str:
    """Partitions of ``table`` with active parts outside the cold volume."""
    return (
        "SELECT DISTINCT toInt64(partition) AS partition FROM system.parts WHERE database ="
        f" currentDatabase() AND table = {string_literal(identifier(table))} AND active"
        f" AND disk_name != {string_literal(identifier(cold_volume))}"
    )


def move_partition(table: str, partition: int, volume: str) -> str:
    return (
        f"ALTER TABLE {identifier(table)} MOVE PARTITION {int(partition)}"
        f" TO VOLUME {string_literal(identifier(volume))}"
    )


def set_policy(table: str, policy: str) -> str:
    name = string_literal(identifier(policy))
    return f"ALTER TABLE {identifier(table)} MODIFY SETTING storage_policy = {name}"


def mutations_pending(tables: list[str]) -> str:
    names = ",".join(string_literal(identifier(t)) for t in tables)
    return (
        "SELECT count() AS n FROM system.mutations WHERE database = currentDatabase()"
        f" AND table IN ({names}) AND NOT is_done"
    )


def erase_count(
    first: Tier, tenant: str, sensors: list[int], start: int, end: int,
    at: TierTables = OWN_TABLES,
) -> str:  # fmt: skip
    """Raw points in [start, end): whole first-tier cells from their counts,
    the partial cells at both ends from raw."""
    r = first.res_ms
    a, b = -(-start // r) * r, end // r * r
    if a >= b:
        return (
            f"SELECT count() AS n FROM raw WHERE {_erase_where(None, tenant, sensors, start, end)}"
        )
    edges = " OR ".join(
        f"({_erase_where(None, tenant, sensors, x, y)})" for x, y in ((start, a), (b, end)) if x < y
    )
    whole = _erase_where(first, tenant, sensors, a, b, at)
    inner = f"SELECT sum(cnt) AS n FROM {at.table(first)} WHERE {whole}"
    if not edges:
        return f"SELECT toUInt64(sum(n)) AS n FROM ({inner})"
    raw = f"SELECT count() AS n FROM raw WHERE {edges}"
    return f"SELECT toUInt64(sum(n)) AS n FROM ({inner} UNION ALL {raw})"


def edge_cells(first: Tier, tenant: str, sensors: list[int], ranges: list[tuple[int, int]]) -> str:
    """First-tier cells of the raw points in ``ranges`` (cell-aligned), in the
    tier table's column order (M4 taken apart), sorted by key."""
    r = first.res_ms
    where = " OR ".join(f"({_erase_where(None, tenant, sensors, a, b)})" for a, b in ranges)
    return (
        f"SELECT tenant, sensor, intDiv(ts, {r}) * {r} AS t, {_RAW_AGGS}, {m4_flat(M4_OF_RAW)}"
        f" FROM raw WHERE {where} GROUP BY tenant, sensor, t ORDER BY tenant, sensor, t"
    )


# -- lenses ------------------------------------------------------------------
@dataclass(frozen=True)
class LensQuery:
    sql: str
    raw_in_order: bool  # one raw source with wide buckets: aggregate in key order


_RAW_AGGS = stat_folds(raw=True)
_TIER_AGGS = stat_folds(raw=False)
_ROW_AGGS = STAT_ROW_FOLDS
_AS_ROWS = {raw: stat_rows(raw) for raw in (True, False)}  # keyed by "is raw"
_M4_ROW = {c: f"{c}_r" for c in M4_COLUMNS}  # M4 pairs as rows, in the union
_M4_AS_ROWS = {
    True: ", ".join(f"{M4_OF_RAW[c]} AS {c}_r" for c in M4_COLUMNS),
    False: ", ".join(f"{c} AS {c}_r" for c in M4_COLUMNS),
}
_ZERO_PAIR = {"Int64": "toInt64(0)", "Float64": "0.0"}
_NO_M4 = "".join(f", ({', '.join(_ZERO_PAIR[k] for k in PAIRS[c])}) AS {c}_r" for c in M4_COLUMNS)
IN_ORDER_MIN_STEP = 20  # ms: raw buckets at least this wide are aggregated in key order


def _segment_range(col: str, s) -> str:
    cond = f"{col} >= {int(s.lo)} AND {col} < {int(s.hi)}"
    if s.within is not None:
        # The part of every bucket between two offsets: the key analysis reads
        # only the granules there (modulo is monotonic between its wraps).
        step, a, b = (int(x) for x in s.within)
        # An Int64 divisor: with a small literal one, ClickHouse 18.16 counted
        # wrong (the remainder takes a type from the divisor there).
        offset = f"modulo({col} - {int(s.lo)}, toInt64({step}))"
        cond += (f" AND {offset} >= {a}" if a else "") + f" AND {offset} < {b}"
    return f"({cond})"


def bucket_of(col: str, step: int, origin: int = 0) -> str:
    """The bucket number of ``col``: buckets are [origin + n·step, …)."""
    step, origin = int(step), int(origin)
    return f"intDiv({col} - {origin}, {step})" if origin else f"intDiv({col}, {step})"


def segments_where(tenant: str, col: str, groups, pick) -> str | None:
    """The tenant's rows in the segments ``pick`` keeps, of each group's sensors
    (``groups``: (sensor ids, segments) pairs); None if it keeps none."""
    terms = []
    for ids, segs in groups:
        ranges = " OR ".join(_segment_range(col, s) for s in segs if pick(s))
        if ranges:
            terms.append(f"(sensor IN ({_ints(ids)}) AND ({ranges}))")
    if not terms:
        return None
    return f"tenant = {tenant_literal(tenant)} AND ({' OR '.join(terms)})"


def lens(
    tenant: str,
    step: int,
    groups,
    max_seq: int | None,
    hidden: tuple[int, ...] = (),
    origin: int = 0,
    m4: bool = False,
    at: TierTables = OWN_TABLES,
) -> LensQuery:
    """One query over each group's segments for its sensors, raw rows up to
    ``max_seq`` (but not the ``hidden`` loads) when given. ``groups`` are
    (sensor ids, segments) pairs; a segment has ``tier`` (None for raw),
    ``lo``, ``hi`` and ``within``. Bucket n is [origin + n·step, …). With
    ``m4``, each bucket's M4 points too (columns ``M4_FLAT``)."""
    step, origin = int(step), int(origin)

    def bucket(col: str) -> str:
        return bucket_of(col, step, origin)

    def where(col: str, pick) -> str | None:
        return segments_where(tenant, col, groups, pick)

    sources = []  # (table, time column, condition, aggregates of its own columns)
    raw = where("ts", lambda s: s.tier is None)
    if raw and (max_seq is None or max_seq >= 0):
        seq = "" if max_seq is None else seq_filter(max_seq, hidden)
        # Raw points at the edges of buckets off the grid: the time column is
        # filtered first, and values are read only from granules with edges
        # in them (measured 3x faster for a minute's edges at 1 kHz).
        edges = any(s.within for _, segs in groups for s in segs if s.tier is None)
        aggs = f"{_RAW_AGGS}, {m4_flat(M4_OF_RAW)}" if m4 else _RAW_AGGS
        sources.append(("raw", "ts", ("PREWHERE " if edges else "WHERE ") + raw + seq, aggs))
    tiers = dict.fromkeys(s.tier for _, segs in groups for s in segs if s.tier)
    for tier in tiers:
        cond = where("t", lambda s, tier=tier: s.tier == tier)
        aggs = f"{_TIER_AGGS}, {m4_flat(_M4_OF_TIER)}" if m4 else _TIER_AGGS
        sources.append((at.table(tier), "t", f"WHERE {at.where(tier, cond)}", aggs))
    if len(sources) == 1:
        # One source (the usual case): aggregated directly, which measured
        # 15-25% faster than through a subquery.
        table, t, cond, aggs = sources[0]
        return LensQuery(
            f"SELECT sensor, {bucket(t)} AS b, {aggs} FROM {table} {cond}"
            " GROUP BY sensor, b ORDER BY sensor, b",  # measured: faster than unordered
            # Raw rows come in key order and buckets follow it: aggregating in
            # that order measured faster for wide buckets (a minute at 40 ms
            # steps) and slower for narrow ones (10 s at 5 ms steps).
            table == "raw" and step >= IN_ORDER_MIN_STEP,
        )

    def as_rows(raw: bool) -> str:
        return _AS_ROWS[raw] + (f", {_M4_AS_ROWS[raw]}" if m4 else "")

    parts = [
        f"SELECT sensor, {t} AS t, {as_rows(table == 'raw')} FROM {table} {cond}"
        for table, t, cond, _ in sources
    ] or [
        f"SELECT toUInt32(0) AS sensor, toInt64(0) AS t, {STAT_NO_ROWS}"
        f"{_NO_M4 if m4 else ''} WHERE 0"
    ]
    union = " UNION ALL ".join(parts)
    aggs = f"{_ROW_AGGS}, {m4_flat(_M4_ROW)}" if m4 else _ROW_AGGS
    return LensQuery(
        f"SELECT sensor, {bucket('t')} AS b, {aggs} FROM ({union})"
        " GROUP BY sensor, b ORDER BY sensor, b",
        False,
    )
