"""Mixed: live ingest at the fleet's real-time rate (1000 sensors × 1 kHz =
1M points/s, one batch per second, from its own process) while closed-loop
users (another process) look at live views: random 1–10 sensors, windows
weighted to the last 10 s / 1 min / 1 h plus the last day, with think time.

Before the run, the day behind it is filled at a low rate (1 Hz for every
sensor) so that hour and day windows read full rollup tiers, not empty ones.
The server's ingest counters are sampled every half second: how far loading
trails acknowledgement (``ingest_lag_seconds``) over time is the result next
to the users' latency percentiles.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lenshouse.bench.common import BenchConfig, BenchServer, relative_timeline, sampler, spawn
from lenshouse.bench.console import console
from lenshouse.bench.prepare import Dataset, progress_bar
from lenshouse.generators.load import LoadConfig, LoadResult, parse_mix, run_load_to_file


def live_client(url: str, sensors: int, rate_hz: int, seconds: int, seed: int = 0) -> dict:
    """The generator in real time: second k of data is sent when it has passed."""
    from lenshouse.generators.sender import run
    from lenshouse.generators.signals import Fleet

    start_ms = int(time.time()) * 1000
    fleet = Fleet(sensors=sensors, rate_hz=rate_hz, start_ms=start_ms, seed=seed)
    t0 = time.monotonic()
    sent: list[list[float]] = []
    stats = run(
        url,
        fleet,
        seconds,
        realtime=True,
        on_second=lambda k, s: sent.append([round(time.monotonic() - t0, 3), s.points]),
    )
    return {
        "start_ms": start_ms,
        "points": stats.points,
        "batches": stats.batches,
        "retries": stats.retries,
        "elapsed": stats.seconds,
        "sent": sent,
    }


def run_mixed(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]mixed (live ingest + users)")
    workdir = Path(workdir)
    data = workdir / "mixed"
    shutil.rmtree(data, ignore_errors=True)
    mix = parse_mix(cfg.mixed_mix)
    now_s = int(time.time())
    prefill_s = int(cfg.mixed_prefill_hours * 3600)
    prefill = Dataset(
        "mixed-prefill",
        "default",
        first_id=1,
        sensors=cfg.ingest_sensors,
        rate_hz=cfg.mixed_prefill_hz,
        start_ms=(now_s - prefill_s) * 1000,
        seconds=prefill_s,
        seed=cfg.seed + 2,
    )
    with BenchServer(data, block_cache_mb=cfg.block_cache_mb) as srv:
        with progress_bar() as progress:
            prep = srv.write_dataset(prefill, progress=progress)
        srv.wait_merges(15.0)
        live_seconds = int(cfg.mixed_warmup + cfg.duration + 2)
        console.print(
            f"  live ingest {cfg.ingest_sensors} sensors × {cfg.ingest_rate_hz} Hz"
            f" for {live_seconds} s; {cfg.mixed_users} users after {cfg.mixed_warmup:.0f} s…"
        )
        t0 = time.monotonic()
        before = srv.ingest_counters()
        with sampler(srv.ingest_counters, every=0.5) as samples:
            live = spawn(
                live_client,
                srv.url,
                cfg.ingest_sensors,
                cfg.ingest_rate_hz,
                live_seconds,
                cfg.seed,
                name="live-ingest",
                workdir=workdir,
            )
            while srv.ingest_counters()["accepted"] == before["accepted"]:
                if not live.alive() or time.monotonic() - t0 > 60:
                    break
                time.sleep(0.05)
            t_first = time.monotonic() - t0
            time.sleep(cfg.mixed_warmup)
            lc = LoadConfig(
                url=srv.url,
                users=cfg.mixed_users,
                duration=cfg.duration,
                think=cfg.mixed_think,
                mix=mix,
                sensors=tuple(range(1, cfg.ingest_sensors + 1)),
                min_sensors=1,
                max_sensors=10,
                points=cfg.points,
                seed=cfg.seed,
            )
            path = workdir / ".mixed-result.json"
            t_users = time.monotonic() - t0
            spawn(run_load_to_file, lc, str(path), name="mixed-load", workdir=workdir).result(
                timeout=cfg.duration + 300
            )
            t_users_end = time.monotonic() - t0
            users = LoadResult.from_dict(json.loads(path.read_text()))
            path.unlink()
            ingest = live.result(timeout=live_seconds + 120)
            drained = srv.wait_loaded(cfg.drain_timeout)
        after = srv.ingest_counters()
        lens_cache = srv.lens_cache()
        timeline = relative_timeline(samples, before)
    shutil.rmtree(data, ignore_errors=True)
    during = [s for s in timeline if t_users <= s["t"] <= t_users_end]
    span = during[-1]["t"] - during[0]["t"] if len(during) > 1 else 0.0
    lags = sorted(s["lag_s"] for s in during)
    doc = users.to_dict()
    doc.update(
        {
            "prefill": prep,
            "users_started_s": t_users,
            "users_ended_s": t_users_end,
            "first_ack_s": t_first,
            "ingest": {
                "points_sent": ingest["points"],
                "points_loaded": after["loaded"] - before["loaded"],
                "retries": ingest["retries"],
                "elapsed": ingest["elapsed"],
                "target_per_s": cfg.ingest_sensors * cfg.ingest_rate_hz,
                "accepted_per_s_during_users": (during[-1]["accepted"] - during[0]["accepted"])
                / span
                if span
                else 0.0,
                "loaded_per_s_during_users": (during[-1]["loaded"] - during[0]["loaded"]) / span
                if span
                else 0.0,
                "max_lag_s": lags[-1] if lags else 0.0,
                "p95_lag_s": lags[int(0.95 * (len(lags) - 1))] if lags else 0.0,
                "drained": drained,
            },
            "timeline": timeline,
            "lens_cache": lens_cache,
        }
    )
    lat = doc["latency_ms"]
    ing = doc["ingest"]
    console.print(
        f"  {doc['requests']} lenses, {doc['throughput_rps']:.1f}/s: p50 {lat['p50']:.0f} ms,"
        f" p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, errors {doc['errors']};"
        f" ingest {ing['loaded_per_s_during_users']:,.0f} points/s loaded,"
        f" lag max {ing['max_lag_s']:.2f} s; lens cache hit ratio {lens_cache['hit_ratio']:.2f}"
        f" ({lens_cache['invalidated']:,} chunks dropped by loads)"
    )
    return doc
