"""The storage interface. Ingest, rollup and lens code speak ClickHouse SQL
through it, so the embedded engine (chDB) and a ClickHouse server cluster plug
in beside each other without touching them."""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa

# Default size of the engine's cache of decoded blocks (ClickHouse's
# uncompressed cache), which lens queries read through.
BLOCK_CACHE_MB = 1024.0


class StorageError(RuntimeError):
    """A query or insert the storage refused or could not run."""


class Backend(Protocol):
    name: str

    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, OPTIMIZE, ...)."""

    def query(self, sql: str) -> pa.Table:
        """Run a SELECT and return its rows as an Arrow table."""

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        """Insert rows. With ``token``, a retry of the same insert is dropped by
        ClickHouse (``insert_deduplication_token``), in the table and in every
        materialized view fed by it."""

    def close(self) -> None: ...
