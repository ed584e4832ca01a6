"""The storage seam: what ingest, deduplication, reconciling, lenses and the
catalog ask of storage, in their own terms.

Two stores implement it: :class:`EmbeddedStore` (chDB inside this process,
one data directory) and :class:`~lenshouse.storage.replicated.store.ClusterStore`
(a sharded, replicated ClickHouse cluster over the native protocol). Callers
hand over Arrow tables, (sensor, cell) pairs and sequence numbers; SQL, table
names and server settings stay behind this interface.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from lenshouse.rollup import m4
from lenshouse.rollup.cells import FIRST
from lenshouse.rollup.tiers import DAY_MS, TIERS, Tier
from lenshouse.storage import queries, tiering
from lenshouse.storage.attach import attach_rows
from lenshouse.storage.backend import Backend, Settings
from lenshouse.storage.errors import RetryableError
from lenshouse.storage.schema import Upgrade, create_schema

Pairs = Iterable[tuple[int, int]]
ERASE_WAIT_S = 300.0  # then the loader retries the whole delete
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")


class Store(Protocol):
    name: str
    # True where ClickHouse itself makes a retried insert whole (replicated
    # tables commit a block's id in the keeper with its part): no reconciling.
    atomic_dedup: bool

    def open(self) -> Upgrade:
        """Create what the schema lacks; what waits for the log's replay."""

    def finish_upgrade(self, upgrade: Upgrade) -> None: ...

    # -- one load ---------------------------------------------------------
    def insert_raw(self, rows: pa.Table, token: str) -> None: ...
    def insert_cells(self, cells: pa.Table, seq: int, token: str) -> None:
        """The first tier's cells of load ``seq``."""

    def insert_sensors(self, rows: pa.Table, token: str) -> None: ...
    def attach(self, table: Tier | None, rows: pa.Table) -> None:
        """Add rows to raw (None) or a tier without feeding its views (repairs)."""

    # -- reads for ingest ---------------------------------------------------
    def tiers_present(self) -> list[Tier]: ...
    def extents(self) -> pa.Table:
        """(tenant, sensor, lo, hi): a superset of each sensor's stored time range."""

    def seen_keys(self, tenant: str, pairs: Pairs, unit_ms: int, below_seq: int) -> pa.Table: ...
    def stored_values(self, tenant: str, pairs: Pairs, unit_ms: int, max_seq: int) -> pa.Table: ...
    def load_keys(self, tenant: str, seq: int, pairs: Pairs, unit_ms: int) -> pa.Table: ...
    def folded(self, tier: Tier | None, tenant: str, r: int, pairs: Pairs) -> pa.Table: ...
    def newest_ts(self) -> int | None: ...
    def known_sensors(self) -> set[tuple[str, int]]: ...

    # -- catalog and reads for lenses --------------------------------------
    def put_sensors(self, rows: pa.Table) -> None: ...
    def sensors_of(self, tenant: str) -> pa.Table: ...
    def lens_rows(
        self,
        tenant: str,
        step: int,
        groups,
        max_seq: int | None,
        hidden: tuple[int, ...] = (),
        origin: int = 0,
        m4: bool = False,
    ) -> pa.Table: ...
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
    ) -> pa.Table: ...
    def pinned_lens_rows(
        self,
        tenant: str,
        step: int,
        groups,
        floors: tuple[int, ...],
        origin: int = 0,
        m4: bool = False,
    ) -> pa.Table:
        """As ``lens_rows``, of exactly the loads up to each shard's floor
        (stores whose shards complete their loads in seq order: the cluster)."""

    def pinned_export_rows(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        floors: tuple[int, ...],
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> pa.Table: ...
    def points_about(self, tenant: str, sensors: list[int], start: int, end: int) -> int:
        """The loaded points of ``sensors`` in the hours [start, end) meets."""

    def health(self) -> dict:
        """What /healthz reports about storage (its kind, reachable shards, …)."""

    # -- retention (lenshouse.retention) ------------------------------------
    def retention_rows(self) -> pa.Table:
        """(tenant, source, keep_ms): the newest keep of each policy row."""

    def put_retention(self, rows: pa.Table) -> None: ...
    def expiry_marks(self) -> pa.Table:
        """(tenant, source, before): no data of the tenant before it in the source."""

    def put_expiry(self, rows: pa.Table) -> None: ...
    def partitions(self, tier: Tier | None) -> pa.Table:
        """(partition, bytes, rows) of raw (None) or a tier, over every shard."""

    def partition_ms(self, tier: Tier | None) -> int: ...

    tier_tables: queries.TierTables  # which tiers share a table (and so its partitions)

    def rows_in(self, tier: Tier | None, tenant: str, lo: int, hi: int) -> int: ...
    def drop_partition(self, tier: Tier | None, partition: int) -> None:
        """Drop a partition of the table that holds raw (None) or ``tier``
        (with every tier that shares the table)."""

    def delete_range(self, tier: Tier | None, tenant: str, lo: int, hi: int) -> bool:
        """Remove a tenant's rows in [lo, hi) from raw or a tier; True once they
        are gone, False if the server finishes it later."""

    # -- deletes (lenshouse.ingest.erase) ------------------------------------
    can_erase: bool  # whether ``erase`` works on this server

    def erase_count(self, tenant: str, sensors: list[int], start: int, end: int) -> int:
        """How many of the sensors' points lie in [start, end)."""

    def erase(self, tenant: str, sensors: list[int], start: int, end: int, seq: int) -> None:
        """Remove the sensors' points in [start, end) from raw and every tier,
        as load ``seq``. Idempotent."""

    def sync(self) -> None:
        """Make what is stored so far survive a power loss (before the log
        that could replay it is trimmed)."""

    def close(self) -> None: ...


def erase_bounds(start: int, end: int) -> tuple[int, int]:
    """[start, end) widened to whole cells of the coarsest tier: the cells an
    erase rebuilds. Raw points must be kept over all of it."""
    w = TIERS[-1].res_ms
    return start // w * w, -(-end // w) * w


def check_token(token: str) -> str:
    if not _TOKEN.match(token):
        raise ValueError(f"not a deduplication token: {token!r}")
    return token


class SqlStore:
    """The reads and inserts both stores share, over one SQL connection."""

    name = "clickhouse"
    atomic_dedup = False
    # Ranges per key read (see queries.cell_conditions).
    max_conditions = queries.MAX_CONDITIONS
    tier_tables = queries.OWN_TABLES  # where each tier's cells are

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Lens queries in flight: while others run, each reads on one thread
        # (parallel reads of small ranges cost more CPU than they save once
        # the cores are busy). Guarded by _running_lock.
        self._running = 0
        self._running_lock = threading.Lock()

    # -- inserts ------------------------------------------------------------
    def insert_raw(self, rows: pa.Table, token: str) -> None:
        self.backend.insert("raw", rows, check_token(token))

    def insert_cells(self, cells: pa.Table, seq: int, token: str) -> None:
        self.backend.insert(FIRST.table, cells, check_token(token))

    def insert_sensors(self, rows: pa.Table, token: str) -> None:
        self.backend.insert("sensors", rows, check_token(token))

    def put_sensors(self, rows: pa.Table) -> None:
        self.backend.insert("sensors", rows)

    # -- reads ----------------------------------------------------------------
    def tiers_present(self) -> list[Tier]:
        names = set(self.backend.query(queries.TABLES).column("name").to_pylist())
        return [t for t in TIERS if self.tier_tables.table(t) in names]

    def extents(self) -> pa.Table:
        return self.backend.query(queries.extents(TIERS[-1], self.tier_tables))

    def seen_keys(self, tenant: str, pairs: Pairs, unit_ms: int, below_seq: int) -> pa.Table:
        return self.backend.query(
            queries.seen_keys(tenant, pairs, unit_ms, below_seq, self.max_conditions)
        )

    def stored_values(self, tenant: str, pairs: Pairs, unit_ms: int, max_seq: int) -> pa.Table:
        return self.backend.query(
            queries.stored_values(tenant, pairs, unit_ms, max_seq, self.max_conditions)
        )

    def load_keys(self, tenant: str, seq: int, pairs: Pairs, unit_ms: int) -> pa.Table:
        return self.backend.query(
            queries.load_keys(tenant, seq, pairs, unit_ms, self.max_conditions)
        )

    def folded(self, tier: Tier | None, tenant: str, r: int, pairs: Pairs) -> pa.Table:
        sql = queries.folded(tier, tenant, r, pairs, self.max_conditions, self.tier_tables)
        return self.backend.query(sql)

    def newest_ts(self) -> int | None:
        t = self.backend.query(queries.NEWEST)
        return int(t.column("ts")[0].as_py()) if t.column("n")[0].as_py() else None

    def known_sensors(self) -> set[tuple[str, int]]:
        rows = self.backend.query(queries.KNOWN_SENSORS)
        return set(zip(rows.column("tenant").to_pylist(), rows.column("sensor").to_pylist()))

    def sensors_of(self, tenant: str) -> pa.Table:
        return self.backend.query(queries.sensors_of(tenant))

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
        q = queries.lens(tenant, step, groups, max_seq, hidden, origin, m4, self.tier_tables)
        with self._lens_running() as busy:
            return self.backend.query(q.sql, self.lens_settings(busy, q.raw_in_order))

    @contextmanager
    def _lens_running(self) -> Iterator[bool]:
        """Count a lens read as running while the block runs; yields whether
        others were running when it began."""
        with self._running_lock:
            busy = self._running > 0
            self._running += 1
        try:
            yield busy
        finally:
            with self._running_lock:
                self._running -= 1

    def lens_settings(self, busy: bool, raw_in_order: bool) -> Settings:
        # PREWHERE (on by default) measured 5-15% slower for a lens's narrow
        # key ranges: the filter columns are read anyway. Decoded blocks are
        # kept in the uncompressed cache: a 10-minute lens whose cells are
        # cached costs 7 ms of CPU instead of 10.5.
        settings: dict[str, int | str] = {
            "optimize_move_to_prewhere": 0,
            "use_uncompressed_cache": 1,
        }
        if busy:
            settings["max_threads"] = 1
        if raw_in_order:
            settings["optimize_aggregation_in_order"] = 1
        return settings

    def points_about(self, tenant: str, sensors: list[int], start: int, end: int) -> int:
        sql = queries.points_about(TIERS[-1], tenant, sensors, start, end, at=self.tier_tables)
        rows = self.backend.query(sql)
        return int(rows.column("n")[0].as_py() or 0)

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
        return self.backend.query(
            queries.export(tenant, sensors, start, end, max_seq, limit, hidden, after)
        )

    # -- retention ------------------------------------------------------------
    def retention_rows(self) -> pa.Table:
        return self.backend.query(queries.RETENTION)

    def put_retention(self, rows: pa.Table) -> None:
        self.backend.insert("retention", rows)

    def expiry_marks(self) -> pa.Table:
        return self.backend.query(queries.EXPIRY)

    def put_expiry(self, rows: pa.Table) -> None:
        self.backend.insert("expiry", rows)

    def partitions(self, tier: Tier | None) -> pa.Table:
        return self.backend.query(queries.partitions(queries.source_table(tier)))

    def partition_ms(self, tier: Tier | None) -> int:
        """How much time a partition of raw (None) or a tier spans."""
        return DAY_MS if tier is None else tier.partition_ms

    def rows_in(self, tier: Tier | None, tenant: str, lo: int, hi: int) -> int:
        sql = queries.rows_in(tier, tenant, lo, hi, self.tier_tables)
        return int(self.backend.query(sql).column("n")[0].as_py())

    def drop_partition(self, tier: Tier | None, partition: int) -> None:
        self.backend.execute(queries.drop_partition(queries.source_table(tier), partition))

    def delete_range(self, tier: Tier | None, tenant: str, lo: int, hi: int) -> bool:
        sql = queries.delete_range(queries.source_table(tier), tier, tenant, lo, hi)
        self.backend.execute(sql, {"mutations_sync": 1})
        return True

    # -- deletes ----------------------------------------------------------------
    can_erase = True

    def erase_count(self, tenant: str, sensors: list[int], start: int, end: int) -> int:
        sql = queries.erase_count(FIRST, tenant, sensors, start, end, self.tier_tables)
        counted = self.backend.query(sql)
        return int(counted.column("n")[0].as_py() or 0)

    def erase(self, tenant: str, sensors: list[int], start: int, end: int, seq: int) -> None:
        """Every tier's cells are deleted over the range widened to the
        coarsest cells, then the first tier's cells of the raw points left in
        the widening are inserted again and flow up through the views (no
        tier is computed from raw in a view). A replay after a crash, at any
        step, does the same to the same end: the fresh token keeps the second
        insert from passing for a retry of the first."""
        lo, hi = erase_bounds(start, end)
        tiers = self.tiers_present()
        self._erase_rows(None, tenant, sensors, start, end)
        for tier in tiers:
            self._erase_rows(tier, tenant, sensors, lo, hi)
        # Parts inserted after a delete was issued are not touched by it, so
        # the rebuilt cells may go in while the deletes still run.
        edges = [(a, b) for a, b in ((lo, start), (end, hi)) if a < b]
        if edges:
            rows = self.backend.query(queries.edge_cells(FIRST, tenant, sensors, edges))
            if rows.num_rows:
                self.insert_cells(_as_cells(rows), seq, f"lh-erase-{uuid.uuid4().hex}")
        self._erased(list(dict.fromkeys(["raw", *(self.tier_tables.table(t) for t in tiers)])))

    def _erase_rows(self, tier: Tier | None, tenant: str, sensors: list[int], lo: int, hi: int):
        # Issued without waiting: each waits for merges of its parts to end,
        # and six of them in a row took up to 6 s; together, about one.
        table = queries.source_table(tier, self.tier_tables)
        sql = queries.erase(table, tier, tenant, sensors, lo, hi, self.tier_tables)
        self.backend.execute(sql, {"lightweight_deletes_sync": 0})

    def _erased(self, tables: list[str]) -> None:
        """Wait until the deletes on ``tables`` are applied."""
        deadline = time.monotonic() + ERASE_WAIT_S
        while self.backend.query(queries.mutations_pending(tables)).column("n")[0].as_py():
            if time.monotonic() > deadline:
                raise RetryableError(f"deletes not applied after {ERASE_WAIT_S:.0f} s")
            time.sleep(0.02)

    def sync(self) -> None:
        """Servers keep their own parts durable (replicas, their fsync settings)."""

    def close(self) -> None:
        self.backend.close()


def _as_cells(rows: pa.Table) -> pa.Table:
    """Query rows in the tier table's types (tenant dictionary-encoded, as
    :func:`lenshouse.rollup.cells.cells` makes them)."""
    return pa.table({
        "tenant": rows.column("tenant").combine_chunks().dictionary_encode(),
        "sensor": rows.column("sensor").cast(pa.uint32()),
        "t": rows.column("t").cast(pa.int64()),
        "sum": rows.column("sum").cast(pa.float64()),
        "cnt": rows.column("cnt").cast(pa.uint64()),
        "min": rows.column("min").cast(pa.float64()),
        "max": rows.column("max").cast(pa.float64()),
        **m4.pair_arrays(
            flat_m4(rows), rows.column("min").to_numpy(), rows.column("max").to_numpy()
        ),
    })  # fmt: skip


def flat_m4(rows: pa.Table) -> m4.M4:
    """The M4 columns of query rows (``queries.M4_FLAT``)."""
    return m4.M4(*(rows.column(c).to_numpy() for c in queries.M4_FLAT))


class EmbeddedStore(SqlStore):
    """chDB inside this process: one data directory, plain MergeTree tables;
    with a cold directory (:mod:`lenshouse.storage.tiering`), on two volumes."""

    name = "chdb"

    def open(self) -> Upgrade:
        upgrade = create_schema(self.backend)
        if self.tiering is not None:
            for table, _ in self._tiered_tables():
                self.backend.execute(queries.set_policy(table, tiering.POLICY))
        return upgrade

    @property
    def tiering(self) -> tiering.Tiering | None:
        return getattr(self.backend, "tiering", None)

    def _tiered_tables(self) -> list[tuple[str, int]]:
        """(table, partition width in ms) of raw data and every tier."""
        return [("raw", DAY_MS), *((t.table, t.partition_ms) for t in self.tiers_present())]

    def move_cold(self, now_ms: int) -> list[tuple[str, int]]:
        """Move every partition that ended more than ``hot`` ago to the cold
        volume; the (table, partition) moved."""
        if self.tiering is None:
            return []
        cut = now_ms - self.tiering.hot_ms
        moved = []
        for table, width in self._tiered_tables():
            hot = self.backend.query(queries.hot_partitions(table, tiering.COLD))
            for p in sorted(hot.column("partition").to_pylist()):
                if (p + 1) * width <= cut:
                    self.backend.execute(queries.move_partition(table, p, tiering.COLD))
                    moved.append((table, p))
        return moved

    def finish_upgrade(self, upgrade: Upgrade) -> None:
        upgrade.finish(self.backend)

    def sync(self) -> None:
        """Write the data directories' dirty pages out: ClickHouse does not
        fsync its parts, and the log that could replay them is about to go."""
        dirs = [getattr(self.backend, "path", None)]
        if self.tiering is not None:
            dirs.append(self.tiering.cold_dir)
        for d in dirs:
            if d is not None:
                syncfs(Path(d))

    def attach(self, table: Tier | None, rows: pa.Table) -> None:
        attach_rows(self.backend, "raw" if table is None else table.table, rows)

    def health(self) -> dict:
        return {"storage": self.name}


def syncfs(path: Path) -> None:
    """syncfs(2) on the filesystem holding ``path`` (os.sync where libc lacks it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _LIBC.syncfs  # noqa: B018 - present on Linux's libc
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _LIBC = None
