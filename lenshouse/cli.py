"""The ``lenshouse`` command line."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import threading
import time
from pathlib import Path

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lenshouse.node import DEFAULT_DATA_DIR, Node
from lenshouse.storage.backend import BLOCK_CACHE_MB
from lenshouse.tenancy.client import TOKEN_ENV

app = typer.Typer(
    help="lenshouse: a time-series store for high-frequency sensors on ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(text: str) -> int:
    """'10s', '1m', '1h', '1d', '250ms' → milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*", text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration like 10s, 1m, 1h, 1d")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_seconds(text: str) -> int:
    """A duration in whole seconds ('0s' allowed)."""
    ms = parse_duration_ms(text)
    if ms % 1000:
        raise typer.BadParameter(f"{text!r}: use whole seconds (data is sent one second at a time)")
    return ms // 1000


def _serve_in_thread(node: Node, host: str, port: int, auth=None) -> uvicorn.Server:
    from lenshouse.api.app import KEEP_ALIVE_S, create_app

    config = uvicorn.Config(
        create_app(node, auth),
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise typer.Exit(_fail(f"the HTTP server could not start on {host}:{port}"))
        time.sleep(0.05)
    server.thread = thread  # type: ignore[attr-defined]
    return server


def _fail(message: str) -> int:
    err_console.print(f"[red]error:[/red] {message}")
    return 1


def _open_node(data: Path, **kw) -> Node:
    from lenshouse.storage.backend import StorageError

    try:
        return Node(data, **kw).start()
    except StorageError as e:
        raise typer.Exit(_fail(str(e))) from None


def _tiering(cold_dir: Path | None, hot: str, clickhouse: str | None):
    if cold_dir is None:
        return None
    if clickhouse:
        console.print("[red]--cold-dir is for the embedded store[/red]")
        raise typer.Exit(2)
    from lenshouse.storage.tiering import Tiering

    return Tiering(cold_dir, parse_duration_ms(hot))


def _generator_process(url: str, sensors: int, rate_hz: int, seconds: int, start_ms: int) -> None:
    from lenshouse.generators.sender import run
    from lenshouse.generators.signals import Fleet

    run(url, Fleet(sensors=sensors, rate_hz=rate_hz, start_ms=start_ms), seconds)


@app.command()
def demo(
    data: Path = typer.Option(DEFAULT_DATA_DIR, help="data directory"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080),
    sensors: int = typer.Option(1000, help="number of generated sensors"),
    rate_hz: int = typer.Option(1000, help="samples per second per sensor (1..1000)"),
    duration: str = typer.Option("0s", help="stop after this long (0s: run until Ctrl-C)"),
) -> None:
    """Run storage, the HTTP server and a sensor generator feeding it."""
    seconds = parse_seconds(duration)
    if not 1 <= rate_hz <= 1000:
        raise typer.Exit(_fail("--rate-hz must be between 1 and 1000"))
    node = _open_node(data)
    try:
        # The demo's generator writes without a token: the demo runs without auth.
        server = _serve_in_thread(node, host, port, _auth(data, host, False))
    except BaseException:
        node.stop()
        raise
    url = f"http://{host}:{port}"
    start_ms = int(time.time()) * 1000
    run_for = seconds if seconds > 0 else 10**9
    gen = mp.get_context("spawn").Process(
        target=_generator_process,
        args=(url, sensors, rate_hz, run_for, start_ms),
        daemon=True,
    )
    gen.start()
    console.print(f"[bold]lenshouse demo[/bold]: {sensors} sensors × {rate_hz} Hz → {url}")
    console.print(f"data in {data.resolve()}; storage: chDB (embedded ClickHouse)")
    console.print(
        f"query:  lenshouse lens --url {url} --sensors 1,2,3 --last 1m\n"
        f"        curl '{url}/v1/lens?sensors=1,2&start={start_ms}&end={start_ms + 60_000}'\n"
        f"chart:  {url}/    metrics: {url}/metrics    Ctrl-C stops"
    )
    ing = node.ingestor
    t_end = time.monotonic() + seconds if seconds > 0 else float("inf")
    prev = (time.monotonic(), ing.points_accepted, ing.loader.stats.rows_loaded)
    try:
        while time.monotonic() < t_end:
            time.sleep(max(0.0, min(1.0, t_end - time.monotonic())))
            now, acc, loaded = time.monotonic(), ing.points_accepted, ing.loader.stats.rows_loaded
            dt = max(now - prev[0], 1e-6)
            console.print(
                f"accepted {(acc - prev[1]) / dt:>10,.0f}/s"
                f"  loaded {(loaded - prev[2]) / dt:>10,.0f}/s"
                f"  total {loaded:>12,}  lag {ing.loader.lag_seconds():4.2f}s",
                soft_wrap=True,
            )
            prev = (now, acc, loaded)
            if not gen.is_alive() and seconds == 0:
                console.print("[yellow]generator stopped[/yellow]")
                break
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        gen.terminate()
        gen.join(5)
        server.should_exit = True
        server.thread.join(10)  # type: ignore[attr-defined]
        node.stop()
    console.print(f"stopped; {node.ingestor.loader.stats.rows_loaded:,} points loaded this run")


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _auth(data: Path, host: str, wanted: bool | None):
    """The server's auth: tokens from ``<data>/tenants.json``, or none (said aloud)."""
    from lenshouse.api.auth import Auth
    from lenshouse.tenancy.registry import ADMIN, FileRegistry

    on = not _is_loopback(host) if wanted is None else wanted
    if not on:
        console.print(
            "[yellow]auth is off: any client on this machine picks any tenant with X-Tenant"
            " (serve --auth turns tokens on)[/yellow]"
        )
        return Auth(None)
    registry = FileRegistry(data)
    tenants = [t for t in registry.tenants() if t != ADMIN]
    console.print(
        f"auth is on: {len(tenants)} tenant(s) in {registry.path}"
        " (lenshouse tenant create NAME adds one)"
    )
    return Auth(registry)


@app.command()
def serve(
    data: Path = typer.Option(DEFAULT_DATA_DIR, help="data directory"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080),
    flush_interval: float = typer.Option(1.0, help="seconds the loader gathers before inserting"),
    dedup_pages: int = typer.Option(
        65_536, help="pages (4096 ms × 1 sensor, 512 bytes each) of the in-memory dedup index"
    ),
    lens_cache_mb: float = typer.Option(
        256, help="memory for cached lens chunks (0 turns the cache off)"
    ),
    head_seconds: float = typer.Option(
        65, help="seconds of newest points kept in memory for live views (16 bytes a point)"
    ),
    head_max_mb: float = typer.Option(
        3072, help="memory bound of the head; past it the head covers fewer seconds"
    ),
    block_cache_mb: float = typer.Option(
        BLOCK_CACHE_MB,
        help="ClickHouse's cache of decoded blocks that lenses read (0 turns it off)",
    ),
    clickhouse: str = typer.Option(
        None,
        help="native TCP addresses HOST:PORT[,HOST:PORT…] of a ClickHouse cluster's servers"
        " (instead of the embedded engine); the data directory then holds only the log",
    ),
    cluster: str = typer.Option("lenshouse", help="the cluster's name in remote_servers"),
    database: str = typer.Option("default", help="database of lenshouse's tables on the cluster"),
    insert_quorum: int = typer.Option(
        None, help="replicas each insert waits for (default: all replicas of a shard)"
    ),
    connect_wait: float = typer.Option(60, help="seconds to wait for the cluster at start"),
    auth: bool = typer.Option(
        None,
        "--auth/--no-auth",
        help="bearer tokens per tenant (lenshouse tenant create); default: on unless the"
        " server listens on loopback only",
        show_default=False,
    ),
    quota_points_per_s: float = typer.Option(
        0, help="each tenant's write quota, points a second (0: none); then 429"
    ),
    quota_lens_per_s: float = typer.Option(
        0, help="each tenant's lens and export requests a second (0: none); then 429"
    ),
    quota_sensors: int = typer.Option(0, help="sensors each tenant may have (0: any number)"),
    maintain_every: str = typer.Option(
        "1h", help="run retention this often (0: never; lenshouse maintain runs it once)"
    ),
    cold_dir: Path = typer.Option(
        None, help="a second disk (directory): partitions older than --hot move there"
    ),
    hot: str = typer.Option("7d", help="with --cold-dir: how long partitions stay hot"),
    background_nice: int = typer.Option(
        10, help="nice value of chDB's merge threads, so lenses go first (0: as lenses)"
    ),
) -> None:
    """Run storage and the HTTP server (embedded chDB, or a ClickHouse cluster)."""
    if min(lens_cache_mb, head_seconds, head_max_mb, block_cache_mb) < 0:
        console.print(
            "[red]--lens-cache-mb, --head-seconds, --head-max-mb and --block-cache-mb"
            " must be 0 or more[/red]"
        )
        raise typer.Exit(2)
    if not 0 <= background_nice <= 19:
        console.print("[red]--background-nice must be 0..19[/red]")
        raise typer.Exit(2)
    if min(quota_points_per_s, quota_lens_per_s, quota_sensors) < 0:
        console.print("[red]quotas (--quota-…) must be 0 or more[/red]")
        raise typer.Exit(2)
    store = None
    if clickhouse:
        from lenshouse.roles.cli import cluster_store

        store = cluster_store(clickhouse, cluster, database, insert_quorum, connect_wait)
    node = _open_node(
        data,
        store=store,
        flush_interval=flush_interval,
        dedup_pages=dedup_pages,
        lens_cache_mb=lens_cache_mb,
        head_seconds=head_seconds,
        head_max_mb=head_max_mb,
        block_cache_mb=block_cache_mb,
        tiering=_tiering(cold_dir, hot, clickhouse),
        background_nice=background_nice,
    )
    from lenshouse.api.app import KEEP_ALIVE_S, create_app
    from lenshouse.retention.maintain import Schedule

    where = f"cluster {cluster} via {clickhouse}" if clickhouse else str(data.resolve())
    console.print(f"lenshouse serving {where} on http://{host}:{port}")
    every = parse_duration_ms(maintain_every) / 1000 if maintain_every.strip() != "0" else 0
    schedule = Schedule(node.store, node.horizons, every).start() if every else None
    try:
        from lenshouse.tenancy.quotas import Quotas

        app = create_app(
            node,
            _auth(data, host, auth),
            Quotas(quota_points_per_s, quota_lens_per_s, sensors=quota_sensors),
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)
    finally:
        if schedule is not None:
            schedule.stop()
        node.stop()


@app.command()
def generate(
    url: str = typer.Option(
        "http://127.0.0.1:8080",
        help="lenshouse server, or several gateways A,B,… (batches spread, failover)",
    ),
    sensors: int = typer.Option(1000),
    rate_hz: int = typer.Option(1000),
    duration: str = typer.Option("60s", help="how much data to send"),
    tenant: str = typer.Option("default"),
    realtime: bool = typer.Option(
        True, help="pace at one second per second; --no-realtime sends as fast as possible"
    ),
    start_ms: int = typer.Option(0, help="timestamp of the first sample (default: now)"),
    delay: float = typer.Option(0.0, help="hold each batch this many seconds"),
    reorder: bool = typer.Option(False, help="shuffle the points inside each batch"),
    duplicate: float = typer.Option(0.0, help="fraction of batches sent twice"),
    seed: int = typer.Option(0),
) -> None:
    """Feed a running server with generated sensor data."""
    from lenshouse.generators.sender import MiddleLayer, run
    from lenshouse.generators.signals import Fleet

    seconds = parse_seconds(duration)
    try:
        fleet = Fleet(
            sensors=sensors,
            rate_hz=rate_hz,
            seed=seed,
            start_ms=start_ms or int(time.time() - (0 if realtime else seconds)) * 1000,
        )
    except ValueError as e:
        raise typer.Exit(_fail(str(e))) from None
    middle = MiddleLayer(delay_s=delay, reorder=reorder, duplicate=duplicate, seed=seed)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} s"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("sending", total=seconds)
        try:
            stats = run(
                url,
                fleet,
                seconds,
                tenant=tenant,
                realtime=realtime,
                middle=middle,
                on_second=lambda k, s: progress.update(task, completed=k + 1),
            )
        except (RuntimeError, TimeoutError) as e:
            raise typer.Exit(_fail(str(e))) from None
    console.print(
        f"sent {stats.points:,} points in {stats.batches} batches over {stats.seconds:.1f} s "
        f"({stats.points / max(stats.seconds, 1e-9):,.0f} pts/s, {stats.retries} retries,"
        f" {stats.failovers} to another server)"
    )


