"""The gateway: validate a batch, publish it to the replicated log, acknowledge.

Stateless: any gateway takes any batch, a client may send to several and
fail over between them. ``204`` means every part of the batch is stored on a
quorum of its partition stream's replicas; ``503`` with ``Retry-After``
means the log did not store it (no quorum, leader election, full budget)
and the client must send it again, to this gateway or another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from kazoo.exceptions import KazooException, NoNodeError
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lenshouse.api.app import Unavailable, add_health_route, add_write_routes, base_app
from lenshouse.api.auth import Auth
from lenshouse.api.prometheus import add_remote_write_route
from lenshouse.coordination.zk import Paths
from lenshouse.points import Erasure, NotSupported, PointBatch
from lenshouse.prometheus.series import KeeperSeriesIds
from lenshouse.stream.jetstream import LogFull, LogUnavailable, connect, discover
from lenshouse.stream.partitions import LogLayout
from lenshouse.stream.publisher import Publisher, batch_key
from lenshouse.tenancy.quotas import Quotas

log = logging.getLogger(__name__)

ACK_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Gateway:
    """Ownership: everything here runs on the app's event loop."""

    def __init__(
        self,
        servers: list[str],
        prefix: str = "LH",
        name: str = "gateway",
        zk=None,
        database: str = "default",
    ) -> None:
        self.servers = servers
        self.database = database  # whose keeper records (tokens, storage) it reads
        self.zk = zk  # the keeper client its tokens come from (None in tests without auth)
        self.prefix = prefix
        self.name = name
        self.publisher: Publisher | None = None
        self.points_accepted = 0
        self.batches_accepted = 0
        self.batches_refused = 0
        self.problem = "connecting to the log"
        self._nc = None
        self._task: asyncio.Task | None = None
        self.registry = CollectorRegistry()
        self.ack_seconds = Histogram(
            "lenshouse_gateway_ack_seconds",
            "From a complete request body to its acknowledgement.",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_GatewayCollector(self))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        """Until the log is reachable and its partitions exist (loaders create
        them from the ClickHouse cluster's layout)."""
        while True:
            try:
                if self._nc is None:
                    self._nc = await connect(self.servers, self.name)
                js = self._nc.jetstream()
                partitions = await discover(js, self.prefix)
                if partitions is not None:
                    self.publisher = Publisher(js, LogLayout(self.prefix, partitions))
                    self.problem = ""
                    log.info("publishing to %d partitions of %s", partitions, self.prefix)
                    return
                self.problem = f"the log {self.prefix} has no partitions yet (no loader started)"
            except Exception as e:
                self.problem = f"log not reachable: {type(e).__name__} {e}"
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._nc is not None:
            await self._nc.close()
        if self.zk is not None:
            self.zk.stop()
            self.zk.close()

    async def write(self, batch: PointBatch, batch_id: str | None, body: bytes) -> dict[str, str]:
        if self.publisher is None:
            raise Unavailable(f"gateway not ready: {self.problem}")
        if len(batch) == 0:
            return {}
        t0 = time.perf_counter()
        try:
            dups = await self.publisher.publish(batch, batch_key(batch.tenant, batch_id, body))
        except LogFull as e:
            self.batches_refused += 1
            raise Unavailable(str(e)) from None
        except LogUnavailable as e:
            self.batches_refused += 1
            raise Unavailable(str(e)) from None
        self.ack_seconds.observe(time.perf_counter() - t0)
        self.points_accepted += len(batch)
        self.batches_accepted += 1
        return {"X-Lenshouse-Duplicate-Parts": str(dups)} if dups else {}

    async def erase(self, erasure: Erasure, batch_id: str | None) -> tuple[dict, bool]:
        """Publish a delete once the storage has said it can apply it; the
        loaders apply it in log order (202: accepted, not yet applied)."""
        if self.publisher is None:
            raise Unavailable(f"gateway not ready: {self.problem}")
        await self._check_deletes()
        key = f"{erasure.tenant}/erase/{batch_id or uuid.uuid4().hex}"
        try:
            await self.publisher.publish_erasure(erasure, key)
        except (LogFull, LogUnavailable) as e:
            raise Unavailable(str(e)) from None
        return {"applied": False}, False

    async def _check_deletes(self) -> None:
        if self.zk is None:
            raise Unavailable("deletes need the keeper: this gateway was started without one")
        path = Paths(self.database).storage
        try:
            raw, _ = await asyncio.to_thread(self.zk.get, path)
        except NoNodeError:
            raise Unavailable("no loader has said yet what the storage can do") from None
        except KazooException as e:
            raise Unavailable(f"keeper unavailable: {e!r}") from None
        doc = json.loads(raw)
        if not doc.get("deletes"):
            raise NotSupported(
                f"this cluster's ClickHouse ({doc.get('server_version')}) cannot delete rows of"
                " replicated tables reliably; deletes need ClickHouse 23.3 or later"
            )

    def health(self) -> tuple[dict, bool]:
        connected = self._nc is not None and self._nc.is_connected
        ok = self.publisher is not None and connected
        doc = {
            "status": "ok" if ok else "unavailable",
            "role": "gateway",
            **({"keeper_connected": self.zk.connected} if self.zk is not None else {}),
            **({"error": self.problem or "not connected to the log"} if not ok else {}),
            "log": self.prefix,
            "partitions": self.publisher.layout.partitions if self.publisher else None,
            "points_accepted": self.points_accepted,
            "batches_accepted": self.batches_accepted,
            "batches_refused": self.batches_refused,
        }
        return doc, ok


class _GatewayCollector:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self):
        gw, pub = self.gw, self.gw.publisher
        yield CounterMetricFamily(
            "lenshouse_points_accepted", "Points acknowledged by /v1/write.", gw.points_accepted
        )
        yield CounterMetricFamily(
            "lenshouse_batches_accepted", "Batches acknowledged.", gw.batches_accepted
        )
        yield CounterMetricFamily(
            "lenshouse_batches_refused",
            "Batches answered 503 (log unavailable or full).",
            gw.batches_refused,
        )
        yield CounterMetricFamily(
            "lenshouse_log_messages_published",
            "Messages stored by the log.",
            pub.published if pub else 0,
        )
        yield CounterMetricFamily(
            "lenshouse_log_messages_duplicate",
            "Messages the log already had (a producer's retry).",
            pub.duplicates if pub else 0,
        )
        yield CounterMetricFamily(
            "lenshouse_log_publish_retries", "Publishes retried.", pub.retries if pub else 0
        )
        yield CounterMetricFamily(
            "lenshouse_log_refused_full",
            "Publishes refused because the log held its byte budget (backpressure).",
            pub.refused_full if pub else 0,
        )
        yield GaugeMetricFamily(
            "lenshouse_gateway_ready", "1 when the gateway can publish.", int(pub is not None)
        )


def create_gateway_app(
    gateway: Gateway, auth: Auth | None = None, quotas: Quotas | None = None
) -> FastAPI:
    app = base_app(gateway.registry, auth, quotas)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await gateway.start()
        yield
        await gateway.stop()

    app.router.lifespan_context = lifespan
    app.state.gateway = gateway
    add_write_routes(app, gateway)
    if gateway.zk is not None:  # remote write: series ids claimed in the keeper
        ids = KeeperSeriesIds(gateway.zk, Paths(gateway.database).root)
        add_remote_write_route(app, gateway, ids, gateway.registry)
    add_health_route(app, gateway.health)
    return app
