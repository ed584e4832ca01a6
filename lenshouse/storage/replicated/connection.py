"""Native-protocol connections to a ClickHouse cluster (clickhouse-driver).

The cluster's layout is read from ``system.clusters`` on the first seed
address that answers: which shards there are and which replicas each has.
Reads and DDL go to any node, failing over to the next (``alt_hosts``); the
``Distributed`` tables spread a read over the shards. Inserts go to one
replica of the shard that owns the rows, failing over to its other replicas.

Timeouts. A node cut off by the network does not refuse connections: its
packets just vanish, and a socket waits for its timeout. Reads therefore
give up after ``READ_TIMEOUT_S`` of silence (a running query sends progress
packets, so a long lens is not cut short), and tell the server to wait no
longer than ``REMOTE_TIMEOUT_S`` for a remote shard's replica (the setting
reaches the ``Distributed`` table's own connections), so a read from the cut
node fails in seconds. A shard's own reads (its local tables, answering in
well under a second) give up after ``SHARD_READ_TIMEOUT_S``. Either way the
replica that went silent is then *suspect* for ``SUSPECT_S``: every client of
the pool that is about to read from it moves to another replica first, so
one read waits out the timeout, not one per pooled connection. Inserts and
DDL may legitimately wait longer (a quorum, a task queued on every node).

Ownership: a clickhouse-driver ``Client`` runs one query at a time, so each
sits in a pool (a queue) and a thread holds it for one call. ``layout`` is
read once, at connection, and never changes after. A pool's suspects are
shared by its threads, under their own lock.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from lenshouse.storage.backend import Settings
from lenshouse.storage.errors import RetryableError, StorageError, classify
from lenshouse.storage.queries import identifier, string_literal

_NETWORK = (
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    ch_errors.UnexpectedPacketFromServerError,
    EOFError,
    ConnectionError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class Shard:
    number: int  # 1-based, as in system.clusters
    replicas: tuple[str, ...]  # "host:port" of each replica's native port

    @property
    def name(self) -> str:
        return f"{self.number} ({', '.join(self.replicas)})"


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT (the native TCP port, e.g. 9000)")
    return host, int(port)


READ_TIMEOUT_S = 15  # client side: silence on a read's socket
# A running query sends progress packets every interactive_delay (0.1 s), so
# a shard read's socket is silent this long only when the replica is gone.
SHARD_READ_TIMEOUT_S = 5
SUSPECT_S = 30.0  # how long reads avoid a replica that went silent
REMOTE_TIMEOUT_S = 10  # server side: a Distributed read's wait on a remote replica
WRITE_TIMEOUT_S = 60  # inserts (a quorum wait is silent) and DDL


def _client(
    addresses: list[str], database: str, user: str, password: str, timeout: float
) -> Client:
    host, port = parse_address(addresses[0])
    return Client(
        host,
        port=port,
        alt_hosts=",".join(addresses[1:]) or None,
        database=database,
        user=user,
        password=password,
        connect_timeout=2,
        send_receive_timeout=timeout,
        sync_request_timeout=5,
        compression=False,  # loopback and LAN: lz4 would cost more CPU than it saves
        settings={"use_numpy": True},
    )


class _Suspects:
    """Replicas that recently failed a read on the network, and until when
    reads avoid them. ``_until`` is guarded by ``_lock`` (the pool's threads
    share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[tuple[str, int], float] = {}

    def mark(self, host: tuple[str, int]) -> None:
        with self._lock:
            self._until[host] = time.monotonic() + SUSPECT_S

    def _suspect(self, host: tuple[str, int], now: float) -> bool:
        return self._until.get(host, 0.0) > now

    def steer(self, client: Client) -> None:
        """Point ``client`` at a replica that is not suspect, if there is one
        (its failover order rotated, its connection to the suspect dropped)."""
        hosts = client.connection.hosts
        now = time.monotonic()
        with self._lock:
            if not self._suspect(hosts[0], now):
                return
            good = [i for i, h in enumerate(hosts) if not self._suspect(h, now)]
        if good:
            client.disconnect()
            hosts.rotate(-good[0])


class _Pool:
    def __init__(self, make, size: int, suspects: _Suspects | None = None) -> None:
        self._free: queue.Queue[Client] = queue.Queue()
        self._suspects = suspects
        self._all = [make() for _ in range(size)]
        for c in self._all:
            self._free.put(c)

    @contextmanager
    def client(self) -> Iterator[Client]:
        c = self._free.get()
        try:
            if self._suspects:
                self._suspects.steer(c)
            yield c
        except RetryableError as e:
            if self._suspects and e.network:
                self._suspects.mark(c.connection.hosts[0])
                c.disconnect()
            raise
        finally:
            self._free.put(c)

    def close(self) -> None:
        for c in self._all:
            with suppress(Exception):
                c.disconnect()


def _run(client: Client, *args, **kw):
    try:
        return client.execute(*args, **kw)
    except ch_errors.ServerException as e:
        raise classify(str(e), code=e.code) from None
    except ch_errors.Error as e:
        code = getattr(e, "code", None)
        raise classify(
            str(e), code=code, network=isinstance(e, _NETWORK) or code in (209, 210)
        ) from None
    except _NETWORK as e:
        client.disconnect()
        raise classify(f"{type(e).__name__}: {e}", network=True) from None


class ClusterConnection:
    name = "clickhouse-cluster"

    def __init__(
        self,
        seeds: list[str],
        cluster: str,
        database: str = "default",
        user: str = "default",
        password: str = "",
        pool_size: int = 6,
    ) -> None:
        self.cluster = identifier(cluster)
        self.database = identifier(database)
        self._auth = (user, password)
        # DDL creates the database: the first connections use the default one.
        boot = _Pool(lambda: _client(seeds, "default", user, password, WRITE_TIMEOUT_S), 1)
        try:
            with boot.client() as c:
                self.shards = self._read_layout(c)
                self.version = str(_run(c, "SELECT version()")[0][0])
                self._ensure_database(c)
        finally:
            boot.close()
        every = [r for s in self.shards for r in s.replicas]
        # Seeds first: the nodes the operator named are tried before the rest.
        order = list(dict.fromkeys([*seeds, *every]))
        db = self.database
        self._order = order
        self._any = _Pool(
            lambda: _client(order, db, user, password, READ_TIMEOUT_S), pool_size, _Suspects()
        )
        self._shard_pools = {
            s.number: _Pool(
                lambda s=s: _client(list(s.replicas), db, user, password, WRITE_TIMEOUT_S), 1
            )
            for s in self.shards
        }
        # Reads of one shard's local tables: each client starts at another
        # replica (spreading reads) and fails over to the rest.
        self._read_pools = {
            s.number: _Pool(
                lambda s=s, k=itertools.count(): _unpinged(
                    _client(_rotated(s.replicas, next(k)), db, user, password, SHARD_READ_TIMEOUT_S)
                ),
                max(2, pool_size // 2) * len(s.replicas),
                _Suspects(),
            )
            for s in self.shards
        }

    def _ensure_database(self, c: Client) -> None:
        """Every node gets the database (the one place DDL runs outside the
        schema: the connections themselves open in it)."""
        got = _run(c, f"SELECT count() FROM system.databases WHERE name = '{self.database}'")
        if not int(got[0][0]):
            _run(
                c,
                f"CREATE DATABASE IF NOT EXISTS {self.database} ON CLUSTER {self.cluster}",
                settings={"distributed_ddl_task_timeout": 120},
            )

    def _read_layout(self, c: Client) -> list[Shard]:
        rows = _run(
            c,
            # Names, not the addresses they resolved to: a restarted container or
            # pod comes back under its name at a new address.
            "SELECT shard_num, host_name, port FROM system.clusters"
            f" WHERE cluster = {string_literal(self.cluster)} ORDER BY shard_num, replica_num",
        )
        if not len(rows):
            raise StorageError(
                f"the server knows no cluster named {self.cluster!r} (system.clusters)"
            )
        shards: dict[int, list[str]] = {}
        for num, host, port in rows:
            shards.setdefault(int(num), []).append(f"{host}:{int(port)}")
        return [Shard(n, tuple(r)) for n, r in sorted(shards.items())]

    # -- the Backend protocol -------------------------------------------------
    def execute(self, sql: str, settings: Settings | None = None) -> None:
        """DDL and maintenance: rare, and may wait silently (a task on every
        node), so on a connection of its own with the long timeout."""
        c = _client(self._order, self.database, *self._auth, WRITE_TIMEOUT_S)
        try:
            _run(c, sql, settings=dict(settings or {}))
        finally:
            c.disconnect()

    def query(self, sql: str, settings: Settings | None = None) -> pa.Table:
        wanted = {"receive_timeout": REMOTE_TIMEOUT_S, "send_timeout": REMOTE_TIMEOUT_S}
        with self._any.client() as c:
            return _to_arrow(
                *_run(
                    c,
                    sql,
                    settings=wanted | dict(settings or {}),
                    columnar=True,
                    with_column_types=True,
                )
            )

    def query_shard(self, shard: int, sql: str, settings: Settings | None = None) -> pa.Table:
        """``sql`` on one replica of ``shard`` (its local tables), failing over
        to the others when a connection cannot be made."""
        wanted = {"receive_timeout": REMOTE_TIMEOUT_S, "send_timeout": REMOTE_TIMEOUT_S}
        with self._read_pools[shard].client() as c:
            return _to_arrow(
                *_run(
                    c,
                    sql,
                    settings=wanted | dict(settings or {}),
                    columnar=True,
                    with_column_types=True,
                )
            )

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        raise NotImplementedError("a cluster insert names its shard: use insert_shard")

    def insert_shard(
        self, shard: int, table: str, data: pa.Table, settings: Settings | None = None
    ) -> None:
        """Insert ``data`` into the local ``table`` on a replica of ``shard``."""
        cols = ", ".join(identifier(n) for n in data.column_names)
        sql = f"INSERT INTO {self.database}.{identifier(table)} ({cols}) VALUES"
        columns = [_column(data.column(i)) for i in range(data.num_columns)]
        with self._shard_pools[shard].client() as c:
            _run(c, sql, columns, columnar=True, settings=dict(settings or {}))

    def query_replica(self, address: str, sql: str) -> list:
        """Run ``sql`` on one named replica (no failover), e.g. to sync it."""
        c = _client([address], "default", *self._auth, WRITE_TIMEOUT_S)
        try:
            return _run(c, sql)
        finally:
            c.disconnect()

    def close(self) -> None:
        self._any.close()
        for p in [*self._shard_pools.values(), *self._read_pools.values()]:
            p.close()


def _unpinged(client: Client) -> Client:
    """A client whose open connections send each query without a ping first
    (the driver pings before every query: a round trip, measured at 9 % of a
    lens server's CPU). A connection the server has closed fails the query
    itself as a network error, which the stores read again."""
    for conn in [client.connection, *client.connections]:  # alt hosts: one connection

        def force_connect(conn=conn) -> None:
            conn.check_query_execution()
            if not conn.connected:
                conn.connect()

        conn.force_connect = force_connect
    return client


def _rotated(items: tuple[str, ...], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def _column(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if pa.types.is_dictionary(arr.type):  # the tenant: a few names, many rows
        # As bytes of a fixed width: the driver's null check and encoding of a
        # String column cost half as much as for Python strings.
        names = np.array([n.encode() for n in arr.dictionary.to_pylist()], dtype=bytes)
        return names[arr.indices.to_numpy(zero_copy_only=False)]
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return np.asarray(arr.to_pylist(), dtype=object)
    if pa.types.is_struct(arr.type):
        # A Tuple column (the M4 pairs): the driver's numpy mode takes a
        # structured array, an element per field.
        fields = [arr.field(i).to_numpy(zero_copy_only=False) for i in range(arr.type.num_fields)]
        out = np.empty(len(arr), dtype=[(f"f{i}", f.dtype) for i, f in enumerate(fields)])
        for i, f in enumerate(fields):
            out[f"f{i}"] = f
        return out
    return arr.to_numpy(zero_copy_only=False)


def _to_arrow(columns, types) -> pa.Table:
    out = {}
    for (name, kind), values in zip(types, columns or [[] for _ in types]):
        values = np.asarray(values)
        kind_type = _arrow_type(kind)
        if len(values) == 0:  # an empty result has no typed arrays
            out[name] = pa.array([], type=kind_type or pa.null())
        else:
            out[name] = pa.array(values, type=kind_type)
    return pa.table(out)


_TYPES = {
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
    "Float32": pa.float32(), "Float64": pa.float64(), "String": pa.string(),
}  # fmt: skip


def _arrow_type(kind: str) -> pa.DataType | None:
    for wrapper in ("LowCardinality(", "SimpleAggregateFunction("):
        if kind.startswith(wrapper):
            kind = kind[len(wrapper) : -1].split(", ")[-1]
    return _TYPES.get(kind)
