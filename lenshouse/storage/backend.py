"""The connection to ClickHouse that a store runs its SQL on.

Only the storage package speaks through it: the embedded engine (chDB, see
:mod:`lenshouse.storage.embedded`) and a server cluster over the native
protocol (:mod:`lenshouse.storage.replicated.connection`). Settings are passed
as a mapping, not in the SQL text, so that each connection renders them the
way its server understands (an old server refuses ``INSERT … SETTINGS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import pyarrow as pa

from lenshouse.storage.errors import FatalError, RetryableError, StorageError

__all__ = ["BLOCK_CACHE_MB", "Backend", "FatalError", "RetryableError", "StorageError"]

# Default size of the engine's cache of decoded blocks (ClickHouse's
# uncompressed cache), which lens queries read through.
BLOCK_CACHE_MB = 1024.0

Settings = Mapping[str, int | str]


class Backend(Protocol):
    name: str

    def execute(self, sql: str, settings: Settings | None = None) -> None:
        """Run a statement that returns nothing (DDL, OPTIMIZE, ...)."""

    def query(self, sql: str, settings: Settings | None = None) -> pa.Table:
        """Run a SELECT and return its rows as an Arrow table."""

    def insert(self, table: str, data: pa.Table, token: str | None = None) -> None:
        """Insert rows. With ``token``, a retry of the same insert is dropped by
        ClickHouse (``insert_deduplication_token``), in the table and in every
        materialized view fed by it."""

    def close(self) -> None: ...


def render_settings(settings: Settings | None) -> str:
    """`` SETTINGS a = 1, b = 'x'`` for SQL text, or nothing."""
    if not settings:
        return ""
    parts = []
    for k, v in settings.items():
        if not k.isidentifier():
            raise ValueError(f"not a setting name: {k!r}")
        parts.append(f"{k} = {int(v)}" if isinstance(v, int) else f"{k} = '{v}'")
    return " SETTINGS " + ", ".join(parts)
