"""Storage: bytes on disk per point for the generator's own signals.

The fleet's seconds (``Fleet.second``: 16-bit-ADC-like values at 1 kHz) go
through the node's ingest path; then every table is merged to one part per
partition (``OPTIMIZE … FINAL``) and ``system.parts`` tells the bytes on
disk, compressed and uncompressed, per table. Rollup tiers are charged per
*raw* point, so raw + tiers is what a point costs in total.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lenshouse.bench.common import BenchConfig, BenchServer, console
from lenshouse.bench.prepare import Dataset, progress_bar, write_dataset
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.introspect import optimize_final, parts_by_table, raw_columns

TABLES = ("raw", *(t.table for t in TIERS))


def _per_point(parts: dict[str, dict], points: int) -> dict[str, dict]:
    out = {}
    for name in TABLES:
        p = parts.get(name, {"parts": 0, "rows": 0, "bytes_on_disk": 0, "compressed": 0})
        out[name] = {
            "parts": p["parts"],
            "rows": p["rows"],
            "bytes_on_disk": p["bytes_on_disk"],
            "compressed": p.get("compressed", 0),
            "uncompressed": p.get("uncompressed", 0),
            "bytes_per_point": p["bytes_on_disk"] / points if points else 0.0,
        }
    return out


def run_storage(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]storage")
    data = Path(workdir) / "storage"
    shutil.rmtree(data, ignore_errors=True)
    ds = Dataset(
        "storage",
        "default",
        first_id=1,
        sensors=cfg.storage_sensors,
        rate_hz=1000,
        start_ms=1_767_225_600_000,
        seconds=cfg.storage_seconds,
        seed=cfg.seed,
        exact=True,
    )
    with BenchServer(data, block_cache_mb=cfg.block_cache_mb) as srv:
        with progress_bar() as progress:
            prep = write_dataset(srv.node, ds, progress=progress)
        backend = srv.node.backend
        srv.wait_merges(30.0)
        before = _per_point(parts_by_table(backend), ds.points)
        for name in TABLES:
            optimize_final(backend, name)
        srv.wait_merges(60.0)
        after = _per_point(parts_by_table(backend), ds.points)
        columns = raw_columns(backend)
    shutil.rmtree(data, ignore_errors=True)
    rollups = sum(after[t.table]["bytes_on_disk"] for t in TIERS)
    doc = {
        "points": ds.points,
        "dataset": prep["dataset"],
        "before_optimize": before,
        "after_optimize": after,
        "raw_columns": {
            k: {**v, "bytes_per_point": v["compressed"] / ds.points if ds.points else 0.0}
            for k, v in columns.items()
        },
        "raw_bytes_per_point": after["raw"]["bytes_per_point"],
        "rollup_bytes_per_point": rollups / ds.points if ds.points else 0.0,
        "total_bytes_per_point": (after["raw"]["bytes_on_disk"] + rollups) / ds.points
        if ds.points
        else 0.0,
    }
    console.print(
        f"  {ds.points:,} points: raw {doc['raw_bytes_per_point']:.2f} B/point,"
        f" rollups +{doc['rollup_bytes_per_point']:.2f}, total {doc['total_bytes_per_point']:.2f}"
    )
    return doc