@app.command()
def lens(
    sensors: str = typer.Option(..., help="comma-separated ids, e.g. 1,2,3"),
    url: str = typer.Option("http://127.0.0.1:8080"),
    last: str = typer.Option("1m", help="window ending now, e.g. 10s, 1h, 1d"),
    start: int = typer.Option(None, help="window start (epoch ms), instead of --last"),
    end: int = typer.Option(None, help="window end (epoch ms)"),
    points: int = typer.Option(2500),
    tenant: str = typer.Option("default"),
    rows: int = typer.Option(5, help="buckets to print per sensor"),
) -> None:
    """Print a lens from a running server."""
    from lenshouse.client import Client, LenshouseError

    end = end if end is not None else int(time.time() * 1000)
    start = start if start is not None else end - parse_duration_ms(last)
    try:
        ids = [int(x) for x in sensors.split(",") if x.strip()]
    except ValueError:
        raise typer.Exit(_fail(f"--sensors must be comma-separated ids, got {sensors!r}")) from None
    token = os.environ.get(TOKEN_ENV) or None
    with Client(url, token=token, tenant=tenant, retries=1) as lh:
        try:
            t0 = time.perf_counter()
            lens = lh.lens(ids, start, end, points=points)
            ms = (time.perf_counter() - t0) * 1000
        except LenshouseError as e:
            what = f"cannot reach {url}: {e.message}" if e.status == 0 else str(e)
            raise typer.Exit(_fail(what)) from None
    console.print(f"window [{lens.start}, {lens.end}) step {lens.step} ms, {ms:.1f} ms")
    for s in lens.series:
        t = Table(title=f"sensor {s.sensor}: {len(s.t)} buckets")
        for col in ("t", "avg", "min", "max", "count"):
            t.add_column(col, justify="right")
        for i in list(range(len(s.t)))[-rows:]:
            t.add_row(
                str(s.t[i]),
                f"{s.avg[i]:.6g}",
                f"{s.min[i]:.6g}",
                f"{s.max[i]:.6g}",
                str(s.count[i]),
            )
        console.print(t)


