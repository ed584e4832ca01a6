"""Lens latency with no ingest, and lenses under concurrency.

* **lens**: one user, one request at a time, 10 sensors, ``points=2500``,
  windows placed at random (unaligned) positions inside 1 kHz data, so every
  window is full of data and its edges fall mid-cell. For each request:
  client latency (until the answer is received; its decode is timed apart),
  the server's ``X-Lens-Ms``, the buckets returned, and the
  rows ClickHouse read, taken from its own ``SelectedRows`` counter (a delta
  of ``system.events`` around the request; chDB keeps no ``system.query_log``)
  and set against the design bound of 50 rows per bucket per sensor. Each
  window is asked for as JSON and as an Arrow answer, in random order, each
  time with ClickHouse's uncompressed cache emptied first: these are the
  figures of a window nobody read before.
* **month**: the same on lower-rate data (10 sensors at 10 Hz over a month),
  windows from an hour to a month, to show the cost does not grow with the
  window.
* **concurrency**: closed-loop clients with no think time, each asking for
  10 sensors over a random 10-minute window of the 1 kHz data, with the lens
  cache off and the server's uncompressed cache as configured (its hits and
  misses are reported).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
import orjson
import pyarrow as pa

from lenshouse.bench.common import DAY_MS, BenchConfig, BenchServer, spawn
from lenshouse.bench.console import console
from lenshouse.bench.prepare import Dataset, progress_bar
from lenshouse.generators.load import (
    LoadConfig,
    LoadResult,
    Window,
    parse_mix,
    run_load_to_file,
    summarize,
)
from lenshouse.lens.answer import AGGS
from lenshouse.lens.steps import bucket_count
from lenshouse.rollup.m4 import M4_AGGS

# Fixed, so a re-run on the same --data finds its datasets again.
LENS_END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MONTH_END_MS = LENS_END_MS - 40 * DAY_MS
ROWS_PER_BUCKET_BOUND = 50
_CACHE_EVENTS = ("UncompressedCacheHits", "UncompressedCacheMisses")


def lens_dataset(cfg: BenchConfig) -> Dataset:
    seconds = int(cfg.lens_hours * 3600)
    return Dataset(
        "lens",
        "default",
        first_id=1,
        sensors=cfg.lens_sensors,
        rate_hz=cfg.lens_rate_hz,
        start_ms=LENS_END_MS - seconds * 1000,
        seconds=seconds,
        seed=cfg.seed,
    )


def month_dataset(cfg: BenchConfig) -> Dataset:
    seconds = int(cfg.month_days * 86400)
    return Dataset(
        "month",
        "default",
        first_id=101,
        sensors=cfg.lens_sensors,
        rate_hz=cfg.month_rate_hz,
        start_ms=MONTH_END_MS - seconds * 1000,
        seconds=seconds,
        seed=cfg.seed + 1,
    )


def window(name: str) -> Window:
    return parse_mix(name)[0]


def measure_windows(
    srv: BenchServer,
    ds: Dataset,
    windows: tuple[str, ...],
    queries: int,
    points: int,
    seed: int,
    agg: str | None = None,
) -> dict:
    """Sequential lenses over ``ds``; per window latency percentiles and rows read
    (``agg``: the aggregates asked for, else the default four)."""
    rng = random.Random(seed)
    sensors = ",".join(map(str, ds.ids))
    out: dict = {}
    with httpx.Client(base_url=srv.url, timeout=120.0) as client:

        def arrow(params: dict) -> dict:
            """The same lens as an Arrow answer, decoded to columns."""
            srv.drop_block_cache()
            t = time.perf_counter()
            r = client.get("/v1/lens", params={**params, "format": "arrow"})
            ms = (time.perf_counter() - t) * 1000
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.text[:200]}", "latency_ms": ms}
            t = time.perf_counter()
            pa.ipc.open_stream(r.content).read_all()
            return {
                "latency_ms": ms,
                "server_ms": float(r.headers.get("x-lens-ms", "nan")),
                "decode_ms": (time.perf_counter() - t) * 1000,
            }

        def one(w: Window) -> dict:
            start = rng.randint(ds.start_ms, ds.end_ms - w.ms)
            end = start + w.ms
            params = {"sensors": sensors, "start": start, "end": end, "points": points}
            if agg:
                params["agg"] = agg
            # Each window is asked for in both formats, in random order.
            binary = arrow(params) if rng.random() < 0.5 else None
            srv.drop_block_cache()
            ev0 = srv.events()
            t = time.perf_counter()
            r = client.get("/v1/lens", params=params)
            ms = (time.perf_counter() - t) * 1000
            ev1 = srv.events()
            if binary is None:
                binary = arrow(params)
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.text[:200]}", "latency_ms": ms}
            t = time.perf_counter()
            doc = orjson.loads(r.content)
            decode_ms = (time.perf_counter() - t) * 1000
            step = doc["step"]
            buckets = bucket_count(start, end, step)
            returned = sum(len(s["t"]) for s in doc["series"])
            return {
                "arrow": binary,
                "decode_ms": decode_ms,
                "latency_ms": ms,
                "server_ms": float(r.headers.get("x-lens-ms", "nan")),
                "step": step,
                "buckets": buckets,
                "buckets_returned": returned,
                "points": sum(sum(s["count"]) for s in doc["series"]),
                "rows_read": ev1["SelectedRows"] - ev0["SelectedRows"],  # less noise, below
                "marks_read": ev1["SelectedMarks"] - ev0["SelectedMarks"],
                "bound": ROWS_PER_BUCKET_BOUND * buckets * len(ds.ids),
                "bytes": len(r.content),
            }

        def counter_noise() -> int:
            """Rows the counter moves by with no lens in between: reading
            system.events counts its own rows."""
            e0 = srv.events()
            e1 = srv.events()
            return e1["SelectedRows"] - e0["SelectedRows"]

        # Warm up: the first lenses pay for opening parts and caches.
        for _ in range(2):
            one(window(windows[0]))
        noise = counter_noise()
        for name in windows:
            w = window(name)
            if w.ms > ds.end_ms - ds.start_ms:
                console.print(f"  [yellow]skip {name}: the dataset spans less[/yellow]")
                continue
            noise = counter_noise()
            runs = [one(w) for _ in range(queries)]
            ok = [x for x in runs if "error" not in x]
            for x in ok:
                x["rows_read"] -= noise
            doc = {
                "window_ms": w.ms,
                "requests": len(runs),
                "errors": len(runs) - len(ok),
                "error_kinds": sorted({x["error"] for x in runs if "error" in x})[:5],
                "latency_ms": summarize([x["latency_ms"] for x in ok]),
                "server_ms": summarize([x["server_ms"] for x in ok]),
                "decode_ms": summarize([x["decode_ms"] for x in ok]),
            }
            binary = [x["arrow"] for x in ok if "error" not in x["arrow"]]
            doc["arrow"] = {
                "errors": len(ok) - len(binary),
                "latency_ms": summarize([x["latency_ms"] for x in binary]),
                "server_ms": summarize([x["server_ms"] for x in binary]),
                "decode_ms": summarize([x["decode_ms"] for x in binary]),
            }
            if ok:
                doc.update(
                    {
                        "step_ms": ok[0]["step"],
                        "buckets": ok[0]["buckets"],
                        "sensors": len(ds.ids),
                        "points_in_window_mean": sum(x["points"] for x in ok) / len(ok),
                        "rows_read": summarize([x["rows_read"] for x in ok]),
                        "marks_read_mean": sum(x["marks_read"] for x in ok) / len(ok),
                        "bound": ok[0]["bound"],
                        "rows_read_max_over_bound": max(x["rows_read"] / x["bound"] for x in ok),
                        "within_bound": all(x["rows_read"] <= x["bound"] for x in ok),
                        "response_bytes_mean": sum(x["bytes"] for x in ok) / len(ok),
                    }
                )
            out[name] = doc
            lat = doc["latency_ms"]
            alat = doc["arrow"]["latency_ms"]
            console.print(
                f"  {ds.name}{' +M4' if agg else ''} {name:>4}: p50 {lat['p50']:7.1f} ms"
                f"  p95 {lat['p95']:7.1f} ms"
                f"  (Arrow p50 {alat.get('p50', float('nan')):5.1f} ms)"
                f"  rows read p50 {doc.get('rows_read', {}).get('p50', float('nan')):>11,.0f}"
                f"  bound {doc.get('bound', 0):>11,}  errors {doc['errors']}"
            )
    return {"windows": out, "counter_noise_rows": noise}


def _parts(srv: BenchServer) -> dict:
    parts = srv.parts()
    return {t: {"parts": r["parts"], "rows": r["rows"]} for t, r in parts.items()}


def prepare_lens(srv: BenchServer, cfg: BenchConfig, month: bool = True) -> dict:
    sets = [lens_dataset(cfg)] + ([month_dataset(cfg)] if month else [])
    prep = {}
    with progress_bar() as progress:
        for ds in sets:
            prep[ds.name] = srv.write_dataset(ds, progress=progress)
    for name, doc in prep.items():
        if not doc["skipped"]:
            console.print(
                f"  prepared {name}: {doc['points']:,} points in {doc['seconds']:.1f} s"
                f" ({doc['points_per_s']:,.0f} points/s through log + loader)"
            )
    waited = srv.wait_merges(30.0)
    return {"datasets": prep, "merge_wait_s": waited, "parts": _parts(srv)}


def run_lens(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]lens (single user, no ingest)")
    # Every lens here is read from ClickHouse: the lens cache is off.
    with BenchServer(
        Path(workdir) / "lens", lens_cache_mb=0, block_cache_mb=cfg.block_cache_mb
    ) as srv:
        prep = prepare_lens(srv, cfg)
        lens = measure_windows(
            srv, lens_dataset(cfg), cfg.lens_windows, cfg.lens_queries, cfg.points, cfg.seed
        )
        # The same windows with each bucket's M4 points (what a pixel-exact line needs).
        lens_m4 = measure_windows(
            srv,
            lens_dataset(cfg),
            cfg.lens_windows,
            cfg.lens_queries,
            cfg.points,
            cfg.seed + 2,
            agg=",".join((*AGGS, *M4_AGGS)),
        )
        month = measure_windows(
            srv,
            month_dataset(cfg),
            cfg.month_windows,
            cfg.lens_queries,
            cfg.points,
            cfg.seed + 1,
        )
    return {"prepare": prep, "lens": lens, "lens_m4": lens_m4, "month": month}


def run_concurrency(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]concurrency")
    workdir = Path(workdir)
    ds = lens_dataset(cfg)
    w = window(cfg.concurrency_window)
    # "Not served from a cache": no lens cache; every lens runs its query.
    with BenchServer(workdir / "lens", lens_cache_mb=0, block_cache_mb=cfg.block_cache_mb) as srv:
        prep = prepare_lens(srv, cfg, month=False)
        lc = LoadConfig(
            url=srv.url,
            users=cfg.concurrency_users,
            duration=cfg.concurrency_duration,
            think=0.0,
            mix=(w,),
            sensors=tuple(ds.ids),
            min_sensors=min(10, ds.sensors),
            max_sensors=min(10, ds.sensors),
            points=cfg.points,
            span=(ds.start_ms, ds.end_ms),
            seed=cfg.seed,
            ramp=0.0,
        )
        console.print(
            f"  {lc.users} closed-loop clients, no think time,"
            f" {lc.max_sensors} sensors × random {w.name} windows, {lc.duration:.0f} s…"
        )
        path = workdir / ".concurrency-result.json"
        ev0 = srv.events(_CACHE_EVENTS)
        spawn(run_load_to_file, lc, str(path), name="concurrency-load", workdir=workdir).result(
            timeout=lc.duration + 300
        )
        ev1 = srv.events(_CACHE_EVENTS)
        result = LoadResult.from_dict(json.loads(path.read_text()))
        path.unlink()
    doc = result.to_dict()
    doc["prepare"] = prep
    hits, misses = (ev1[k] - ev0[k] for k in _CACHE_EVENTS)
    doc["block_cache"] = {
        "size_mb": cfg.block_cache_mb,
        "hits": hits,
        "misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
    }
    lat = doc["latency_ms"]
    console.print(
        f"  {doc['requests']} requests, {doc['throughput_rps']:.1f}/s: p50 {lat['p50']:.0f} ms,"
        f" p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, errors {doc['errors']}"
    )
    if hits + misses:
        console.print(
            f"  uncompressed cache ({cfg.block_cache_mb:g} MB): {hits:,} hits, {misses:,} misses"
        )
    return doc
