"""Burst: lenses over data written before a burst of maximal ingest, while it
runs and in the 10 s after it.

Two bursts of ``burst_seconds`` (30) of Arrow ingest as fast as it is acknowledged
(1000 sensors × 1 kHz a batch, from its own process). During each, one user
reads lenses one after another (10 sensors of the lens dataset, random
windows of 10 s … 10 min, ``points=2500``, no think time); the server's
ingest counters and active parts are sampled every half second. After the
first burst the single user goes on for ``burst_after`` (10 s: p50/p95);
after the second, ``burst_clients`` (20) closed-loop clients in another
process read lenses of 10 s, 1 min, 5 min or 10 min for as long (p50; they
start about a second after the burst, once their process is up). A quiet
baseline comes first.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from lenshouse.bench.common import BenchConfig, BenchServer, sampler, spawn
from lenshouse.bench.console import console
from lenshouse.bench.ingest import arrow_client
from lenshouse.bench.lens import lens_dataset, prepare_lens
from lenshouse.bench.prepare import Dataset
from lenshouse.generators.load import LoadConfig, parse_mix, run_load_to_file, summarize

MIN_WINDOW_MS, MAX_WINDOW_MS = 10_000, 600_000
CLIENTS_MIX = "10s,1m,5m,10m"  # the 20 clients' windows, equally likely


def _window(rng: random.Random, ds: Dataset) -> tuple[int, int]:
    """A log-uniform width in [10 s, 10 min], placed at random in ``ds``."""
    width = int(math.exp(rng.uniform(math.log(MIN_WINDOW_MS), math.log(MAX_WINDOW_MS))))
    start = rng.randint(ds.start_ms, ds.end_ms - width)
    return start, start + width


def single_user(srv: BenchServer, ds: Dataset, stop: threading.Event, seed: int) -> list[dict]:
    """Lenses one after another until ``stop``; each with its time since start."""
    rng = random.Random(seed)
    sensors = ",".join(map(str, ds.ids))
    out: list[dict] = []
    t0 = time.monotonic()
    with httpx.Client(base_url=srv.url, timeout=60.0) as client:
        while not stop.is_set():
            start, end = _window(rng, ds)
            params = {"sensors": sensors, "start": start, "end": end, "points": 2500}
            t = time.perf_counter()
            r = client.get("/v1/lens", params=params)
            out.append({
                "t": round(time.monotonic() - t0, 3),
                "ms": (time.perf_counter() - t) * 1000,
                "status": r.status_code,
            })  # fmt: skip
    return out


def _reader(
    srv: BenchServer, ds: Dataset, seed: int
) -> tuple[threading.Event, threading.Thread, list]:
    stop = threading.Event()
    box: list = []
    thread = threading.Thread(target=lambda: box.append(single_user(srv, ds, stop, seed)))
    thread.start()
    return stop, thread, box


def _counters(srv: BenchServer) -> dict:
    doc = srv.ingest_counters()
    parts = srv.parts()
    doc["parts_raw"] = parts.get("raw", {}).get("parts", 0)
    doc["parts_all"] = sum(p["parts"] for p in parts.values())
    return doc


def _latency(samples: list[dict], lo: float, hi: float) -> dict:
    ok = [s["ms"] for s in samples if lo <= s["t"] < hi and s["status"] == 200]
    bad = sum(1 for s in samples if lo <= s["t"] < hi and s["status"] != 200)
    return {"requests": len(ok), "errors": bad, "latency_ms": summarize(ok)}


def _burst(
    srv: BenchServer, cfg: BenchConfig, workdir: Path, start_ms: int, name: str, then: Callable
) -> dict:
    """One burst, then ``then()`` (the seconds after it), with counters
    sampled throughout."""
    t0 = time.monotonic()
    with sampler(lambda: _counters(srv), every=0.5) as samples:
        child = spawn(
            arrow_client,
            srv.url,
            cfg.ingest_sensors,
            cfg.ingest_rate_hz,
            start_ms,
            cfg.burst_seconds,
            cfg.ingest_senders,
            name=name,
            workdir=workdir,
        )
        sent = child.result(timeout=None)
        t_end = time.monotonic() - t0
        after = then()
    return {"sent": sent, "ended_at_s": round(t_end, 3), "samples": samples, "after": after}


def _timeline_summary(burst: dict) -> dict:
    s = burst["samples"]
    return {
        "points_per_s": burst["sent"]["points"] / max(burst["sent"]["elapsed"], 1e-9),
        "max_lag_s": max((x["lag_s"] for x in s), default=0.0),
        "max_parts_raw": max((x["parts_raw"] for x in s), default=0),
        "max_parts_all": max((x["parts_all"] for x in s), default=0),
        "parts_all_at_end": s[-1]["parts_all"] if s else 0,
    }


def run_burst(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]burst (maximal ingest, lenses during and after)")
    workdir = Path(workdir)
    ds = lens_dataset(cfg)
    with BenchServer(workdir / "lens", block_cache_mb=cfg.block_cache_mb) as srv:
        prep = prepare_lens(srv, cfg, month=False)
        srv.wait_merges(60.0)
        # Quiet baseline.
        stop, thread, box = _reader(srv, ds, cfg.seed)
        time.sleep(cfg.burst_after)
        stop.set()
        thread.join()
        quiet = _latency(box[0], 0, math.inf)
        console.print(f"  quiet: single user p50 {quiet['latency_ms']['p50']:.1f} ms")
        # Burst 1, with a single user through it and the 10 s after.
        start_ms = int(time.time() * 1000)
        stop, thread, box = _reader(srv, ds, cfg.seed + 1)
        first = _burst(
            srv, cfg, workdir, start_ms, "burst-client", lambda: time.sleep(cfg.burst_after)
        )
        stop.set()
        thread.join()
        end = first["ended_at_s"]
        during = _latency(box[0], 0, end)
        after = _latency(box[0], end, end + cfg.burst_after)
        srv.wait_loaded(cfg.drain_timeout)
        # Burst 2, then 20 closed-loop clients in the 10 s after.
        second = _burst(
            srv,
            cfg,
            workdir,
            start_ms + 10 * 60_000,
            "burst-client-2",
            lambda: _clients(srv, cfg, workdir, ds),
        )
    one = _timeline_summary(first)
    doc = {
        "prepare": prep,
        "burst_seconds": cfg.burst_seconds,
        "quiet": quiet,
        "single_during": during,
        "single_after": after,
        "clients_after": second["after"],
        "burst1": {**one, "timeline": first["samples"]},
        "burst2": {**_timeline_summary(second), "timeline": second["samples"]},
    }
    console.print(
        f"  burst {one['points_per_s']:,.0f} points/s, lag ≤ {one['max_lag_s']:.1f} s,"
        f" parts ≤ {one['max_parts_all']}: single user during p95"
        f" {during['latency_ms']['p95']:.0f} ms, after p95 {after['latency_ms']['p95']:.0f} ms;"
        f" {cfg.burst_clients} clients after p50 {second['after']['latency_ms']['p50']:.0f} ms"
    )
    return doc


def _clients(srv: BenchServer, cfg: BenchConfig, workdir: Path, ds: Dataset) -> dict:
    """``burst_clients`` closed-loop clients in another process for ``burst_after`` s."""
    lc = LoadConfig(
        url=srv.url,
        users=cfg.burst_clients,
        duration=cfg.burst_after,
        think=0.0,
        mix=parse_mix(CLIENTS_MIX),
        sensors=ds.ids,
        min_sensors=len(ds.ids),
        max_sensors=len(ds.ids),
        span=(ds.start_ms, ds.end_ms),
        seed=cfg.seed + 2,
        ramp=0.0,
    )
    out = workdir / "burst-clients.json"
    spawn(run_load_to_file, lc, str(out), name="burst-clients", workdir=workdir).result(
        timeout=None
    )
    load = json.loads(out.read_text())
    ok = [s["latency_ms"] for s in load.get("samples", []) if s.get("status") == 200]
    return {
        "users": cfg.burst_clients,
        "requests": load.get("requests", 0),
        "errors": load.get("errors", 0),
        "latency_ms": summarize(ok),
        "throughput_rps": load.get("throughput_rps", 0.0),
    }
