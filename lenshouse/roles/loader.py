"""The loader role: owns log partitions (leases in the keeper) and loads each
into its ClickHouse shard with the same loader as the embedded store.

Per owned partition a :class:`PartitionWorker` raises the partition's fence,
replays the load in doubt from the log (same records, seq and tokens, so
ClickHouse drops whatever of it landed), then follows the stream. Each load's
rows are announced on NATS as soon as its intent is on record (before its
inserts), for the lens servers' heads (:mod:`lenshouse.stream.loaded`). Its
progress lives in the keeper, its records in the log: a loader on another
host continues exactly where this one stopped. Nothing is kept on local disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lenshouse.api.app import add_health_route, base_app
from lenshouse.coordination.ownership import Ownership
from lenshouse.coordination.progress import PartitionProgress
from lenshouse.coordination.zk import Paths, ensure_layout
from lenshouse.coordination.zk import connect as zk_connect
from lenshouse.ingest.loader import Loader
from lenshouse.lens.visibility import Visibility
from lenshouse.retention.horizons import Horizons
from lenshouse.storage.replicated.store import ClusterStore
from lenshouse.stream import jetstream
from lenshouse.stream.jetstream import LoopThread, PartitionStream
from lenshouse.stream.loaded import Announcer
from lenshouse.stream.partitions import LogLayout

log = logging.getLogger(__name__)

MAX_QUEUED_ROWS = 8_000_000  # read ahead of loading at most this many points per partition


class PartitionWorker:
    """One owned partition. Ownership: ``start`` runs on its own thread
    (recovery may wait for storage); the loader's threads own the loader;
    the feeder thread only submits records."""

    def __init__(
        self,
        partition: int,
        role: LoaderRole,
    ) -> None:
        self.partition = partition
        self.role = role
        self.loader: Loader | None = None
        self.progress: PartitionProgress | None = None
        self.error: str | None = None
        self.stream: PartitionStream | None = None
        self._stopped = threading.Event()
        self._feeder: threading.Thread | None = None
        self._thread = threading.Thread(target=self._start, name=f"p{partition}-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        role = self.role
        try:
            self.progress = PartitionProgress(role.zk, role.paths, self.partition, role.member)
            stream = PartitionStream(role.loop, role.nc, role.js, role.layout, self.partition)
            self.stream = stream
            loader = Loader(
                stream,
                role.store,
                None,
                Visibility(),
                flush_interval=role.flush_interval,
                progress=self.progress,
            )
            loader.raw_mark = role.horizons.raw_mark
            progress = self.progress
            loader.on_intent.append(
                lambda seq, rows: role.announcer.announce(
                    self.partition, seq, progress.last_completed(), rows, loader.lag_seconds()
                )
            )
            self.loader = loader
            loader.recover()  # the load in doubt, exactly as first attempted
            if self._stopped.is_set():
                return
            loader.start()
            self._feeder = threading.Thread(
                target=stream.follow,
                args=(loader.state.next_lsn, loader.submit, self._stopped, self._backpressure),
                name=f"p{self.partition}-feed",
                daemon=True,
            )
            self._feeder.start()
            log.info(
                "partition %d: fence %d, loading from record %d",
                self.partition,
                self.progress.fence,
                loader.state.next_lsn,
            )
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log.warning("partition %d not started: %s", self.partition, self.error)

    def _backpressure(self) -> None:
        loader = self.loader
        for _ in range(600):  # bounded: re-checks stop every 0.1 s
            if loader is None or self._stopped.is_set():
                return
            if loader.stats.queued_rows < MAX_QUEUED_ROWS:
                return
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        if self._thread.is_alive():
            return True  # still starting
        loader = self.loader
        if self.error or loader is None or loader.fenced or loader.failure:
            return False
        return loader.running

    def stop(self) -> None:
        """Stop at once (a load in doubt is the next owner's to replay); a
        recovery waiting for storage is interrupted too."""
        self._stopped.set()
        if self.loader is not None:
            self.loader.stop(drain=False)
        self._thread.join(60)
        if self.loader is not None:
            self.loader.stop(drain=False)  # in case it started meanwhile
        if self._feeder is not None:
            self._feeder.join(10)

    def records_behind(self) -> int | None:
        """Records the log holds for this partition that are not loaded yet."""
        if self.loader is None or self.stream is None:
            return None
        try:
            return max(0, self.stream.last_lsn() - self.loader.state.next_lsn + 1)
        except Exception:
            return None


class LoaderRole:
    """Ownership: the ownership thread starts and stops workers; the HTTP
    threads only read their counters."""

    def __init__(
        self,
        nats: list[str],
        keeper: list[str],
        store: ClusterStore,
        prefix: str = "LH",
        log_replicas: int = 3,
        log_budget: int = jetstream.DEFAULT_BUDGET_BYTES,
        member: str | None = None,
        flush_interval: float = 1.0,
    ) -> None:
        self.member = member or f"loader-{uuid.uuid4().hex[:8]}"
        self.flush_interval = flush_interval
        self.paths = Paths(store.conn.database)
        self.zk = zk_connect(keeper)
        ensure_layout(self.zk, self.paths)
        self.store = store
        with self.zk.Lock(f"{self.paths.root}/schema-lock", self.member):
            self.store.open()  # one loader at a time creates the tables ON CLUSTER
            self._publish_storage()
        self.layout = LogLayout(prefix, len(self.store.conn.shards))
        self.horizons = Horizons(self.store)  # points below a raw mark are not stored
        self.loop = LoopThread()
        self.nc = self.loop.run(jetstream.connect(nats, self.member))
        self.js = self.nc.jetstream()
        self.announcer = Announcer(self.loop, self.nc, self.layout)  # for the lens servers' heads
        self._ensure_streams(log_replicas, log_budget)
        self.ownership = Ownership(
            self.zk, self.paths, self.layout.partitions, self.member, self._worker
        )
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_LoaderCollector(self))

    def _ensure_streams(self, replicas: int, budget: int, wait: float = 60.0) -> None:
        """Create the partition streams; a log just started may need a few
        seconds before it takes requests."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.loop.run(jetstream.ensure_streams(self.js, self.layout, replicas, budget), 30)
                return
            except ValueError:
                raise
            except Exception as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the log did not create its streams: {e!r}") from e
                log.info("log not ready (%r); retrying", e)
                time.sleep(1.0)

    def _publish_storage(self) -> None:
        """Tell gateways what this storage can do (they refuse what it cannot)."""
        doc = json.dumps(
            {"server_version": self.store.conn.version, "deletes": self.store.can_erase}
        ).encode()
        if self.zk.exists(self.paths.storage):
            self.zk.set(self.paths.storage, doc)
        else:
            self.zk.create(self.paths.storage, doc, makepath=True)

    def _worker(self, partition: int) -> PartitionWorker:
        return PartitionWorker(partition, self)

    def start(self) -> LoaderRole:
        self._thread = threading.Thread(
            target=self.ownership.run, args=(self._stopped,), name="ownership", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(120)
        self.loop.run(self.nc.close(), 10)
        self.loop.close()
        self.zk.stop()
        self.zk.close()
        self.store.close()

    def partitions(self) -> list[dict]:
        out = []
        for p, w in sorted(self.ownership.workers.items()):
            ld = w.loader
            out.append(
                {
                    "partition": p,
                    "fence": w.progress.fence if w.progress else None,
                    "next_lsn": ld.state.next_lsn if ld else None,
                    "lag_seconds": round(ld.lag_seconds(), 3) if ld else None,
                    "queued_points": ld.stats.queued_rows if ld else None,
                    "records_behind": w.records_behind(),
                    "loads": ld.stats.loads if ld else 0,
                    "points_loaded": ld.stats.rows_loaded if ld else 0,
                    "insert_errors": ld.stats.insert_errors if ld else 0,
                    "deletes_refused": ld.stats.erasures_refused if ld else 0,
                    "error": w.error or (ld.failure if ld else None),
                }
            )
        return out

    def health(self) -> tuple[dict, bool]:
        parts = self.partitions()
        failed = [p for p in parts if p["error"]]
        ok = self.zk.connected and self.nc.is_connected and not failed
        doc = {
            "status": "ok" if ok else "unavailable",
            "role": "loader",
            "member": self.member,
            "keeper_connected": self.zk.connected,
            "log_connected": self.nc.is_connected,
            "partitions": parts,
            **self.store.health(),
        }
        if failed:
            doc["error"] = "; ".join(f"partition {p['partition']}: {p['error']}" for p in failed)
        return doc, ok


class _LoaderCollector:
    def __init__(self, role: LoaderRole) -> None:
        self.role = role

    def collect(self):
        parts = self.role.partitions()
        owned = GaugeMetricFamily(
            "lenshouse_partition_owned",
            "1 for each log partition this loader owns.",
            labels=["partition"],
        )
        lag = GaugeMetricFamily(
            "lenshouse_log_lag_seconds",
            "Age of the oldest record read from the log, not yet loaded.",
            labels=["partition"],
        )
        behind = GaugeMetricFamily(
            "lenshouse_log_behind_records",
            "Records the log holds for the partition that are not loaded yet.",
            labels=["partition"],
        )
        queued = GaugeMetricFamily(
            "lenshouse_log_queued_points",
            "Points read from the log, not yet loaded.",
            labels=["partition"],
        )
        loads = CounterMetricFamily("lenshouse_loads", "Loads completed.", labels=["partition"])
        points = CounterMetricFamily(
            "lenshouse_points_loaded", "Points loaded into ClickHouse.", labels=["partition"]
        )
        retries = CounterMetricFamily(
            "lenshouse_insert_errors", "Failed storage calls (retried).", labels=["partition"]
        )
        for p in parts:
            key = [str(p["partition"])]
            owned.add_metric(key, 1)
            lag.add_metric(key, p["lag_seconds"] or 0.0)
            queued.add_metric(key, p["queued_points"] or 0)
            behind.add_metric(key, p["records_behind"] or 0)
            loads.add_metric(key, p["loads"])
            points.add_metric(key, p["points_loaded"])
            retries.add_metric(key, p["insert_errors"])
        yield from (owned, lag, behind, queued, loads, points, retries)
        yield CounterMetricFamily(
            "lenshouse_partition_takeovers", "Partitions taken.", self.role.ownership.takeovers
        )


def create_loader_app(role: LoaderRole) -> FastAPI:
    app = base_app(role.registry)
    app.state.loader = role
    add_health_route(app, role.health)
    return app
