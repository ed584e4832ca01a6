"""What the engine says about itself: counters, merges, parts and columns.

The benchmarks read these to report rows read, bytes per point and merge
work; they are the only readers of ClickHouse's ``system`` tables besides the
stores themselves.
"""

from __future__ import annotations

import time

from lenshouse.storage.backend import Backend
from lenshouse.storage.queries import identifier, string_literal


def profile_events(backend: Backend, names: tuple[str, ...]) -> dict[str, int]:
    """ClickHouse's cumulative ProfileEvents (``system.events``) for this engine.

    chDB has no ``system.query_log`` (it is not configured in the embedded
    server); these counters are the same ones query_log copies per query, so a
    delta around one query, with nothing else running, is that query's count.
    """
    quoted = ",".join(string_literal(n) for n in names)
    t = backend.query(f"SELECT event, value FROM system.events WHERE event IN ({quoted})")
    got = dict(zip(t.column("event").to_pylist(), t.column("value").to_pylist()))
    return {n: int(got.get(n, 0)) for n in names}


def wait_merges(backend: Backend, timeout: float) -> float:
    """Wait (up to ``timeout``) until no merge runs; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        t = backend.query("SELECT count() AS n FROM system.merges")
        if t.column("n")[0].as_py() == 0:
            break
        time.sleep(0.25)
    return time.monotonic() - t0


def drop_block_cache(backend: Backend) -> None:
    """Empty ClickHouse's uncompressed cache: the next read decodes from disk."""
    backend.execute("SYSTEM DROP UNCOMPRESSED CACHE")


def optimize_final(backend: Backend, table: str) -> None:
    backend.execute(f"OPTIMIZE TABLE {identifier(table)} FINAL")


def parts_by_table(backend: Backend) -> dict[str, dict]:
    t = backend.query(
        "SELECT table, count() AS parts, sum(rows) AS rows,"
        " sum(bytes_on_disk) AS bytes_on_disk,"
        " sum(data_compressed_bytes) AS compressed,"
        " sum(data_uncompressed_bytes) AS uncompressed"
        " FROM system.parts WHERE active AND database = currentDatabase()"
        " GROUP BY table ORDER BY table"
    )
    return {r["table"]: r for r in t.to_pylist()}


def raw_columns(backend: Backend) -> dict[str, dict]:
    t = backend.query(
        "SELECT name, data_compressed_bytes AS compressed,"
        " data_uncompressed_bytes AS uncompressed, compression_codec AS codec"
        " FROM system.columns WHERE database = currentDatabase() AND table = 'raw'"
    )
    return {r["name"]: r for r in t.to_pylist()}


def raw_with_seq(backend: Backend, tenant: str):
    """Every raw row of a tenant with the seq of the load that stored it: how
    tests tell which loads a lens answered from."""
    return backend.query(
        "SELECT sensor, ts, value, seq FROM raw"
        f" WHERE tenant = {string_literal(tenant)} ORDER BY sensor, ts"
    )
