"""Prometheus: remote write in, and the query API Grafana asks.

* **synthetic remote write**: ``prom_clients`` client processes post
  pre-encoded snappy ``WriteRequest`` bodies (``prom_series`` series ×
  ``prom_samples`` samples at 1 kHz, 2,000 samples a body by default, the
  size Prometheus batches), ``prom_bodies`` each, as fast as acknowledged;
  samples per second until loaded.
* **a real Prometheus** (Debian's ``prometheus``) scrapes an exporter of
  ``prom_scrape_series`` gauges every second for ``prom_scrape_s`` and
  remote-writes them: the samples lenshouse received per second, the
  server's CPU, and what Prometheus says it failed or still holds.
* **query_range**: 10 series × ``prom_query_hours`` of 1 kHz points (written
  through Arrow), asked at Grafana's default step for a 1-hour panel
  (``$__interval`` = 2 s, ``avg_over_time(x[2s])`` at ``step=2``): p50/p95 over
  ``prom_queries`` queries, next to the same buckets as a lens on the grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from lenshouse.bench.common import BenchConfig, BenchServer, free_port, process_cpu_seconds, spawn
from lenshouse.bench.console import console
from lenshouse.bench.ingest import _merged, _post_as_fast_as_acked, _start_ms
from lenshouse.cluster import prometheus as testing
from lenshouse.generators.load import summarize
from lenshouse.generators.sender import ARROW, encode_arrow
from lenshouse.points import PointBatch
from lenshouse.prometheus.remote_write import CONTENT_TYPE, RemoteSeries, encode_write_request

QUERY_SENSORS = 10
GRAFANA_STEP_MS = 2000  # Grafana's $__interval for a 1 h panel of ~1,500 px


def remote_write_client(
    url: str, series: int, samples: int, start_ms: int, bodies: int, first: int
) -> dict:
    """Post ``bodies`` remote-write bodies (body k: ``samples`` ms of each series
    from ``start_ms + k·samples``), encoded before the clock starts."""
    ms = np.arange(samples, dtype=np.int64)
    rng = np.random.default_rng(first)
    encoded = []
    for k in range(bodies):
        ts = start_ms + k * samples + ms
        encoded.append(
            encode_write_request(
                [
                    RemoteSeries(
                        (("__name__", "bench_rw"), ("client", str(first)), ("i", str(i))),
                        ts,
                        rng.normal(10, 1, samples),
                    )
                    for i in range(series)
                ]
            )
        )
    n = series * samples

    def body_for(k: int) -> tuple[bytes, int]:
        return encoded[k], n

    return _post_as_fast_as_acked(
        url, 3600.0, 1, "default", body_for, CONTENT_TYPE, "/api/v1/write", bodies, "snappy"
    )


def _synthetic(srv: BenchServer, cfg: BenchConfig, workdir: Path, start: int) -> dict:
    kids = [
        spawn(
            remote_write_client,
            srv.url,
            cfg.prom_series,
            cfg.prom_samples,
            start,
            cfg.prom_bodies,
            1000 * (k + 1),
            name=f"rw-{k}",
            workdir=workdir,
        )
        for k in range(cfg.prom_clients)
    ]
    results = [c.result(timeout=None) for c in kids]
    done = time.monotonic()
    assert srv.wait_visible(600)
    sent = _merged(results)
    # Each client's clock starts once its bodies are encoded.
    posting = max(r["elapsed"] for r in results)
    return {
        "samples": sent["points"],
        "bodies": sent["batches"],
        "samples_per_body": cfg.prom_series * cfg.prom_samples,
        "errors": sent["errors"],
        "acknowledged_per_s": sent["points"] / posting if posting > 0 else 0.0,
        "loaded_after_s": time.monotonic() - done,
        "samples_per_s": sent["points"] / (posting + time.monotonic() - done),
    }


def _counter(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _real(srv: BenchServer, cfg: BenchConfig, workdir: Path) -> dict:
    stored = 'lenshouse_remote_write_samples_total{outcome="stored"}'
    with (
        testing.Exporter(sensors=cfg.prom_scrape_series) as exporter,
        testing.prometheus(
            workdir / "prometheus", free_port(), exporter.target, srv.url + "/api/v1/write"
        ) as prom,
    ):
        deadline = time.monotonic() + 60
        while exporter.scrapes < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        n0, cpu0, t0 = _counter(srv.url, stored), process_cpu_seconds(), time.monotonic()
        time.sleep(cfg.prom_scrape_s)
        n1, cpu1, t1 = _counter(srv.url, stored), process_cpu_seconds(), time.monotonic()
        failed = _counter(prom, "prometheus_remote_storage_samples_failed_total")
        pending = _counter(prom, "prometheus_remote_storage_samples_pending")
    return {
        "series": cfg.prom_scrape_series,
        "seconds": t1 - t0,
        "samples_per_s": (n1 - n0) / (t1 - t0),
        "server_cores": (cpu1 - cpu0) / (t1 - t0),
        "prometheus_failed": failed,
        "prometheus_pending": pending,
    }


def _query_data(srv: BenchServer, cfg: BenchConfig, start: int) -> int:
    """10 series × ``prom_query_hours`` at 1 kHz, labelled; returns the span (ms)."""
    span = int(cfg.prom_query_hours * 3_600_000)
    ts = start + np.arange(span, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    with httpx.Client(base_url=srv.url, timeout=300) as c:
        for s in range(1, QUERY_SENSORS + 1):
            for lo in range(0, span, 600_000):
                part = ts[lo : lo + 600_000]
                batch = PointBatch("default", np.full(len(part), s, np.uint32), part,
                                   rng.normal(20, 5, len(part)))  # fmt: skip
                r = c.post("/v1/write", content=encode_arrow(batch),
                           headers={"Content-Type": ARROW})  # fmt: skip
                r.raise_for_status()
            labels = {"__name__": "bench_q", "sensor": str(s)}
            c.put(f"/v1/sensors/{s}", json={"labels": labels}).raise_for_status()
    assert srv.wait_visible(600)
    return span


def _queries(srv: BenchServer, cfg: BenchConfig, start: int, span: int) -> dict:
    step = GRAFANA_STEP_MS
    lo = -(-start // step) * step  # Grafana aligns start to the step
    hi = lo + (span - step) // step * step
    params = {"query": f"avg_over_time(bench_q[{step}ms])", "start": lo / 1000,
              "end": hi / 1000, "step": step / 1000}  # fmt: skip
    lens = {"sensors": ",".join(map(str, range(1, QUERY_SENSORS + 1))), "start": lo,
            "end": hi, "step": step}  # fmt: skip
    out: dict = {"series": QUERY_SENSORS, "window_s": (hi - lo) / 1000, "step_ms": step}
    with httpx.Client(base_url=srv.url, timeout=300) as c:
        for name, path, p in (("query_range", "/api/v1/query_range", params),
                              ("lens", "/v1/lens", lens)):  # fmt: skip
            c.get(path, params=p).raise_for_status()  # warm-up
            times = []
            for _ in range(cfg.prom_queries):
                t = time.perf_counter()
                r = c.get(path, params=p)
                times.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
            out[name] = summarize(times)
        doc = c.get("/api/v1/query_range", params=params).json()["data"]["result"]
        out["points"] = sum(len(s["values"]) for s in doc)
    return out


def run_prometheus(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]prometheus")
    workdir = Path(workdir)
    start = _start_ms()
    out: dict = {}
    with BenchServer(workdir / "prom-node", block_cache_mb=cfg.block_cache_mb) as srv:
        out["synthetic"] = syn = _synthetic(srv, cfg, workdir, start)
        console.print(
            f"  remote write, {cfg.prom_clients} clients: {syn['samples']:,} samples at"
            f" {syn['samples_per_s']:,.0f}/s until loaded"
            f" ({syn['acknowledged_per_s']:,.0f}/s acknowledged)"
        )
        if testing.available():
            out["real"] = real = _real(srv, cfg, workdir)
            console.print(
                f"  a real Prometheus, {real['series']:,} series each second:"
                f" {real['samples_per_s']:,.0f} samples/s received,"
                f" server {real['server_cores']:.2f} cores, {real['prometheus_failed']:.0f} failed"
            )
        else:
            out["real"] = {"installed": False}
        span = _query_data(srv, cfg, start + 6 * 3_600_000 // 2)
        out["query"] = q = _queries(srv, cfg, start + 6 * 3_600_000 // 2, span)
        console.print(
            f"  query_range {q['series']} series × {q['window_s']:.0f} s at {q['step_ms']} ms:"
            f" p50 {q['query_range']['p50']:.1f} / p95 {q['query_range']['p95']:.1f} ms"
            f" (the lens on the grid: p50 {q['lens']['p50']:.1f} ms)"
        )
    return out
