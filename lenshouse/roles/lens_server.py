"""The lens server: lenses, export and the catalog over the ClickHouse
cluster, exact as of the loads every loader completed (read from the keeper,
:mod:`lenshouse.lens.cluster_visibility`).

Each lens is read pinned to the loads each shard had completed
(:mod:`lenshouse.storage.replicated.pinned`), from the shards that hold its
sensors only. Its chunk cache (:class:`lenshouse.lens.cache.PinnedCache`)
keeps what lenses read with the floors they read at, and serves a chunk
again while no load completed since (on record in the keeper) wrote into
its time range. It keeps no head: the newest seconds are read from
ClickHouse."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Histogram

from lenshouse.api.app import add_health_route, add_page, add_read_routes, base_app
from lenshouse.api.auth import Auth, add_admin_routes
from lenshouse.api.metrics import LENS_BUCKETS
from lenshouse.api.prometheus import add_query_routes
from lenshouse.api.retention import add_retention_routes
from lenshouse.coordination.zk import Paths, ensure_layout
from lenshouse.coordination.zk import connect as zk_connect
from lenshouse.lens.cluster_visibility import ClusterVisibility
from lenshouse.lens.engine import LensEngine
from lenshouse.prometheus.series import KeeperSeriesIds
from lenshouse.retention.horizons import Horizons
from lenshouse.storage.catalog import Catalog
from lenshouse.storage.errors import StorageError
from lenshouse.storage.replicated.store import ClusterStore
from lenshouse.tenancy.keeper import KeeperRegistry
from lenshouse.tenancy.quotas import Quotas


class LensServer:
    """Ownership: immutable after construction; the engine, the store and the
    keeper client are used by any request thread."""

    def __init__(
        self, keeper: list[str], store: ClusterStore, cache_bytes: int = 256 << 20
    ) -> None:
        self.store = store
        self.paths = Paths(store.conn.database)
        self.zk = zk_connect(keeper)
        ensure_layout(self.zk, self.paths)
        self.visibility = ClusterVisibility(self.zk, self.paths, len(store.conn.shards))
        self.horizons = Horizons(store)
        self.lenses = LensEngine(
            store, self.visibility, cache_bytes=cache_bytes, horizons=self.horizons
        )
        # Remote-write series live in the keeper (the gateways claim their ids there).
        self.series = KeeperSeriesIds(self.zk, self.paths.root)
        self.catalog = Catalog(store, self.series.labels_of)
        self.auth = Auth(KeeperRegistry(self.zk, self.paths))  # auth is always on here
        self.registry = CollectorRegistry()
        self.lens_seconds = Histogram(
            "lenshouse_lens_seconds",
            "Lens request latency.",
            buckets=LENS_BUCKETS,
            registry=self.registry,
        )

    def health(self) -> tuple[dict, bool]:
        doc: dict = {"role": "lens", "keeper_connected": self.zk.connected, **self.store.health()}
        cache = self.lenses.pinned
        doc["lens_cache"] = {
            "chunks": len(cache),
            "bytes": cache.bytes,
            "hits": cache.hits,
            "misses": cache.misses,
            "invalidated": cache.invalidated,
        }
        try:
            snap = self.visibility.snapshot()
            doc["loads_started"] = snap.started
            doc["loads_in_flight"] = len(snap.hidden)
            ok = True
        except StorageError as e:
            doc["error"] = str(e)
            ok = False
        doc["status"] = "ok" if ok else "unavailable"
        return doc, ok

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()
        self.store.close()


def create_lens_app(server: LensServer, quotas: Quotas | None = None) -> FastAPI:
    app = base_app(server.registry, server.auth, quotas)
    app.state.lens_server = server
    add_read_routes(app, server, server.lens_seconds)
    add_query_routes(app, server)  # Prometheus' query API (Grafana) over the same lenses
    add_health_route(app, server.health)
    add_admin_routes(app)
    # Maintenance runs as its own job (lenshouse maintain --clickhouse …).
    add_retention_routes(app, server.store, server.horizons, can_maintain=False)
    add_page(app)
    return app
