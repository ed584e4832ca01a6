"""Adding rows to one table without feeding its materialized views.

An INSERT pushes its rows through every view on the table. A repair of one
table (see :mod:`lenshouse.ingest.reconcile`) must not: the tables those views
feed are checked and repaired on their own. Parts attached from a staging
table of the same structure (``ALTER TABLE … ATTACH PARTITION … FROM``) enter
the table as they are, and no view sees them.
"""

from __future__ import annotations

import pyarrow as pa

from lenshouse.storage.backend import Backend

STAGING_PREFIX = "lh_staging_"


def attach_rows(backend: Backend, table: str, data: pa.Table) -> None:
    """Add ``data`` to ``table``; no view on ``table`` sees it. A crash part way
    leaves some partitions attached and a staging table the next call drops."""
    if data.num_rows == 0:
        return
    staging = STAGING_PREFIX + table
    backend.execute(f"DROP TABLE IF EXISTS {staging}")
    backend.execute(f"CREATE TABLE {staging} AS {table}")
    try:
        backend.insert(staging, data)
        parts = backend.query(
            "SELECT DISTINCT partition_id FROM system.parts"
            f" WHERE database = currentDatabase() AND table = '{staging}' AND active"
        )
        for pid in parts.column("partition_id").to_pylist():
            backend.execute(f"ALTER TABLE {table} ATTACH PARTITION ID '{pid}' FROM {staging}")
    finally:
        backend.execute(f"DROP TABLE IF EXISTS {staging}")
