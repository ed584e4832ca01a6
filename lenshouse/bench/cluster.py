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
import pyarrow as pa
import typer

from lenshouse.bench.common import console
from lenshouse.ingest.formats import ARROW

HZ = os.sysconf("SC_CLK_TCK")
WINDOWS = {"10s": 10_000, "1h": 3_600_000, "1d": 86_400_000}


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def _wait_loaded(url: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = httpx.get(url + "/healthz", timeout=10).json()
        if h["loaded_lsn"] >= h["accepted_lsn"]:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"{url}: loads did not finish in {timeout:.0f} s")


def _post(url: str, sensor: np.ndarray, ts: np.ndarray, value: np.ndarray) -> None:
    table = pa.table({"sensor": sensor, "ts": ts, "value": value})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    body = sink.getvalue().to_pybytes()
    for _ in range(100):  # a 503 (ingest far behind) asks to retry shortly
        r = httpx.post(url + "/v1/write", content=body, headers={"Content-Type": ARROW}, timeout=60)
        if r.status_code == 204:
            return
        if r.status_code != 503:
            raise RuntimeError(f"write refused: {r.status_code} {r.text}")
        time.sleep(0.5)
    raise RuntimeError("writes kept being refused as overloaded")


def _day(url: str, end_ms: int) -> int:
    """Sensors 1..10 at 1 Hz over the day before ``end_ms``."""
    t = np.arange(end_ms - 86_400_000, end_ms, 1000, dtype=np.int64)
    for lo in range(0, len(t), 10_000):
        part = t[lo : lo + 10_000]
        sensor = np.repeat(np.arange(1, 11, dtype=np.uint32), len(part))
        ts = np.tile(part, 10)
        _post(url, sensor, ts, np.sin(ts / 6e4) + sensor)
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
    loaded_s = sent_s + _wait_loaded(url, 600)
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


def _embedded(root: Path, port: int) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-m", "lenshouse", "serve", "--data", str(root / "embedded"),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return p
        except httpx.TransportError:
            pass
        if p.poll() is not None:
            break
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("the embedded server did not start")


def bench_cluster(
    dir: Path = typer.Option(None, help="cluster directory (default: a new temporary one)"),
    seconds: int = typer.Option(30, help="seconds of 100 sensors × 1 kHz to ingest"),
    requests: int = typer.Option(20, help="lens requests per window and store"),
    out: Path = typer.Option(Path("bench-cluster.json"), help="where the figures go"),
) -> None:
    """The cluster store next to the embedded one: ingest, CPU, lenses."""
    from lenshouse.cluster import down, up
    from lenshouse.conftest import free_port

    root = Path(tempfile.mkdtemp(prefix="lenshouse-bench-cluster-")) if dir is None else dir
    fresh = not (root / "cluster.json").exists()
    t0 = time.monotonic()
    doc = up(root, server=True)
    up_s = time.monotonic() - t0
    console.print(f"cluster up in {up_s:.1f} s ({'from nothing' if fresh else 'reused'})")
    emb = _embedded(root, free_port())
    emb_url = f"http://127.0.0.1:{emb.args[-1]}"
    targets = {
        "cluster": (doc["url"], {
            "clickhouse": [n["pid"] for n in doc["nodes"] if n["role"] == "clickhouse"],
            "keeper": [n["pid"] for n in doc["nodes"] if n["role"] == "keeper"],
            "lenshouse": [n["pid"] for n in doc["nodes"] if n["role"] == "lenshouse"],
        }),
        "embedded": (emb_url, {"lenshouse": [emb.pid]}),
    }  # fmt: skip
    end_ms = (int(time.time()) - 3600) * 1000
    results: dict = {"cluster_up_seconds": round(up_s, 1), "cluster_up_fresh": fresh}
    try:
        for name, (url, pids) in targets.items():
            console.print(f"[bold]{name}[/bold] {url}: a day of 10 sensors at 1 Hz …")
            _day(url, end_ms - seconds * 1000)
            _wait_loaded(url, 600)
            console.print(f"  ingest: 100 sensors × 1 kHz × {seconds} s from a separate process")
            ingest = _ingest(url, pids, end_ms, seconds)
            console.print(f"  {ingest}")
            lens = _lenses(url, end_ms, requests)
            console.print(f"  lenses: {lens}")
            results[name] = {"ingest": ingest, "lens": lens}
    finally:
        emb.terminate()
        emb.wait(30)
        if dir is None:
            down(root)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"figures: {out}")