@app.command()
def scenario(
    name: str = typer.Argument(..., help="replay, crash or late (one server), or cluster"),
    data: Path = typer.Option(None, help="data directory (default: a new temporary one)"),
    small: bool = typer.Option(False, help="a quick, smaller run (as in the test suite)"),
    seed: int = typer.Option(0),
    fault: str = typer.Option(None, help="cluster: the fault(s), comma-separated"),
    all_faults: bool = typer.Option(False, "--all", help="cluster: every fault, one after another"),
    dir: Path = typer.Option(
        Path("lenshouse-cluster"), help="cluster: the directory of cluster up"
    ),
    duration: str = typer.Option("60s", help="cluster: how long each fault is held"),
    sensors: int = typer.Option(200, help="cluster: sensors streamed"),
    rate_hz: int = typer.Option(1000, help="cluster: samples per sensor per second"),
    users: int = typer.Option(20, help="cluster: closed-loop lens users"),
    out: Path = typer.Option(Path("scenario-report"), help="cluster: where the report goes"),
) -> None:
    """Run a fault-injection scenario against real server processes and print a verdict."""
    import tempfile

    from lenshouse.scenarios.runner import SCENARIOS, run

    if name == "cluster":
        raise typer.Exit(
            _cluster_scenario(
                fault, all_faults, dir, duration, sensors, rate_hz, users, out, small, seed
            )
        )
    if name not in SCENARIOS:
        raise typer.Exit(_fail(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}"))
    with tempfile.TemporaryDirectory(prefix=f"lenshouse-{name}-") as tmp:
        v = run(name, data or Path(tmp) / "data", small=small, seed=seed, say=console.print)
    for note in v.notes:
        console.print(f"  {note}", soft_wrap=True)
    print(v.line())
    raise typer.Exit(0 if v.ok else 1)


def _cluster_scenario(
    fault: str | None,
    all_faults: bool,
    dir: Path,
    duration: str,
    sensors: int,
    rate_hz: int,
    users: int,
    out: Path,
    small: bool,
    seed: int,
) -> int:
    import dataclasses

    from lenshouse.cluster.record import ClusterError
    from lenshouse.scenarios import cluster, cluster_report
    from lenshouse.scenarios.faults import FAULTS, iptables_works

    names = list(FAULTS) if all_faults else [f for f in (fault or "").split(",") if f]
    if not names:
        return _fail(f"name a --fault ({', '.join(FAULTS)}) or ask for --all")
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        return _fail(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULTS)}")
    if not iptables_works():
        skipped = [n for n in names if FAULTS[n].needs_iptables]
        if skipped:
            console.print(f"skipping {', '.join(skipped)}: needs iptables and cgroup v2 (root)")
            names = [n for n in names if n not in skipped]
    cfg = cluster.SMALL if small else cluster.ClusterConfig()
    if not small:
        cfg = dataclasses.replace(
            cfg,
            fault_s=parse_duration_ms(duration) / 1000,
            sensors=sensors,
            rate_hz=rate_hz,
            users=users,
        )
    cfg = dataclasses.replace(cfg, seed=seed)
    try:
        verdicts = cluster.run(dir, names, cfg, say=console.print)
    except (ClusterError, RuntimeError) as e:
        return _fail(str(e))
    report = cluster_report.write(verdicts, cfg, out)
    for v in verdicts:
        print(v.line())
    console.print(f"report: {report}")
    return 0 if all(v.ok for v in verdicts) else 1


def _register_bench() -> None:
    from lenshouse.bench.commands import bench, load

    app.command(help="Measure ingest, lens latency, mixed load and storage; write a report.")(bench)
    app.command(help="Run N closed-loop lens users against a running server.")(load)


_register_bench()


def _register_cluster() -> None:
    from lenshouse.bench.brief import bench_brief
    from lenshouse.bench.cluster import bench_cluster
    from lenshouse.bench.pipeline import bench_pipeline
    from lenshouse.cluster.cli import cluster_app
    from lenshouse.deploy.cli import capacity_command, deploy_app
    from lenshouse.retention.cli import maintain_command, retention_app
    from lenshouse.roles.cli import register
    from lenshouse.tenancy.cli import tenant_app

    app.add_typer(cluster_app, name="cluster")
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(retention_app, name="retention")
    app.command("maintain")(maintain_command)
    app.command("capacity")(capacity_command)
    app.add_typer(deploy_app, name="deploy")
    app.command("bench-cluster")(bench_cluster)
    app.command("bench-pipeline")(bench_pipeline)
    app.command("bench-brief")(bench_brief)
    register(app)


_register_cluster()

if __name__ == "__main__":
    app()
