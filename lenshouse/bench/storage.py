"""Storage: bytes on disk per point for the generator's own signals, and
for full-precision floats.

The fleet's seconds (``Fleet.second``: 16-bit-ADC-like values at 1 kHz; or
the same timestamps with values 10 + sin + 0.05·N(0,1)) go through the
node's ingest path. A minute after the last load the whole data directory is
set against the store's active parts (the log should be trimmed and merged-
away parts gone by then); then every table is merged to one part per
partition (``OPTIMIZE … FINAL``) and ``system.parts`` tells the bytes on
disk, compressed and uncompressed, per table. Rollup tiers are charged per
*raw* point, so raw + tiers is what a point costs in total.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from lenshouse.bench.common import BenchConfig, BenchServer
from lenshouse.bench.console import console
from lenshouse.bench.prepare import Dataset, progress_bar
from lenshouse.rollup.tiers import TIERS

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


def _dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (what ``du --apparent-size`` counts)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _measure(cfg: BenchConfig, data: Path, ds: Dataset, settle: float) -> dict:
    """Write ``ds``; ``settle`` s after the last load compare the data
    directory with the store's active parts; then OPTIMIZE FINAL and count
    bytes per point per table."""
    shutil.rmtree(data, ignore_errors=True)
    with BenchServer(data, block_cache_mb=cfg.block_cache_mb) as srv:
        with progress_bar() as progress:
            prep = srv.write_dataset(ds, progress=progress)
        time.sleep(settle)
        parts = srv.parts()
        store = sum(p["bytes_on_disk"] for p in parts.values())
        whole = _dir_bytes(data)
        log_bytes = _dir_bytes(data / "wal")
        before = _per_point(parts, ds.points)
        srv.optimize_final(TABLES)
        srv.wait_merges(60.0)
        after = _per_point(srv.parts(), ds.points)
        columns = srv.raw_columns()
    shutil.rmtree(data, ignore_errors=True)
    rollups = sum(after[t.table]["bytes_on_disk"] for t in TIERS)
    n = ds.points
    return {
        "points": n,
        "dataset": prep["dataset"],
        "settle_s": settle,
        "data_dir": {
            "bytes": whole,
            "store_bytes": store,
            "log_bytes": log_bytes,
            "ratio": whole / store if store else 0.0,
        },
        "before_optimize": before,
        "after_optimize": after,
        "raw_columns": {
            k: {**v, "bytes_per_point": v["compressed"] / n if n else 0.0}
            for k, v in columns.items()
        },
        "raw_bytes_per_point": after["raw"]["bytes_per_point"],
        "rollup_bytes_per_point": rollups / n if n else 0.0,
        "total_bytes_per_point": (after["raw"]["bytes_on_disk"] + rollups) / n if n else 0.0,
    }


def run_storage(cfg: BenchConfig, workdir: Path) -> dict:
    """The generator's 16-bit signals (the top-level figures), then
    full-precision floats (``float``)."""
    console.rule("[bold]storage")
    adc = Dataset(
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
    floats = replace(
        adc, name="storage-float", sensors=cfg.storage_float_sensors, exact=False, values="float"
    )
    doc = _measure(cfg, Path(workdir) / "storage", adc, cfg.storage_settle)
    doc["float"] = _measure(cfg, Path(workdir) / "storage-float", floats, cfg.storage_settle)
    for label, d in (("16-bit", doc), ("float", doc["float"])):
        console.print(
            f"  {label}: {d['points']:,} points: raw {d['raw_bytes_per_point']:.2f} B/point,"
            f" rollups +{d['rollup_bytes_per_point']:.2f}, total {d['total_bytes_per_point']:.2f};"
            f" data directory {d['data_dir']['ratio']:.2f}× the store {d['settle_s']:.0f} s"
            f" after the last load (log {d['data_dir']['log_bytes']:,} B)"
        )
    return doc
