"""``lenshouse bench`` and ``lenshouse load``: plain functions with typer
annotations, callable from Python with their defaults, registered on the CLI
with ``app.command()(bench)`` and ``app.command()(load)``."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from lenshouse.bench.common import BenchConfig, git_state, machine
from lenshouse.bench.console import console
from lenshouse.storage.backend import BLOCK_CACHE_MB

SCENARIOS = ("ingest", "lens", "mixed", "storage", "concurrency", "burst")
# Asked for by name only: it needs Chromium and playwright (the test extra).
# month: 2.6 billion points, ~15 min; peers: VictoriaMetrics and InfluxDB
# (Debian's victoria-metrics, influxdb), ~15 min.
EXTRA_SCENARIOS = ("page", "month", "peers", "prometheus")


def run_bench(
    scenarios: list[str], cfg: BenchConfig, data: Path | None, out: Path, command: str = ""
) -> dict:
    """Run ``scenarios`` in order and write the report into ``out``; returns the results."""
    from lenshouse.bench.burst import run_burst
    from lenshouse.bench.ingest import run_ingest
    from lenshouse.bench.lens import run_concurrency, run_lens
    from lenshouse.bench.mixed import run_mixed
    from lenshouse.bench.month import run_month
    from lenshouse.bench.page import run_page
    from lenshouse.bench.peers import run_peers
    from lenshouse.bench.prometheus import run_prometheus
    from lenshouse.bench.report import write_report
    from lenshouse.bench.storage import run_storage

    runners = {
        "ingest": run_ingest,
        "lens": run_lens,
        "concurrency": run_concurrency,
        "storage": run_storage,
        "mixed": run_mixed,
        "page": run_page,
        "month": run_month,
        "burst": run_burst,
        "peers": run_peers,
        "prometheus": run_prometheus,
    }
    own = data is None
    workdir = Path(tempfile.mkdtemp(prefix="lenshouse-bench-")) if own else Path(data)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "scenarios": scenarios,
            "config": cfg.to_dict(),
            "machine": machine(),
            "git": git_state(),
            "data_dir": str(workdir),
        }
    }
    t0 = time.monotonic()
    try:
        for name in scenarios:
            t = time.monotonic()
            results[name] = runners[name](cfg, workdir)
            results[name]["scenario_seconds"] = time.monotonic() - t
    finally:
        results["meta"]["seconds"] = time.monotonic() - t0
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
        files = write_report(results, out)
        console.print("report: " + ", ".join(str(p) for p in files.values()))
    return results


def bench(
    scenario: Annotated[
        str,
        typer.Argument(
            help="ingest, lens, mixed, storage, concurrency, burst, page (the lens page in"
            " Chromium), month (30 days of 1 kHz, then retention), peers (next to"
            " VictoriaMetrics and InfluxDB), or all (all but page, month and peers)"
        ),
    ] = "all",
    data: Annotated[
        Path | None,
        typer.Option(help="data directory to use and keep (prepared lens data is reused)"),
    ] = None,
    duration: Annotated[
        int, typer.Option(help="seconds of sustained ingest and of the mixed run")
    ] = 60,
    out: Annotated[Path, typer.Option(help="where bench-report.json/.md and plots go")] = Path("."),
    scale: Annotated[
        str, typer.Option(help="full (the issue's sizes) or tiny (a smoke run)")
    ] = "full",
    users: Annotated[int | None, typer.Option(help="mixed-run users (default 100)")] = None,
    block_cache_mb: Annotated[
        float, typer.Option(help="the bench server's uncompressed cache (0: off)")
    ] = BLOCK_CACHE_MB,
) -> None:
    """Measure ingest, lens latency, mixed load, storage and concurrency; write a report."""
    if scenario == "all":
        chosen = list(SCENARIOS)
    else:
        chosen = [s.strip() for s in scenario.split(",") if s.strip()]
        bad = [s for s in chosen if s not in SCENARIOS + EXTRA_SCENARIOS]
        if bad or not chosen:
            names = ", ".join(SCENARIOS + EXTRA_SCENARIOS)
            console.print(f"[red]unknown scenario {scenario!r}; use {names}, all")
            raise typer.Exit(2)
    if scale not in ("full", "tiny"):
        console.print("[red]--scale is full or tiny")
        raise typer.Exit(2)
    cfg = BenchConfig.full(duration) if scale == "full" else BenchConfig.tiny(duration)
    if users is not None:
        cfg.mixed_users = users
    if block_cache_mb < 0:
        console.print("[red]--block-cache-mb must be 0 or more")
        raise typer.Exit(2)
    cfg.block_cache_mb = block_cache_mb
    run_bench(chosen, cfg, data, out, command=" ".join(["lenshouse", *sys.argv[1:]]))


def load(
    url: Annotated[str, typer.Option(help="lenshouse server")] = "http://127.0.0.1:8080",
    users: Annotated[int, typer.Option(help="simultaneous closed-loop users")] = 100,
    duration: Annotated[float, typer.Option(help="seconds of load")] = 60.0,
    seed: Annotated[int, typer.Option()] = 0,
    think: Annotated[float, typer.Option(help="seconds each user waits between lenses")] = 1.0,
    mix: Annotated[
        str, typer.Option(help="windows and weights, e.g. 10s:0.35,1m:0.3,1h:0.2,1d:0.15")
    ] = "10s:0.35,1m:0.3,1h:0.2,1d:0.15",
    sensors: Annotated[str, typer.Option(help="pool of sensor ids: 1-1000 or 1,2,3")] = "1-1000",
    max_sensors: Annotated[int, typer.Option(help="each lens asks for 1..this many")] = 10,
    points: Annotated[int, typer.Option()] = 2500,
    span: Annotated[
        str | None,
        typer.Option(help="place windows at random inside START-END (epoch ms), not ending now"),
    ] = None,
    tenant: Annotated[str, typer.Option()] = "default",
    answer: Annotated[str, typer.Option(help="lens answer format: json or arrow")] = "json",
    out: Annotated[Path | None, typer.Option(help="write the result (with samples) here")] = None,
) -> None:
    """Query load: N closed-loop users asking lenses of a running server."""
    from rich.table import Table

    from lenshouse.generators.load import LoadConfig, parse_mix, run_load

    try:
        pool = _parse_ids(sensors)
        windows = parse_mix(mix)
        where = tuple(int(x) for x in span.split("-", 1)) if span else None
        if answer not in ("json", "arrow"):
            raise ValueError(f"--answer must be json or arrow, got {answer!r}")
    except ValueError as e:
        console.print(f"[red]{e}")
        raise typer.Exit(2) from None
    cfg = LoadConfig(
        url=url,
        users=users,
        duration=duration,
        think=think,
        mix=windows,
        sensors=pool,
        max_sensors=max_sensors,
        points=points,
        span=where,  # type: ignore[arg-type]
        seed=seed,
        tenant=tenant,
        answer=answer,
    )

    def tick(t: float, samples: list) -> None:
        if int(t) % 5 == 0 and samples:
            errors = sum(1 for s in samples if s.status != 200)
            console.print(f"  {t:5.0f} s: {len(samples)} requests, {errors} errors")

    result = run_load(cfg, on_tick=tick)
    t = Table(title=f"{users} users, {result.requests} requests in {result.elapsed:.1f} s")
    cols = ("window", "requests", "errors", "p50", "p95", "p99", "server p50", "server CPU/lens")
    for col in cols:
        t.add_column(col, justify="right")
    doc = result.to_dict()
    for name, w in [*doc["by_window"].items(), ("all", doc)]:
        lat = w["latency_ms"]
        t.add_row(
            name,
            str(w["requests"]),
            str(w["errors"]),
            *(f"{lat[q]:.1f} ms" for q in ("p50", "p95", "p99")),
            f"{w['server_ms']['p50']:.1f} ms",
            f"{w['server_cpu_ms_per_lens']:.1f} ms",
        )
    console.print(t)
    for kind, n in result.error_kinds().items():
        console.print(f"[red]{n} × {kind}")
    if out is not None:
        import json

        out.write_text(json.dumps(result.to_dict(samples=True)))


def _parse_ids(text: str) -> tuple[int, ...]:
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            ids += range(int(lo), int(hi) + 1)
        elif part:
            ids.append(int(part))
    if not ids:
        raise ValueError("no sensor ids")
    return tuple(ids)


def app() -> typer.Typer:
    """A stand-alone CLI (``python -m lenshouse.bench``) until the main one registers these."""
    cli = typer.Typer(add_completion=False, no_args_is_help=True)
    cli.command()(bench)
    cli.command()(load)
    return cli
