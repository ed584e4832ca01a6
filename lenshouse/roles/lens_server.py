"""The lens server: lenses, export and the catalog over the ClickHouse
cluster, exact as of the loads every loader completed (read from the keeper,
:mod:`lenshouse.lens.cluster_visibility`).

Each lens is read pinned to the loads each shard had completed
(:mod:`lenshouse.storage.replicated.pinned`), from the shards that hold its
sensors only. The newest seconds come from the head
(:mod:`lenshouse.lens.cluster_head`), which keeps the rows every loader
announces on NATS (:mod:`lenshouse.stream.loaded`); older chunks from the
chunk cache (:class:`lenshouse.lens.cache.PinnedCache`), which keeps what
lenses read with the floors they read at, and serves a chunk again while no
load completed since (on record in the keeper) wrote into its time range;
the rest from ClickHouse. Without NATS addresses it keeps no head."""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Histogram

from lenshouse.api.app import add_health_route, add_page, add_read_routes, base_app
from lenshouse.api.auth import Auth, add_admin_routes
from lenshouse.api.metrics import LENS_BUCKETS
from lenshouse.api.prometheus import add_query_routes
from lenshouse.api.retention import add_retention_routes
from lenshouse.coordination.zk import Paths, ensure_layout
from lenshouse.coordination.zk import connect as zk_connect
from lenshouse.lens.catch_up import CatchUp
from lenshouse.lens.cluster_head import ClusterHead
from lenshouse.lens.cluster_visibility import ClusterVisibility
from lenshouse.lens.engine import LensEngine
from lenshouse.prometheus.series import KeeperSeriesIds
from lenshouse.retention.horizons import Horizons
from lenshouse.storage.catalog import Catalog
from lenshouse.storage.errors import StorageError
from lenshouse.storage.replicated.store import ClusterStore
from lenshouse.stream import jetstream
from lenshouse.stream.jetstream import LoopThread
from lenshouse.stream.loaded import Feed
from lenshouse.stream.partitions import LogLayout, partition_of
from lenshouse.tenancy.keeper import KeeperRegistry
from lenshouse.tenancy.quotas import Quotas

log = logging.getLogger(__name__)

OPEN_EVERY_S = 1.0  # how often closed partitions of the head are opened again


class LensServer:
    """Ownership: immutable after construction; the engine, the store and the
    keeper client are used by any request thread; the opener thread opens
    the head's partitions, the feed thread fills them."""

    def __init__(
        self,
        keeper: list[str],
        store: ClusterStore,
        cache_bytes: int = 256 << 20,
        nats: list[str] | None = None,
        log_prefix: str = "LH",
        head_seconds: float = 65.0,
        head_bytes: int = 2 << 30,
        catch_up: CatchUp | None = None,
    ) -> None:
        self.store = store
        self.paths = Paths(store.conn.database)
        self.zk = zk_connect(keeper)
        ensure_layout(self.zk, self.paths)
        shards = len(store.conn.shards)
        self.visibility = ClusterVisibility(self.zk, self.paths, shards)
        self.horizons = Horizons(store)
        self.head: ClusterHead | None = None
        self._stop = threading.Event()
        self._loop: LoopThread | None = None
        self._feed: Feed | None = None
        self.catch_up = catch_up  # lenses yield to a loader catching up (heard on NATS)
        if nats and head_seconds > 0:
            self.head = ClusterHead(
                shards,
                lambda tenant, sensors: partition_of(tenant, sensors, shards),
                head_seconds,
                head_bytes,
            )
            self._start_feed(nats, LogLayout(log_prefix, shards))
        self.lenses = LensEngine(
            store,
            self.visibility,
            cache_bytes=cache_bytes,
            horizons=self.horizons,
            cluster_head=self.head,
        )
        if catch_up is not None:
            self.lenses.pace = catch_up.turn
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

    def _start_feed(self, nats: list[str], layout: LogLayout) -> None:
        self._loop = LoopThread("lens-nats")
        threading.Thread(
            target=self._follow, args=(nats, layout), name="head-opener", daemon=True
        ).start()

    def _follow(self, nats: list[str], layout: LogLayout) -> None:
        """Subscribe to the loads' announcements (NATS may come up after this
        server: until then lenses read ClickHouse only), then open the head's
        closed partitions, now and whenever one is dropped. Subscribed first:
        a load announced after its partition's base is read is either
        received or found missing, never silently absent."""
        head, loop = self.head, self._loop
        assert head is not None and loop is not None
        while self._feed is None and not self._stop.is_set():  # bounded by the server's life
            try:
                nc = loop.run(jetstream.connect(nats, "lens-server"))
                on_lag = self.catch_up.note if self.catch_up is not None else None
                self._feed = Feed(loop, nc, layout, head.add, on_lag).start()
            except Exception as e:
                log.info("NATS not reachable yet (%r): no head for now", e)
                self._stop.wait(OPEN_EVERY_S)
        while not self._stop.wait(OPEN_EVERY_S):
            closed = head.closed()
            if closed:
                self._open(closed)

    def _open(self, closed: list[int]) -> None:
        head = self.head
        assert head is not None
        try:
            snap = self.visibility.snapshot()
            assert snap.completed is not None
            for p in closed:
                base = snap.completed[p][-1].seq if snap.completed[p] else -1
                since = head.since_ms()
                newest = self.store.newest_loaded(p, base, since) if base >= 0 else None
                head.open(p, base, newest, since)
        except Exception as e:  # storage or keeper away: lenses read ClickHouse
            log.info("head not opened yet: %r", e)

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
        if self.head is not None and self._feed is not None:
            doc["head"] = {
                **self.head.stats(),
                "loads_received": self._feed.loads,
                "messages_dropped": self._feed.dropped,
            }
        if self.catch_up is not None:
            doc["catch_up"] = {
                "yielding": self.catch_up.catching_up(),
                "lenses_yielded": self.catch_up.yielded,
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
        self._stop.set()
        if self._feed is not None:
            self._feed.close()
        if self._loop is not None:
            self._loop.close()
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
