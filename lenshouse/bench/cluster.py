"""``lenshouse bench-cluster``: the cluster store next to the embedded one, in
one run on this machine.

It starts (or reuses) a local 2 × 2 cluster with a lenshouse server over it
and an embedded server beside it, then for each: a day of 10 sensors at 1 Hz
written as Arrow batches, then a generator in a separate process sending
100 sensors × 1 kHz as fast as the server takes it (acknowledged points/s,
and loaded points/s until the last load lands), with the CPU seconds each
process used; then lenses of 10 sensors over 10 s, 1 h and 1 day windows
ending at the newest data (random ends within the last minute, so the lens
cache answers only the chunks windows share, as in a live chart).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import typer

from lenshouse.bench.console import console
from lenshouse.generators.sender import SendStats, batch_client, encode_arrow
from lenshouse.points import PointBatch
from lenshouse.scenarios.server import ServerProcess, wait_loaded

HZ = os.sysconf("SC_CLK_TCK")
WINDOWS = {"10s": 10_000, "1h": 3_600_000, "1d": 86_400_000}


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def _day(url: str, end_ms: int) -> int:
    """Sensors 1..10 at 1 Hz over the day before ``end_ms``."""
    t = np.arange(end_ms - 86_400_000, end_ms, 1000, dtype=np.int64)
    stats = SendStats()
    with batch_client(url, "default", stats) as client:
        for lo in range(0, len(t), 10_000):
            part = t[lo : lo + 10_000]
            sensor = np.repeat(np.arange(1, 11, dtype=np.uint32), len(part))
            ts = np.tile(part, 10)
            batch = PointBatch("default", sensor, ts, np.sin(ts / 6e4) + sensor)
            client.write_body(encode_arrow(batch))
    return len(t) * 10


def _ingest(url: str, pids: dict[str, list[int]], end_ms: int, seconds: int) -> dict:
    start_ms = end_ms - seconds * 1000
    before = {role: sum(_cpu_seconds(p) for p in ps) for role, ps in pids.items()}
    t0 = time.monotonic()
    gen = subprocess.run(
        [sys.executable, "-m", "lenshouse", "generate", "--url", url, "--sensors", "100",
         "--rate-hz", "1000", "--duration", f"{seconds}s", "--no-realtime",
         "--start-ms", str(start_ms), "--seed", "3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    sent_s = time.monotonic() - t0
    if gen.returncode != 0:
        raise RuntimeError(f"generator failed: {gen.stderr[-500:]}")
    loaded_s = sent_s + wait_loaded(url, 600)
    cpu = {
        role: round(sum(_cpu_seconds(p) for p in ps) - before[role], 1) for role, ps in pids.items()
    }
    points = 100 * 1000 * seconds
    return {
        "points": points,
        "acknowledged_per_s": round(points / sent_s),
        "loaded_per_s": round(points / loaded_s),
        "seconds_to_loaded": round(loaded_s, 1),
        "cpu_seconds": cpu,
    }


def _lenses(url: str, end_ms: int, requests: int) -> dict:
    rng = random.Random(7)
    out = {}
    for name, width in WINDOWS.items():
        ms = []
        for _ in range(requests):
            end = end_ms - rng.randrange(0, 60_000)
            params = {"sensors": "1,2,3,4,5,6,7,8,9,10", "start": end - width, "end": end,
                      "points": 2500}  # fmt: skip
            t0 = time.perf_counter()
            r = httpx.get(url + "/v1/lens", params=params, timeout=60)
            ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"lens refused: {r.status_code} {r.text}")
        ms.sort()
        out[name] = {
            "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "buckets": sum(len(s["t"]) for s in r.json()["series"]),
        }
    return out


def bench_cluster(
    dir: Path = typer.Option(None, help="cluster directory (default: a new temporary one)"),
    seconds: int = typer.Option(30, help="seconds of 100 sensors × 1 kHz to ingest"),
    requests: int = typer.Option(20, help="lens requests per window and store"),
    out: Path = typer.Option(Path("bench-cluster.json"), help="where the figures go"),
) -> None:
    """The cluster store next to the embedded one: ingest, CPU, lenses."""
    from lenshouse.cluster import down, up

    root = Path(tempfile.mkdtemp(prefix="lenshouse-bench-cluster-")) if dir is None else dir
    fresh = not (root / "cluster.json").exists()
    t0 = time.monotonic()
    doc = up(root, server=True)
    up_s = time.monotonic() - t0
    console.print(f"cluster up in {up_s:.1f} s ({'from nothing' if fresh else 'reused'})")
    emb = ServerProcess(root / "embedded", flush_interval=1.0)
    emb.start()
    targets = {
        "cluster": (doc["url"], {
            "clickhouse": [n["pid"] for n in doc["nodes"] if n["role"] == "clickhouse"],
            "keeper": [n["pid"] for n in doc["nodes"] if n["role"] == "keeper"],
            "lenshouse": [n["pid"] for n in doc["nodes"] if n["role"] == "lenshouse"],
        }),
        "embedded": (emb.url, {"lenshouse": [emb.proc.pid]}),
    }  # fmt: skip
    end_ms = (int(time.time()) - 3600) * 1000
    results: dict = {"cluster_up_seconds": round(up_s, 1), "cluster_up_fresh": fresh}
    try:
        for name, (url, pids) in targets.items():
            console.print(f"[bold]{name}[/bold] {url}: a day of 10 sensors at 1 Hz …")
            _day(url, end_ms - seconds * 1000)
            wait_loaded(url, 600)
            console.print(f"  ingest: 100 sensors × 1 kHz × {seconds} s from a separate process")
            ingest = _ingest(url, pids, end_ms, seconds)
            console.print(f"  {ingest}")
            lens = _lenses(url, end_ms, requests)
            console.print(f"  lenses: {lens}")
            results[name] = {"ingest": ingest, "lens": lens}
    finally:
        emb.stop()
        if dir is None:
            down(root)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"figures: {out}")
