"""Capacity planning: disk, memory, CPU and network for a fleet, from costs
measured on this kind of machine (2 cores), each figure naming its source.

Disk follows retention: raw points for as long as the policy keeps them,
each tier for as long as it is kept (a tier's cost is per cell, so it does
not depend on the rate). Replication multiplies disk; shards divide it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lenshouse.retention.policy import DEFAULT_POLICY, RAW, SOURCES, Policy, resolution_ms
from lenshouse.rollup.tiers import DAY_MS

# Bytes on disk per raw point, after merges. "adc16": the generator's 16-bit
# ADC signals (`lenshouse bench storage`, docs/performance.md §4: 1.688);
# "float": full-precision values 10 + sin + 0.05·N(0,1) printed %.17g
# (side-by-side run against VictoriaMetrics and InfluxDB: 7.30).
RAW_BYTES = {"adc16": 1.688, "float": 7.30}
RAW_SOURCE = {
    "adc16": "bench storage, 60M points of Fleet.second (docs/performance.md §4)",
    "float": "side-by-side ingest of full-precision values, 100 sensors × 60 s",
}
# Bytes per tier cell (bench storage: 5,490,785 B / 600,000 cells of 100 ms,
# 471,539 B / 60,000 cells of 1 s; coarser tiers' cells cost about as much as
# 1 s ones once a partition holds more than a handful).
CELL_BYTES = {"100ms": 9.15, "1s": 7.86, "10s": 7.86, "1m": 7.86, "10m": 7.86, "1h": 7.86}
# Cluster write path, CPU-seconds per second at 0.9M points/s loaded (a 2 × 2
# cluster, 3 keepers, 3 NATS on one 2-core machine; docs/cluster.md).
CLUSTER_CPU_AT = 900_000
CLUSTER_CPU = {"clickhouse": 54 / 60, "keeper": 22 / 60, "loader": 22 / 60,
               "gateway": 9 / 60, "nats": 9 / 60}  # fmt: skip
# The embedded store: ~6M points/s of Arrow ingest on 2 cores (docs/performance.md).
EMBEDDED_POINTS_PER_CORE_S = 3_000_000
HEAD_BYTES_PER_POINT = 20  # the head's page columns (ts 8, value 8, the load's seq 4)
HEAD_SECONDS = 65
LENS_CACHE_MB, BLOCK_CACHE_MB = 256, 1024  # serve's defaults
LOG_BUDGET_GB = 6  # each NATS server keeps at most the log's byte budget
WIRE_BYTES = 20  # an Arrow point on the wire: sensor 4 + ts 8 + value 8


@dataclass(frozen=True)
class Fleet:
    sensors: int
    rate_hz: float
    days: float
    values: str = "adc16"  # or "float"

    @property
    def points_per_s(self) -> float:
        return self.sensors * self.rate_hz


@dataclass(frozen=True)
class Line:
    what: str
    value: float
    unit: str
    source: str


def _kept_days(policy: Policy, source: str, days: float) -> float:
    keep = policy.keep[source]
    return days if keep is None else min(days, keep / DAY_MS)


def disk(fleet: Fleet, policy: Policy = DEFAULT_POLICY) -> list[Line]:
    """Bytes each source holds once ``fleet.days`` have been written (one copy)."""
    out = []
    for source in SOURCES:
        days = _kept_days(policy, source, fleet.days)
        if source == RAW:
            b = fleet.points_per_s * days * 86_400 * RAW_BYTES[fleet.values]
            note = f"{RAW_BYTES[fleet.values]} B/point × {days:g} d: {RAW_SOURCE[fleet.values]}"
        else:
            cells = fleet.sensors * days * DAY_MS / resolution_ms(source)
            b = cells * CELL_BYTES[source]
            note = f"{CELL_BYTES[source]} B/cell × {days:g} d (bench storage)"
        out.append(Line(source, b, "B", note))
    return out


def plan(
    fleet: Fleet,
    shards: int = 2,
    replicas: int = 2,
    policy: Policy = DEFAULT_POLICY,
) -> list[Line]:
    """Every figure for a cluster of ``shards`` × ``replicas`` (1 × 1: embedded)."""
    lines = disk(fleet, policy)
    one_copy = sum(x.value for x in lines)
    out = [*lines, Line("all sources, one copy", one_copy, "B", "sum of the above")]

    def add(what: str, value: float, unit: str, source: str) -> None:
        out.append(Line(what, value, unit, source))

    add("disk per ClickHouse server", one_copy / shards, "B",
        f"one copy / {shards} shards (each of its {replicas} replicas holds it)")  # fmt: skip
    add("disk, whole cluster", one_copy * replicas, "B", f"× {replicas} replicas")
    rate = fleet.points_per_s
    wire = rate * WIRE_BYTES
    if shards * replicas == 1:
        head = rate * HEAD_SECONDS * HEAD_BYTES_PER_POINT
        add("memory: head", head, "B", f"{HEAD_SECONDS} s × {HEAD_BYTES_PER_POINT} B/point")
        caches = (LENS_CACHE_MB + BLOCK_CACHE_MB) * 2**20
        add("memory: caches", caches, "B", "lens cache 256 MiB + block cache 1 GiB (defaults)")
        add("CPU: ingest", rate / EMBEDDED_POINTS_PER_CORE_S, "cores", "~6M points/s on 2 cores")
        add("network in", wire, "B/s", "Arrow: 20 B a point")
        return out
    scale = rate / CLUSTER_CPU_AT
    where = "measured at 0.9M points/s on a 2 × 2 cluster (docs/cluster.md), scaled by rate"
    for role, cost in CLUSTER_CPU.items():
        total = cost * scale
        n = shards * replicas if role == "clickhouse" else 1
        each = f"; {total / n:.2f} per server" if n > 1 else ""
        add(f"CPU: {role}", total, "cores", where + each)
    add("memory: ClickHouse block cache", BLOCK_CACHE_MB * 2**20, "B", "per server")
    add("disk: NATS log", LOG_BUDGET_GB * 2**30, "B", "per NATS server: the log's byte budget")
    add("network: clients → gateways", wire, "B/s", "Arrow: 20 B a point")
    add("network: log replication", wire * 2, "B/s", "each record to 2 more NATS servers")
    add("network: loaders → ClickHouse", wire, "B/s", "native columns, about the Arrow size")
    fetch = rate * RAW_BYTES[fleet.values] * (replicas - 1)
    add("network: replica fetches", fetch, "B/s", "new parts, compressed, to the other replicas")
    return out


def human(value: float, unit: str) -> str:
    if unit in ("B", "B/s"):
        for prefix, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if value >= size:
                return f"{value / size:,.2f} {prefix}{unit[1:]}"
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}"
