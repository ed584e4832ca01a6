"""The embedded backend: chDB, the ClickHouse engine inside this process.

One process owns a data directory. chDB runs one query at a time per
connection and a streaming insert blocks its connection, so inserts get a
connection of their own and queries draw from a small pool.

ClickHouse keeps decompressed blocks of small reads in its uncompressed cache
(the server setting ``uncompressed_cache_size``, off in chDB by default); lens
queries ask for it (``use_uncompressed_cache``), so the rollup cells of
windows read again, live views above all, are not decoded again. Memory is
taken only as blocks are cached, up to the size given.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import chdb
import pyarrow as pa

from lenshouse.storage.backend import BLOCK_CACHE_MB, Settings, render_settings
from lenshouse.storage.errors import FatalError, classify
from lenshouse.storage.tiering import Tiering

_INSERT_SETTINGS = (
    "deduplicate_blocks_in_dependent_materialized_views = 1, "
    "insert_deduplicate = 1, max_insert_threads = 1"
)


class EmbeddedBackend:
    """chDB in this process: one engine, reached through several connections.

    Ownership: any thread. ``_insert_lock`` guards ``_insert_conn`` (inserts
    and statements, one at a time); each query takes a connection of its own
    from ``_pool`` (a queue) and puts it back. Everything else is set once,
    at construction."""

    name = "chdb"

    def __init__(
        self, path: Path, query_connections: int = 4, block_cache_mb: float = BLOCK_CACHE_MB
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # Server settings ride on the connection string; every connection to
        # the path shares one engine.
        url = f"{self.path}?uncompressed_cache_size={int(block_cache_mb * 2**20)}"
        self.tiering = Tiering.load(self.path)
        if self.tiering is not None:
            url += f"&config-file={self.tiering.config(self.path)}"
        try:
            self._insert_conn = chdb.connect(url)
        except Exception as e:  # chDB reports a locked directory only generically
            raise FatalError(
                f"cannot open {self.path}: is another lenshouse process using it? ({e})"
            ) from e
        self._insert_lock = threading.Lock()
        self._pool: queue.Queue = queue.Queue()
        for _ in range(query_connections):
            self._pool.put(chdb.connect(url))
        self._all = [self._insert_conn, *self._pool.queue]

    @contextmanager
    def _conn(self) -> Iterator:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def execute(self, sql: str, settings: Settings | None = None) -> None:
        with self._insert_lock:
            _run(self._insert_conn, sql + render_settings(settings), "CSV")

    def query(self, sql: str, settings: Settings | None = None) -> pa.Table:
        with self._conn() as conn:
            # An Arrow stream read by pyarrow measured ~1 ms faster per lens
            # than chDB's own Arrow table conversion.
            out = _run(conn, sql + render_settings(settings), "ArrowStream")
            return pa.ipc.open_stream(out.bytes()).read_all()

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        settings = _INSERT_SETTINGS
        if token is not None:
            settings += f", insert_deduplication_token = '{token}'"
        # chDB's Python() table function reads the local variable named here.
        rows = data  # noqa: F841
        sql = f"INSERT INTO {table} SELECT * FROM Python(rows) SETTINGS {settings}"
        with self._insert_lock:
            _run(self._insert_conn, sql, "CSV")

    def close(self) -> None:
        for conn in self._all:
            with suppress(Exception):
                conn.close()


def _run(conn, sql: str, fmt: str):
    try:
        return conn.query(sql, fmt)
    except Exception as e:
        # chDB reports ClickHouse's own "Code: N" in the message.
        raise classify(str(e)) from None
