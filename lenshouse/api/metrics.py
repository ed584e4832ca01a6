"""Prometheus metrics. Counters that the ingest path already keeps are read at
scrape time, so the hot path pays nothing for them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lenshouse.node import Node

LENS_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NodeCollector:
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self):
        ing = self.node.ingestor
        ls = ing.loader.stats
        yield CounterMetricFamily(
            "lenshouse_points_accepted", "Points acknowledged by /v1/write.", ing.points_accepted
        )
        yield CounterMetricFamily(
            "lenshouse_batches_accepted", "Batches acknowledged by /v1/write.", ing.batches_accepted
        )
        yield CounterMetricFamily(
            "lenshouse_points_loaded", "Points loaded into ClickHouse.", ls.rows_loaded
        )
        yield CounterMetricFamily(
            "lenshouse_points_duplicate",
            "Points acknowledged but not stored again: their key was already stored.",
            ls.duplicates,
        )
        yield CounterMetricFamily(
            "lenshouse_points_conflicting",
            "Duplicate points whose value differed from the stored one (first value wins).",
            ls.conflicts,
        )
        yield GaugeMetricFamily(
            "lenshouse_dedup_index_bytes",
            "Memory of the dedup index.",
            ing.loader.index.memory_bytes,
        )
        yield CounterMetricFamily(
            "lenshouse_dedup_fill_queries",
            "Range reads of raw data for duplicates older than the in-memory index.",
            ing.loader.index.fill_queries,
        )
        yield CounterMetricFamily(
            "lenshouse_batches_replayed",
            "Batches acknowledged from the X-Batch-Id memory without appending again.",
            ing.batches_replayed,
        )
        yield CounterMetricFamily("lenshouse_loads", "ClickHouse inserts completed.", ls.loads)
        yield CounterMetricFamily(
            "lenshouse_insert_errors", "Failed ClickHouse inserts (retried).", ls.insert_errors
        )
        yield CounterMetricFamily(
            "lenshouse_loads_reconciled",
            "Loads replayed or retried, then checked against what ClickHouse holds.",
            ls.reconciled,
        )
        yield CounterMetricFamily(
            "lenshouse_loads_repaired",
            "Reconciled loads whose lost rows were added again.",
            ls.repaired,
        )
        yield CounterMetricFamily(
            "lenshouse_deletes", "Deletes (DELETE /v1/points) applied.", ls.erasures
        )
        yield CounterMetricFamily("lenshouse_points_deleted", "Points deletes removed.", ls.erased)
        yield CounterMetricFamily("lenshouse_wal_fsyncs", "Log fsyncs.", ing.wal.fsyncs)
        yield CounterMetricFamily(
            "lenshouse_wal_bytes", "Bytes appended to the log.", ing.wal.bytes_written
        )
        yield GaugeMetricFamily(
            "lenshouse_ingest_lag_seconds",
            "Age of the oldest acknowledged point not yet visible to lenses.",
            ing.loader.lag_seconds(),
        )
        yield GaugeMetricFamily(
            "lenshouse_ingest_queued_points", "Points acknowledged, not yet loaded.", ls.queued_rows
        )
        yield GaugeMetricFamily(
            "lenshouse_last_insert_seconds", "Duration of the last load.", ls.last_insert_seconds
        )
        cache = self.node.lenses.cache
        yield CounterMetricFamily(
            "lenshouse_lens_cache_hits", "Chunk lookups the lens cache answered.", cache.hits
        )
        yield CounterMetricFamily(
            "lenshouse_lens_cache_misses", "Chunk lookups read from ClickHouse.", cache.misses
        )
        yield CounterMetricFamily(
            "lenshouse_lens_cache_invalidated",
            "Cached chunks dropped because a load wrote into them.",
            cache.invalidated,
        )
        yield GaugeMetricFamily(
            "lenshouse_lens_cache_bytes", "Memory of the lens cache.", cache.bytes
        )
        head = self.node.head
        yield GaugeMetricFamily("lenshouse_head_bytes", "Memory of the head's points.", head.bytes)
        yield GaugeMetricFamily(
            "lenshouse_head_covered_seconds",
            "How far back from now lenses read the head instead of ClickHouse.",
            head.covered_ms() / 1000,
        )


class Metrics:
    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        self.lens_seconds = Histogram(
            "lenshouse_lens_seconds",
            "Lens request latency.",
            buckets=LENS_BUCKETS,
            registry=self.registry,
        )
