"""``lenshouse bench-pipeline``: the whole write path of cluster mode on this
machine: generator → gateways → replicated log → loaders → 2 × 2 ClickHouse.

Over a local topology (``cluster up``: every process on this machine):

1. **sustained**: generator processes send ``--sensors`` × ``--rate-hz`` in
   real time for ``--seconds`` to both gateways; acknowledged points/s, the
   acknowledgement latency (the gateways' histograms), the loaders' lag
   sampled every second, the time to catch up, CPU seconds per role;
2. **takeover**: the loader of partition 0 killed (kill -9) under a light
   load; seconds until the other loader owns it and has loaded past the kill;
3. **log leader**: the stream leader of partition 0 killed while small
   batches are written back to back; the longest pause between two
   acknowledgements;
4. **outage** (needs iptables): every ClickHouse server cut off for
   ``--outage`` seconds while the generator runs; writes acknowledged during
   it, then the catch-up rate (points loaded per second until caught up).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import typer

from lenshouse.bench.console import console
from lenshouse.cluster import probes, processes, record
from lenshouse.generators.sender import SendStats, batch_client, encode_arrow
from lenshouse.points import PointBatch
from lenshouse.tenancy.client import TOKEN_ENV

HZ = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


def _cpu_by_role(doc: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in doc["nodes"]:
        out[n["role"]] = out.get(n["role"], 0.0) + _cpu(n.get("pid"))
    return out


def _histogram_quantiles(urls: list[str], name: str, qs: tuple[float, ...]) -> dict[str, float]:
    """Quantiles (upper bucket bounds) of a Prometheus histogram summed over servers."""
    buckets: dict[float, float] = {}
    for url in urls:
        with contextlib.suppress(httpx.HTTPError):
            for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
                if line.startswith(f"{name}_bucket"):
                    le = line.split('le="', 1)[1].split('"', 1)[0]
                    bound = float("inf") if le == "+Inf" else float(le)
                    buckets[bound] = buckets.get(bound, 0.0) + float(line.split()[-1])
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    out = {}
    for q in qs:
        out[f"p{round(q * 100)}_s"] = next(
            (b for b in bounds if total and buckets[b] >= q * total), float("nan")
        )
    return out


def _loaded_points(doc: dict) -> int:
    return sum(r["points_loaded"] for r in probes.loader_partitions(doc).values())


def _generators(doc: dict, sensors: int, rate_hz: int, seconds: int, start_ms: int, procs: int):
    """``procs`` generator processes, each a tenant and a share of the sensors,
    spreading batches over every gateway."""
    urls = ",".join(doc["gateways"])
    per = sensors // procs
    gens = []
    for k in range(procs):
        argv = [sys.executable, "-m", "lenshouse", "generate", "--url", urls, "--sensors", str(per),
                "--rate-hz", str(rate_hz), "--duration", f"{seconds}s", "--realtime",
                "--start-ms", str(start_ms), "--seed", str(k), "--tenant", f"bench{k}"]  # fmt: skip
        gens.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # its summary on one line; the operator's token for the gateways' auth
                env={**os.environ, "COLUMNS": "300", TOKEN_ENV: doc.get("admin_token") or ""},
            )
        )
    return gens


def _wait_caught_up(root: Path, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if probes.caught_up(record.load(root)):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise RuntimeError(f"loaders had not caught up after {timeout:.0f} s")


def _sustained(root: Path, sensors: int, rate_hz: int, seconds: int, procs: int) -> dict:
    doc = record.load(root)
    cpu0 = _cpu_by_role(doc)
    loaded0 = _loaded_points(doc)
    start_ms = (int(time.time()) - 2 * seconds) * 1000
    t0 = time.monotonic()
    gens = _generators(doc, sensors, rate_hz, seconds, start_ms, procs)
    lags: list[float] = []
    while any(g.poll() is None for g in gens):
        parts = probes.loader_partitions(doc)
        lags.append(max((r["lag_seconds"] or 0.0) for r in parts.values()) if parts else 0.0)
        time.sleep(1.0)
    sent_s = time.monotonic() - t0
    outputs = [g.communicate()[0] for g in gens]
    if any(g.returncode for g in gens):
        raise RuntimeError("a generator failed: " + " | ".join(o[-300:] for o in outputs))
    catch_up = _wait_caught_up(root, 600)
    points = sensors // procs * procs * rate_hz * seconds
    cpu1 = _cpu_by_role(record.load(root))
    return {
        "target_points_per_s": sensors // procs * procs * rate_hz,
        "points": points,
        "acknowledged_per_s": round(points / sent_s),
        "loaded_per_s_including_catch_up": round(
            (_loaded_points(record.load(root)) - loaded0) / (sent_s + catch_up)
        ),
        "lag_s_max": round(max(lags, default=0.0), 2),
        "lag_s_median": round(float(np.median(lags)) if lags else 0.0, 2),
        "catch_up_after_send_s": round(catch_up, 1),
        "ack_latency": _histogram_quantiles(
            doc["gateways"], "lenshouse_gateway_ack_seconds", (0.5, 0.99)
        ),
        "cpu_seconds": {r: round(cpu1.get(r, 0) - cpu0.get(r, 0), 1) for r in cpu1},
        "generator": [o.strip().splitlines()[-1] for o in outputs],
    }


def _small_batches(doc: dict, seconds: float, tenant: str) -> list[float]:
    """Back-to-back batches of 1000 points; the acknowledgement times."""
    stats = SendStats()
    acks = []
    t0 = time.monotonic()
    base = (int(time.time()) - 3600) * 1000
    with batch_client(doc["gateways"], tenant, stats, 60.0, doc.get("admin_token")) as client:
        k = 0
        while time.monotonic() - t0 < seconds:
            ts = base + k * 1000 + np.arange(1000, dtype=np.int64)
            batch = PointBatch(tenant, np.full(1000, 7, np.uint32), ts, np.sin(ts / 1e3))
            client.write_body(encode_arrow(batch))
            acks.append(time.monotonic())
            k += 1
    return acks


def _takeover(root: Path) -> dict:
    doc = record.load(root)
    parts = probes.loader_partitions(doc)
    victim = parts[0]["loader"]
    gens = _generators(doc, 100, 100, 40, (int(time.time()) - 600) * 1000, 1)
    time.sleep(5)
    processes.stop(root, victim, kill=True)
    t_kill = time.monotonic()
    owned = None
    while time.monotonic() - t_kill < 60:
        row = probes.loader_partitions(record.load(root)).get(0)
        if row and row["loader"] != victim:
            if owned is None:
                owned = time.monotonic() - t_kill
            if (row["loads"] or 0) > 0:
                break
        time.sleep(0.1)
    loading = time.monotonic() - t_kill
    for g in gens:
        g.wait(120)
    processes.start(root, victim)
    return {"owned_after_s": round(owned or float("nan"), 2), "loading_after_s": round(loading, 2)}


def _log_leader(root: Path) -> dict:
    doc = record.load(root)
    leader = probes.log_streams(doc)["LH_P0"]["leader"]
    acks: list[float] = []
    t = threading.Thread(target=lambda: acks.extend(_small_batches(doc, 25, "bench-leader")))
    t.start()
    time.sleep(5)
    t_kill = time.monotonic()
    processes.stop(root, leader, kill=True)
    t.join(120)
    processes.start(root, leader)
    gaps = np.diff(np.array(acks))
    around = [g for a, g in zip(acks[1:], gaps) if a >= t_kill]
    return {
        "killed": leader,
        "batches": len(acks),
        "longest_pause_s": round(float(max(around, default=0.0)), 2),
        "median_gap_ms": round(float(np.median(gaps)) * 1000, 1),
    }


def _outage(root: Path, seconds: int, sensors: int, rate_hz: int) -> dict:
    doc = record.load(root)
    ports = [n["ports"]["tcp"] for n in record.clickhouse_nodes(doc)]
    rules = [["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(p), "-j", "DROP"] for p in ports]
    duration = seconds + 20
    gens = _generators(doc, sensors, rate_hz, duration, (int(time.time()) - 2 * duration) * 1000, 1)
    time.sleep(5)
    loaded0 = _loaded_points(doc)
    for r in rules:
        subprocess.run(["iptables", "-I", *r], check=True)
    try:
        time.sleep(seconds)
    finally:
        for r in rules:
            subprocess.run(["iptables", "-D", *r], check=True)
    t_back = time.monotonic()
    loaded_back = _loaded_points(record.load(root))
    for g in gens:
        g.wait(300)
    _wait_caught_up(root, 600)
    caught = time.monotonic() - t_back
    loaded = _loaded_points(record.load(root)) - loaded_back
    out = [g.communicate()[0] for g in gens]
    return {
        "outage_s": seconds,
        "points_per_s_sent": sensors * rate_hz,
        "loaded_during_outage": loaded_back - loaded0,
        "caught_up_after_s": round(caught, 1),
        "catch_up_points_per_s": round(loaded / caught) if caught else None,
        "generator": [o.strip().splitlines()[-1] for o in out],
    }


def bench_pipeline(
    dir: Path = typer.Option(None, help="cluster directory (default: a new temporary one)"),
    sensors: int = typer.Option(1000, help="sensors sent by the generators"),
    rate_hz: int = typer.Option(1000, help="samples per sensor per second"),
    seconds: int = typer.Option(60, help="seconds of sustained sending"),
    generators: int = typer.Option(2, help="generator processes"),
    outage: int = typer.Option(60, help="seconds ClickHouse is cut off (0: skip)"),
    outage_sensors: int = typer.Option(500, help="sensors (× rate-hz) sent during the outage"),
    steps: str = typer.Option(
        "sustained,takeover,log_leader,outage", help="which measurements, comma-separated"
    ),
    out: Path = typer.Option(Path("bench-pipeline.json"), help="where the figures go"),
) -> None:
    """Cluster mode's write path end to end: sustained rate, lag, takeover, log leader loss,
    catch-up after a ClickHouse outage."""
    root = Path(tempfile.mkdtemp(prefix="lenshouse-bench-pipeline-")) if dir is None else dir
    t0 = time.monotonic()
    processes.up(root, roles=True)
    results: dict = {"up_seconds": round(time.monotonic() - t0, 1)}
    try:
        for name, step in (
            ("sustained", lambda: _sustained(root, sensors, rate_hz, seconds, generators)),
            ("takeover", lambda: _takeover(root)),
            ("log_leader", lambda: _log_leader(root)),
            ("outage", lambda: _outage(root, outage, outage_sensors, rate_hz) if outage else None),
        ):
            if name not in steps.split(","):
                continue
            console.print(f"[bold]{name}[/bold] …")
            results[name] = step()
            console.print(f"  {results[name]}")
            processes.up(root, roles=True)  # whatever a step stopped runs again
    finally:
        out.write_text(json.dumps(results, indent=2))
        if dir is None:
            processes.down(root)
    console.print(f"figures: {out}")
