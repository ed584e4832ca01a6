"""The cluster store: lenshouse's tables sharded and replicated by ClickHouse.

Writes. A load's rows are split by the shard that owns each (tenant, sensor)
(:mod:`~lenshouse.storage.replicated.sharding`, the ``Distributed`` tables'
own key) and inserted into that shard's ``*_local`` table on one of its
replicas. Each insert is deduplicated by ClickHouse: by its token where the
server has ``insert_deduplication_token``, else by the hash of its blocks; a
retried load sends the very same rows in the same order, so either way the
retry is dropped, in raw and in every tier its views feed. A replicated
table commits a block's id in the keeper in the same transaction as the part,
so unlike a single server's MergeTree no crash leaves an id without its rows
(``atomic_dedup``): a load in doubt needs no reconciling.

Reads see every completed load on every replica. Inserts wait for
``insert_quorum`` replicas (all of a shard's, by default) before they count
as done, so a load completes only once each replica of its shards holds it,
and a read from any replica (a ``Distributed`` query picks one per shard,
skipping those that do not answer) sees it. A quorum insert whose outcome
was unknown (a timeout) is re-sent, and then each replica is synced before
the load completes. The price: while a replica is down, loads to its shard
wait (the log keeps acknowledging writes); with three replicas per shard a
quorum of two keeps loading through one loss.

A read that fails for a reason a retry can outlive (a replica that went
silent, a connection reset) is read again, from the same snapshot, for up to
``READ_PATIENCE_S``: ClickHouse counts the replica's error and the next read
prefers its sibling. Then a read that finds no live replica of some shard
raises :class:`~lenshouse.storage.errors.ShardUnavailable` naming them:
never a silently partial answer (``skip_unavailable_shards`` stays off).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lenshouse.rollup.cells import FIRST
from lenshouse.rollup.tiers import DAY_MS, TIERS, Tier
from lenshouse.storage import queries
from lenshouse.storage.backend import Settings
from lenshouse.storage.errors import FatalError, RetryableError, ShardUnavailable, StorageError
from lenshouse.storage.replicated import pinned, schema
from lenshouse.storage.replicated.connection import ClusterConnection, Shard
from lenshouse.storage.replicated.dialect import Dialect
from lenshouse.storage.replicated.sharding import shard_of
from lenshouse.storage.schema import Upgrade
from lenshouse.storage.store import SqlStore, check_token

log = logging.getLogger(__name__)

QUORUM_TIMEOUT_MS = 30_000
DDL_TIMEOUT_S = 120
READ_PATIENCE_S = 25.0  # a failed read is tried again until this much time has passed
READ_TRIES = 4
MUTATION_WAIT_S = 30.0


class ClusterStore(SqlStore):
    """Ownership: inserts come from the loader's one store thread at a time,
    which fans each out to ``_pool`` (a thread per shard, each on its shard's
    own connection); ``_doubt_lock`` guards ``_in_doubt``. Reads come from
    any thread, each on a pooled connection."""

    name = "clickhouse-cluster"
    atomic_dedup = True
    # 18.16's index analysis took minutes on a dedup read of ~1500 ranges;
    # fewer, wider ranges read a few more rows instead.
    max_conditions = 32
    tier_tables = schema.TIER_TABLES

    def __init__(self, conn: ClusterConnection, insert_quorum: int | None = None) -> None:
        super().__init__(conn)
        self.conn = conn
        self.dialect = Dialect.parse(conn.version)
        smallest = min(len(s.replicas) for s in conn.shards)
        self.quorum = smallest if insert_quorum is None else insert_quorum
        if not 1 <= self.quorum <= smallest:
            raise StorageError(
                f"insert quorum {self.quorum}: the smallest shard has {smallest} replicas"
            )
        self._in_doubt: set[str] = set()  # tokens of inserts that failed once
        self._doubt_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(len(conn.shards), thread_name_prefix="shard-insert")
        # Lens reads of single shards, run side by side.
        self._reads = ThreadPoolExecutor(8 * len(conn.shards), thread_name_prefix="shard-read")

    @classmethod
    def connect(
        cls, seeds: list[str], cluster: str, database: str = "default", **kw
    ) -> ClusterStore:
        quorum = kw.pop("insert_quorum", None)
        return cls(ClusterConnection(seeds, cluster, database, **kw), insert_quorum=quorum)

    # -- schema -------------------------------------------------------------
    def open(self) -> Upgrade:
        """Create what the cluster lacks (``ON CLUSTER``: every node at once)."""
        names = set(self.backend.query(queries.TABLES).column("name").to_pylist())
        if f"{TIERS[1].table}_local" in names:
            raise FatalError(
                f"{self.conn.database} keeps a table per rollup tier: this cluster's schema"
                f" predates {queries.SHARED_TABLE}; create the cluster's database anew"
                " (or export and re-ingest)"
            )
        if schema.tables() - names:
            for sql in schema.statements(self.dialect, self.conn.cluster, self.conn.database):
                self.backend.execute(sql, {"distributed_ddl_task_timeout": DDL_TIMEOUT_S})
        self._check_m4()
        return Upgrade()

    def _check_m4(self) -> None:
        """A cluster made before the tiers kept M4 points is not upgraded in
        place: its views would have to be replaced on every shard while loads
        run. Say so rather than fail every load."""
        first = f"{FIRST.table}_local"
        have = self.backend.query(
            "SELECT name FROM system.columns WHERE database ="
            f" {queries.string_literal(self.conn.database)} AND table = '{first}'"
        )
        if "m4_first" not in have.column("name").to_pylist():
            raise FatalError(
                f"{self.conn.database}.{first} has no M4 columns: this cluster's schema predates"
                " them; create the cluster's database anew (or export and re-ingest)"
            )

    def finish_upgrade(self, upgrade: Upgrade) -> None:
        return None  # the cluster schema has no older versions to upgrade

    # -- inserts --------------------------------------------------------------
    def insert_raw(self, rows: pa.Table, token: str) -> None:
        self._insert_sharded("raw_local", rows, token)

    def insert_cells(self, cells: pa.Table, seq: int, token: str) -> None:
        # Every tier row carries its load's seq (see schema).
        cells = cells.append_column("seq", pa.array(np.full(cells.num_rows, seq, np.uint64)))
        self._insert_sharded(f"{FIRST.table}_local", cells, token)

    def insert_sensors(self, rows: pa.Table, token: str) -> None:
        self._insert_sharded("sensors_local", rows, token)

    def put_sensors(self, rows: pa.Table) -> None:
        self._insert_sharded("sensors_local", rows, None)

    def attach(self, table: Tier | None, rows: pa.Table) -> None:
        raise NotImplementedError("replicated deduplication is atomic: nothing to repair")

    def _insert_sharded(self, table: str, rows: pa.Table, token: str | None) -> None:
        """Each shard's rows to that shard, the shards in parallel (a quorum
        insert spends most of its time waiting for the other replica)."""
        if token is not None:
            check_token(token)
        parts = self._split(rows)
        if len(parts) == 1:
            self._insert_part(table, *parts[0], token)
            return
        futures = [self._pool.submit(self._insert_part, table, s, p, token) for s, p in parts]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e

    def _insert_part(self, table: str, shard: Shard, part: pa.Table, token: str | None) -> None:
        key = None if token is None else f"{token}-s{shard.number}"
        try:
            self.conn.insert_shard(shard.number, table, part, self._insert_settings(key))
        except StorageError:
            if key is not None:
                with self._doubt_lock:
                    self._in_doubt.add(key)
            raise
        with self._doubt_lock:
            doubted = key in self._in_doubt
        if doubted:
            # The first attempt's outcome was unknown: it may have been
            # dropped as a duplicate without waiting for its quorum.
            self._sync_replicas(shard, table)
            with self._doubt_lock:
                self._in_doubt.discard(key)

    def _split(self, rows: pa.Table) -> list[tuple[Shard, pa.Table]]:
        """``rows`` by owning shard, each part in the rows' own order."""
        shards = self.conn.shards
        if len(shards) == 1:
            return [(shards[0], rows)] if rows.num_rows else []
        tenant = rows.column("tenant").combine_chunks()
        if not pa.types.is_dictionary(tenant.type):
            tenant = pc.dictionary_encode(tenant)
        codes = tenant.indices.to_numpy(zero_copy_only=False)
        sensor = rows.column("sensor").to_numpy()
        owner = np.empty(rows.num_rows, np.int64)
        for code, name in enumerate(tenant.dictionary.to_pylist()):
            mine = codes == code
            owner[mine] = shard_of(name, sensor[mine], len(shards))
        if rows.num_rows and (owner == owner[0]).all():
            # A log partition's loads usually belong to one shard: no copy.
            return [(shards[int(owner[0])], rows)]
        out = []
        for k, shard in enumerate(shards):
            mask = owner == k
            if mask.any():
                out.append((shard, rows.filter(pa.array(mask))))
        return out

    def _insert_settings(self, token: str | None) -> Settings:
        wanted: dict[str, int | str] = {"insert_deduplicate": 1}
        if self.quorum > 1:
            wanted |= {"insert_quorum": self.quorum, "insert_quorum_timeout": QUORUM_TIMEOUT_MS}
        if token is not None:
            wanted |= {
                "insert_deduplication_token": token,
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            }
        return self.dialect.settings(wanted)

    def _sync_replicas(self, shard: Shard, table: str) -> None:
        if self.quorum == 1:
            return  # reads may lag by design
        tables = [table]
        if table == f"{FIRST.table}_local":  # and what its view feeds
            tables.append(f"{queries.SHARED_TABLE}_local")
        for address in shard.replicas:
            for t in tables:
                self.conn.query_replica(
                    address, f"SYSTEM SYNC REPLICA {self.conn.database}.{queries.identifier(t)}"
                )

    # -- reads ------------------------------------------------------------------
    def lens_rows(
        self,
        tenant: str,
        step: int,
        groups,
        max_seq: int | None,
        hidden: tuple[int, ...] = (),
        origin: int = 0,
        m4: bool = False,
    ) -> pa.Table:
        return self._read(lambda: super(ClusterStore, self).lens_rows(
            tenant, step, groups, max_seq, hidden, origin, m4))  # fmt: skip

    def pinned_lens_rows(
        self,
        tenant: str,
        step: int,
        groups,
        floors: tuple[int, ...],
        origin: int = 0,
        m4: bool = False,
    ) -> pa.Table:
        """A lens's rows as of the loads up to each shard's floor (``floors[k]``
        for the k-th shard; see :mod:`~lenshouse.storage.replicated.pinned`),
        read only from the shards that hold its sensors, in parallel. A shard
        none of whose replicas answers fails the lens naming it; lenses of the
        other shards' sensors do not notice."""
        by_shard: dict[int, list] = {}
        for ids, segs in groups:
            for k, mine in self._by_shard(tenant, ids).items():
                by_shard.setdefault(k, []).append((mine, segs))
        with self._lens_running() as busy:
            settings = self.lens_settings(busy, False)
            jobs = [
                self._reads.submit(
                    self._pinned_shard, k, tenant, step, g, floors[k], origin, m4, settings
                )
                for k, g in by_shard.items()
                if floors[k] >= 0  # no load has completed there yet
            ]
            parts = [j.result() for j in jobs]
        return pinned.fold(parts, m4)

    def _by_shard(self, tenant: str, sensors) -> dict[int, list[int]]:
        """``sensors`` by the shard (0-based) that holds them."""
        ids = [int(s) for s in sensors]
        n = len(self.conn.shards)
        owner = shard_of(tenant, np.asarray(ids, np.uint32), n) if n > 1 else [0] * len(ids)
        out: dict[int, list[int]] = {}
        for sensor, k in zip(ids, owner):
            out.setdefault(int(k), []).append(sensor)
        return out

    def _pinned_shard(
        self, k: int, tenant: str, step: int, groups, floor: int, origin: int, m4: bool, settings
    ) -> pa.Table:
        shard = self.conn.shards[k]

        def run(sql: str) -> pa.Table:
            return self.conn.query_shard(shard.number, sql, settings)

        at = self.tier_tables
        return self._read(
            lambda: pinned.read(run, tenant, step, groups, floor, origin, m4, at), shard=shard
        )

    def newest_loaded(self, k: int, floor: int, since: int) -> int | None:
        """The newest point at or after ``since`` of the loads up to ``floor``
        on the k-th shard (0-based); None if there is none."""
        shard = self.conn.shards[k]
        sql = pinned.newest_sql(self.conn.database, floor, since)
        rows = self._read(partial(self.conn.query_shard, shard.number, sql), shard)
        return int(rows.column("newest")[0].as_py()) if rows.column("n")[0].as_py() else None

    def points_about(self, tenant: str, sensors: list[int], start: int, end: int) -> int:
        """From the shards that hold ``sensors`` only (as lenses read)."""
        total = 0
        for k, ids in self._by_shard(tenant, sensors).items():
            shard = self.conn.shards[k]
            sql = queries.points_about(
                TIERS[-1], tenant, ids, start, end, "_local", self.tier_tables
            )
            rows = self._read(partial(self.conn.query_shard, shard.number, sql), shard)
            total += int(rows.column("n")[0].as_py() or 0)
        return total

    def export_rows(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        max_seq: int,
        limit: int,
        hidden: tuple[int, ...] = (),
        after: tuple[int, int] | None = None,
    ) -> pa.Table:
        return self._read(lambda: super(ClusterStore, self).export_rows(
            tenant, sensors, start, end, max_seq, limit, hidden, after))  # fmt: skip

    def pinned_export_rows(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        floors: tuple[int, ...],
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> pa.Table:
        """Raw points of the loads up to each shard's floor, from the shards
        that hold ``sensors`` only, in (sensor, ts) order, at most ``limit``."""
        jobs = []
        for k, ids in self._by_shard(tenant, sensors).items():
            if floors[k] < 0:
                continue
            shard = self.conn.shards[k]
            sql = queries.export(tenant, ids, start, end, floors[k], limit, (), after, "raw_local")
            run = partial(self.conn.query_shard, shard.number, sql)
            jobs.append(self._reads.submit(self._read, run, shard))
        parts = [j.result() for j in jobs]
        if not parts:
            return pa.table({
                "sensor": pa.array([], pa.uint32()), "ts": pa.array([], pa.int64()),
                "value": pa.array([], pa.float64()),
            })  # fmt: skip
        rows = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return rows.sort_by([("sensor", "ascending"), ("ts", "ascending")]).slice(0, limit)

    def _read(self, run, shard: Shard | None = None):
        """``run()``, tried again while it fails retryably, within the patience
        (``shard``: a read of that shard alone)."""
        deadline = time.monotonic() + READ_PATIENCE_S
        for attempt in range(1, READ_TRIES + 1):
            try:
                return run()
            except RetryableError as e:
                if attempt == READ_TRIES or time.monotonic() > deadline:
                    raise self._unavailable(e, shard) from None
                log.info("read failed (%s); reading again", str(e).splitlines()[0][:200])
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    def lens_settings(self, busy: bool, raw_in_order: bool) -> Settings:
        settings = dict(super().lens_settings(busy, raw_in_order))
        settings["skip_unavailable_shards"] = 0
        return self.dialect.settings(settings)

    def _unavailable(self, error: RetryableError, shard: Shard | None = None) -> RetryableError:
        """Name the shards none of whose replicas answers, if that is why."""
        asked = self.conn.shards if shard is None else [shard]
        down = [s.name for s in asked if not any(self._alive(a) for a in s.replicas)]
        return ShardUnavailable(down, str(error).splitlines()[0]) if down else error

    def _alive(self, address: str) -> bool:
        try:
            self.conn.query_replica(address, "SELECT 1")
            return True
        except StorageError:
            return False

    # -- retention ---------------------------------------------------------------
    # Policies and expiry marks: a whole copy on every shard, so that reading
    # them needs any one shard (a lens must know the marks while a shard is away).
    def retention_rows(self) -> pa.Table:
        return self._read(lambda: self.backend.query(queries.RETENTION, self._any_copy()))

    def expiry_marks(self) -> pa.Table:
        return self._read(lambda: self.backend.query(queries.EXPIRY, self._any_copy()))

    def _any_copy(self) -> Settings:
        return self.dialect.settings({"skip_unavailable_shards": 1})

    def put_retention(self, rows: pa.Table) -> None:
        self._to_every_shard("retention_local", rows)

    def put_expiry(self, rows: pa.Table) -> None:
        self._to_every_shard("expiry_local", rows)

    def _to_every_shard(self, table: str, rows: pa.Table) -> None:
        for shard in self.conn.shards:
            self.conn.insert_shard(shard.number, table, rows, self._insert_settings(None))

    def _local(self, tier: Tier | None) -> str:
        return f"{queries.source_table(tier, self.tier_tables)}_local"

    def partition_ms(self, tier: Tier | None) -> int:
        return DAY_MS  # every table's partitions are days (see schema)

    def partitions(self, tier: Tier | None) -> pa.Table:
        """Each shard's partitions (as one replica of it holds them), summed."""
        sql = queries.partitions(self._local(tier), self.conn.database)
        sizes: dict[str, tuple[int, int]] = {}
        for shard in self.conn.shards:
            for address in shard.replicas:
                try:
                    rows = self.conn.query_replica(address, sql)
                except StorageError:
                    continue
                for partition, size, n in rows:
                    b, r = sizes.get(partition, (0, 0))
                    sizes[partition] = (b + int(size), r + int(n))
                break
            else:
                raise ShardUnavailable([shard.name], "no replica listed its partitions")
        names = sorted(sizes)
        return pa.table({
            "partition": pa.array(names, pa.string()),
            "bytes": pa.array([sizes[p][0] for p in names], pa.uint64()),
            "rows": pa.array([sizes[p][1] for p in names], pa.uint64()),
        })  # fmt: skip

    def _on_each_shard(self, sql: str) -> None:
        """``sql`` on one live replica of every shard, which replicates it to
        the others. Not ``ON CLUSTER``: the distributed DDL queue runs one task
        at a time per server, and a slow ALTER there holds up every CREATE."""
        for shard in self.conn.shards:
            for address in shard.replicas:
                try:
                    self.conn.query_replica(address, sql)
                    break
                except RetryableError:
                    continue
            else:
                raise ShardUnavailable([shard.name], "no replica took the change")

    def drop_partition(self, tier: Tier | None, partition: int) -> None:
        table = f"{self.conn.database}.{self._local(tier)}"
        self._on_each_shard(queries.drop_partition(table, partition))

    def delete_range(self, tier: Tier | None, tenant: str, lo: int, hi: int) -> bool:
        """A mutation on every shard, waited for on every replica for a while.
        Not on 18.16: it does not mutate the last part a quorum insert made in
        a partition until another part arrives there, so the delete would only
        queue (False). Nobody reads below an expiry mark, so the rows left are
        never seen; the partition goes once every tenant has expired it."""
        if not self.dialect.modern:
            return False
        local = self._local(tier)
        self._on_each_shard(
            queries.delete_range(
                f"{self.conn.database}.{local}", tier, tenant, lo, hi, at=self.tier_tables
            )
        )
        check = queries.mutations_running(local, self.conn.database)
        deadline = time.monotonic() + MUTATION_WAIT_S
        for shard in self.conn.shards:
            for address in shard.replicas:
                while int(self.conn.query_replica(address, check)[0][0]):
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.2)
        return True

    @property
    def can_erase(self) -> bool:
        """Lightweight deletes of replicated tables (ClickHouse 23.3 on). 18.16
        has only mutations, which stall behind a quorum insert's last part
        (see ``delete_range``): a delete would be acknowledged and not done."""
        return self.dialect.modern

    def erase(self, tenant: str, sensors: list[int], start: int, end: int, seq: int) -> None:
        if not self.can_erase:
            raise FatalError(f"ClickHouse {self.conn.version} cannot delete rows of a cluster")
        super().erase(tenant, sensors, start, end, seq)

    def _erase_rows(self, tier: Tier | None, tenant: str, sensors: list[int], lo: int, hi: int):
        """On one replica of each shard; a lightweight delete returns once
        every replica has applied it (``lightweight_deletes_sync`` 2)."""
        table = f"{self.conn.database}.{self._local(tier)}"
        self._on_each_shard(queries.erase(table, tier, tenant, sensors, lo, hi, self.tier_tables))

    def _erased(self, tables: list[str]) -> None:
        return None  # each delete returned once applied

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._reads.shutdown(wait=True)
        super().close()

    def health(self) -> dict:
        return {
            "storage": self.name,
            "server_version": self.conn.version,
            "cluster": self.conn.cluster,
            "insert_quorum": self.quorum,
            "shards": [{"shard": s.number, "replicas": list(s.replicas)} for s in self.conn.shards],
        }
