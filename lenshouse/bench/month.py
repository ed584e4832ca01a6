"""A month of full-rate data: 30 days of 1 kHz points for a sensor (2.6
billion each) written through the ingest path as fast as it goes, then lenses
over the whole month next to one-hour windows (latency and rows read, every
lens from ClickHouse: no lens cache), then retention over it (raw points kept
7 days: the older day partitions dropped) and the month's lenses again.

The written points are counted back: a month-wide lens's counts must sum to
every point written, before expiry and after (the tiers hold them)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from lenshouse.bench.common import BenchConfig, BenchServer
from lenshouse.bench.console import console
from lenshouse.bench.lens import measure_windows
from lenshouse.bench.prepare import Dataset, progress_bar
from lenshouse.rollup.tiers import DAY_MS

MONTH_END_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z: whole days, in the past
KEEP_RAW = "7d"


def dataset(cfg: BenchConfig) -> Dataset:
    seconds = int(cfg.full_month_days * 86_400)
    return Dataset("month-full", "default", first_id=1, sensors=cfg.full_month_sensors,
                   rate_hz=cfg.full_month_rate_hz, start_ms=MONTH_END_MS - seconds * 1000,
                   seconds=seconds, seed=cfg.seed)  # fmt: skip


def _counted(url: str, ds: Dataset) -> int:
    """Points a lens over the whole dataset counts (every sensor)."""
    params = {"sensors": ",".join(map(str, ds.ids)), "start": ds.start_ms, "end": ds.end_ms,
              "points": 2500}  # fmt: skip
    r = httpx.get(url + "/v1/lens", params=params, timeout=300)
    r.raise_for_status()
    return sum(sum(s["count"]) for s in r.json()["series"])


def run_month(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]month (30 days of 1 kHz, then retention)")
    ds = dataset(cfg)
    windows = ("1h", f"{int(cfg.full_month_days)}d") if cfg.full_month_days >= 2 else ("1h",)
    with BenchServer(Path(workdir) / "month", lens_cache_mb=0,
                     block_cache_mb=cfg.block_cache_mb) as srv:  # fmt: skip
        with progress_bar() as progress:
            prep = srv.write_dataset(ds, chunk_points=4_000_000, progress=progress)
        if not prep["skipped"]:
            rate = f"{prep['points_per_s']:,.0f} points/s through log + loader"
            console.print(f"  wrote {prep['points']:,} points in {prep['seconds']:.0f} s ({rate})")
        merge_wait = srv.wait_merges(600.0)
        disk_before = _disk(srv)
        counted = _counted(srv.url, ds)
        before = measure_windows(srv, ds, windows, cfg.lens_queries, cfg.points, cfg.seed)
        t0 = time.monotonic()
        report = srv.retention(ds.end_ms, KEEP_RAW)
        retention_s = time.monotonic() - t0
        disk_after = _disk(srv)
        counted_after = _counted(srv.url, ds)
        after = measure_windows(srv, ds, windows, cfg.lens_queries, cfg.points, cfg.seed + 1)
    dropped = [a for a in report.actions if a.kind == "drop"]
    console.print(
        f"  retention (raw {KEEP_RAW}): {len(dropped)} partitions dropped,"
        f" {report.dropped_bytes:,} bytes, in {retention_s:.1f} s; lens counts"
        f" {counted:,} before, {counted_after:,} after, of {ds.points:,} written"
    )
    return {
        "dataset": {"points": ds.points, "sensors": ds.sensors, "days": cfg.full_month_days},
        "prepare": prep,
        "merge_wait_s": merge_wait,
        "disk_bytes_before": disk_before,
        "disk_bytes_after": disk_after,
        "lens_before": before,
        "lens_after": after,
        "counted_before": counted,
        "counted_after": counted_after,
        "retention": {
            "seconds": retention_s,
            "dropped_partitions": len(dropped),
            "dropped_bytes": report.dropped_bytes,
            "raw_mark": next((b for t, s, b in report.marks if s == "raw"), None),
            "raw_days_kept": (ds.end_ms - max(a.hi for a in dropped)) / DAY_MS if dropped else None,
        },
    }


def _disk(srv: BenchServer) -> dict[str, int]:

    return {t: int(r["bytes_on_disk"]) for t, r in srv.parts().items()}
