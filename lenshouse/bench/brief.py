"""``lenshouse bench-brief``: the brief's workload, run with the public commands.

1000 sensors × 1 kHz arrive while 100 users look at lenses. The bench starts
nothing a user would not: ``lenshouse serve`` (embedded) or the cluster of
``lenshouse cluster up`` (``--cluster DIR``), one ``lenshouse generate`` to
every gateway, and after a warm-up one ``lenshouse load`` per lens server
with the users split between them, each its own process. What it adds is
the bookkeeping: the load files merged, the ingest lag sampled every second
from the servers' ``/metrics``, the CPU of every process (by role) over the
measured minute, and a report (JSON, Markdown and a plot). So its figures
are the ones a user gets running the same commands by hand.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import typer
from prometheus_client.parser import text_string_to_metric_families

from lenshouse.bench.console import console
from lenshouse.generators.load import LoadResult, percentile

LAG_METRICS = ("lenshouse_ingest_lag_seconds", "lenshouse_log_lag_seconds")
LOADED_METRIC = "lenshouse_points_loaded"


@dataclass
class Target:
    """Where the workload goes, and every process whose CPU counts (pid → role)."""

    gateways: list[str]
    lens_servers: list[str]
    metrics: list[str]  # servers whose /metrics tell lag and points loaded
    pids: dict[int, str]
    token: str | None = None
    mode: str = "embedded"
    owned: list[subprocess.Popen] = field(default_factory=list)


def _lenshouse(*args: str) -> list[str]:
    return [sys.executable, "-m", "lenshouse", *args]


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    for _ in range(int(timeout / 0.5)):
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy within {timeout:.0f} s")


def embedded(data: Path, port: int, log: Path) -> Target:
    """``lenshouse serve`` on ``data``, as a process of its own."""
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        _lenshouse("serve", "--data", str(data), "--port", str(port)),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    _wait_healthy(url)
    return Target([url], [url], [url], {proc.pid: "server"}, owned=[proc])


def cluster(root: Path) -> Target:
    """The running cluster of ``lenshouse cluster up --dir root``."""
    doc = json.loads((root / "cluster.json").read_text())
    pids = {int(n["pid"]): n["role"] for n in doc["nodes"] if n.get("pid")}
    loaders = [n["url"] for n in doc["nodes"] if n["role"] == "loader" and n.get("url")]
    return Target(
        list(doc["gateways"]),
        list(doc["lens_servers"]),
        loaders,
        pids,
        token=doc.get("admin_token"),
        mode="cluster",
    )


def _metric(url: str, names: tuple[str, ...]) -> list[float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    wanted = {*names, *(f"{n}_total" for n in names)}  # counters' samples end in _total
    return [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name in wanted
    ]


class Sampler(threading.Thread):
    """Every second: the largest ingest lag and the points loaded, from /metrics."""

    def __init__(self, target: Target, t0: float) -> None:
        super().__init__(daemon=True)
        self.target, self.t0 = target, t0
        self.rows: list[tuple[float, float, float]] = []  # (t, lag s, points loaded)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                lag = max((v for u in self.target.metrics for v in _metric(u, LAG_METRICS)),
                          default=math.nan)  # fmt: skip
                loaded = sum(v for u in self.target.metrics for v in _metric(u, (LOADED_METRIC,)))
            except httpx.HTTPError:
                lag, loaded = math.nan, math.nan
            self.rows.append((time.monotonic() - self.t0, lag, loaded))


def _cpu(pids: dict[int, str]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            out[pid] = math.nan
    return out


def _machine() -> dict[str, float]:
    """The whole machine's CPU seconds so far: busy (every process, the kernel's
    too), idle, and stolen by the hypervisor (where the host has one)."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    steal = getattr(t, "steal", 0.0)
    return {"busy": sum(t) - idle - steal, "idle": idle, "steal": steal}


def _yielded(target: Target) -> int | None:
    """Lenses the cluster's lens servers ran paced behind a loader catching up."""
    if target.mode != "cluster":
        return None
    n = 0
    for url in target.lens_servers:
        try:
            n += int(httpx.get(url + "/healthz", timeout=5).json()["catch_up"]["lenses_yielded"])
        except (httpx.HTTPError, KeyError, ValueError):
            return None
    return n


def run_brief(
    target: Target,
    sensors: int,
    rate_hz: int,
    users: int,
    think: float,
    duration: float,
    warmup: float,
    workdir: Path,
) -> dict:
    env = {**os.environ, **({"LENSHOUSE_TOKEN": target.token} if target.token else {})}
    t0 = time.monotonic()
    sampler = Sampler(target, t0)
    sampler.start()
    gen_seconds = int(warmup + duration + 10)
    gen = subprocess.Popen(
        _lenshouse("generate", "--url", ",".join(target.gateways), "--sensors", str(sensors),
                   "--rate-hz", str(rate_hz), "--duration", f"{gen_seconds}s"),
        stdout=(workdir / "generate.log").open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    pids = {**target.pids, gen.pid: "generator"}
    time.sleep(warmup)
    n = len(target.lens_servers)
    split = [users // n + (1 if i < users % n else 0) for i in range(n)]
    files = [workdir / f"load-{i}.json" for i in range(n)]
    loads = [
        _start_load(url, k, i, think, duration, sensors, f, workdir, env)
        for i, (url, k, f) in enumerate(zip(target.lens_servers, split, files))
        if k
    ]
    pids |= {p.pid: "load" for p in loads}
    t_load = time.monotonic() - t0
    cpu0, machine0, yielded0 = _cpu(pids), _machine(), _yielded(target)
    if not loads:  # nobody reading: the write path alone, over the same span
        time.sleep(duration)
    for p in loads:
        p.wait(duration + 120)
    cpu1, machine1, yielded1 = _cpu(pids), _machine(), _yielded(target)
    t_end = time.monotonic() - t0
    gen.terminate()
    gen.wait(30)
    sampler.done.set()
    sampler.join(5)
    results = [LoadResult.from_dict(json.loads(f.read_text())) for f in files if f.exists()]
    doc = _report(target, sensors, rate_hz, users, think, results, sampler.rows, pids,
                  cpu0, cpu1, (t_load, t_end))  # fmt: skip
    span = t_end - t_load
    doc["machine"] = {
        "cores": psutil.cpu_count(),
        **{k: round((machine1[k] - machine0[k]) / span, 2) for k in machine0},
    }
    doc["lenses_yielded"] = (
        yielded1 - yielded0 if yielded0 is not None and yielded1 is not None else None
    )
    return doc


def _start_load(url, users, i, think, duration, sensors, out, workdir, env) -> subprocess.Popen:
    args = {"--url": url, "--users": users, "--think": think, "--duration": duration,
            "--seed": i, "--sensors": f"1-{sensors}", "--out": out}  # fmt: skip
    return subprocess.Popen(
        _lenshouse("load", *(str(x) for kv in args.items() for x in kv)),
        stdout=(workdir / f"load-{i}.log").open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _report(target, sensors, rate_hz, users, think, results, lag_rows, pids, cpu0, cpu1, span):
    samples = [s for r in results for s in r.samples]
    lo, hi = span
    during = [r for r in lag_rows if lo <= r[0] <= hi]
    loaded = [r[2] for r in during if not math.isnan(r[2])]
    points = (loaded[-1] - loaded[0]) if len(loaded) > 1 else math.nan
    seconds = hi - lo
    by_role: dict[str, float] = {}
    if results:
        by_role["load"] = sum(r.client_cpu_seconds for r in results)
    for pid, role in pids.items():
        if role == "load":
            continue  # gone before it could be read: the load reports its own CPU
        used = cpu1.get(pid, math.nan) - cpu0.get(pid, math.nan)
        if not math.isnan(used):
            by_role[role] = by_role.get(role, 0.0) + used
    ok = [s for s in samples if s.status == 200]
    lens_role = "server" if target.mode == "embedded" else "lens"
    errors: dict[str, int] = {}
    for s in samples:
        if s.status != 200:
            kind = f"{s.status} {s.error[:80]}".strip()
            errors[kind] = errors.get(kind, 0) + 1
    windows = {}
    for name in sorted({s.window for s in samples}, key=_window_order):
        mine = [s for s in samples if s.window == name]
        windows[name] = _latencies(mine)
    lags = [r[1] for r in during if not math.isnan(r[1])]
    store_roles = [r for r in by_role if r not in ("generator", "load")]
    store_cpu = sum(by_role[r] for r in store_roles)
    return {
        "mode": target.mode,
        "sensors": sensors,
        "rate_hz": rate_hz,
        "offered_points_per_s": sensors * rate_hz,
        "users": users,
        "think_s": think,
        "seconds": round(seconds, 1),
        "lenses": _latencies(samples),
        "by_window": windows,
        "errors": errors,
        "lenses_per_s": round(len(ok) / seconds, 1) if seconds else math.nan,
        "loaded_points_per_s": round(points / seconds) if seconds and points == points else None,
        "lag_s": {
            "median": round(percentile(lags, 50), 2) if lags else None,
            "max": round(max(lags), 2) if lags else None,
        },
        "lag_series": [(round(t, 1), lag) for t, lag, _ in lag_rows],
        "cpu_core_s": {r: round(v, 1) for r, v in sorted(by_role.items())},
        "cpu_cores": {r: round(v / seconds, 2) for r, v in sorted(by_role.items())},
        "cpu_core_s_per_1m_points": (
            {r: round(v / (points / 1e6), 3) for r, v in sorted(by_role.items())} if points else {}
        ),
        "store_core_s_per_1m_points": round(store_cpu / (points / 1e6), 2) if points else None,
        "lens_core_ms_per_lens": (
            round(1000 * by_role.get(lens_role, math.nan) / len(ok), 1) if ok else None
        ),
        "samples": [
            (round(s.t + lo, 2), s.window, s.status, round(s.latency_ms, 1)) for s in samples
        ],
    }


def _window_order(name: str) -> float:
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for u in ("ms", "s", "m", "h", "d"):
        if name.endswith(u) and name[: -len(u)].isdigit():
            return int(name[: -len(u)]) * units[u]
    return math.inf


def _latencies(samples) -> dict:
    ok = [s for s in samples if s.status == 200]
    client = [s.latency_ms for s in ok]
    server = [s.server_ms for s in ok if s.server_ms == s.server_ms]
    cpu = [s.server_cpu_ms for s in ok if s.server_cpu_ms == s.server_cpu_ms]
    q = (50, 95, 99)
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "client_ms": {f"p{p}": round(percentile(client, p), 1) if client else None for p in q},
        "server_ms": {f"p{p}": round(percentile(server, p), 1) if server else None for p in q},
        # The request thread's CPU as the server reports it (X-Lens-Cpu-Ms).
        "server_cpu_ms_per_lens": round(sum(cpu) / len(cpu), 2) if cpu else None,
    }


def markdown(doc: dict, command: str) -> str:
    lines = [
        f"# The brief's workload, {doc['mode']}",
        "",
        f"`{command}`",
        "",
        f"{doc['sensors']} sensors × {doc['rate_hz']} Hz offered"
        f" ({doc['offered_points_per_s']:,} points/s), {doc['users']} users thinking"
        f" {doc['think_s']} s, {doc['seconds']} s measured.",
        "",
        "| window | requests | errors | client p50 | p95 | p99 | server p50 | p95 | p99"
        " | request thread CPU per lens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, w in [*doc["by_window"].items(), ("all", doc["lenses"])]:
        c, s = w["client_ms"], w["server_ms"]
        lines.append(
            f"| {name} | {w['requests']} | {w['errors']} | "
            + " | ".join(_ms(c[p]) for p in ("p50", "p95", "p99"))
            + " | "
            + " | ".join(_ms(s[p]) for p in ("p50", "p95", "p99"))
            + f" | {_cpu_ms(w.get('server_cpu_ms_per_lens'))} |"
        )
    lines += ["", f"Lenses answered: {doc['lenses_per_s']}/s."]
    for kind, n in doc["errors"].items():
        lines.append(f"- {n} × `{kind}`")
    loaded = doc["loaded_points_per_s"]
    lines += [
        "",
        f"Loaded: {loaded:,} points/s; ingest lag median {doc['lag_s']['median']} s,"
        f" max {doc['lag_s']['max']} s."
        if loaded
        else "Loaded: not reported by the servers.",
        "",
        "| process role | core-seconds | cores | core-s per 1M points loaded |",
        "|---|---|---|---|",
        *(
            f"| {r} | {v} | {doc['cpu_cores'][r]} | {doc['cpu_core_s_per_1m_points'].get(r, '–')} |"
            for r, v in doc["cpu_core_s"].items()
        ),
        "",
        _machine_line(doc),
        "",
        f"Store CPU per 1M points loaded (every process but the generator and the load"
        f" users, lenses included): {doc['store_core_s_per_1m_points']} core-s"
        + (
            f"; CPU of the {'server' if doc['mode'] == 'embedded' else 'lens servers'}"
            f" per lens answered: {doc['lens_core_ms_per_lens']} core-ms"
            + (" (it loads too)." if doc["mode"] == "embedded" else ".")
            if doc["lens_core_ms_per_lens"] is not None
            else " (nobody read)."
        ),
    ]
    return "\n".join(lines) + "\n"


def _machine_line(doc: dict) -> str:
    """How full the machine was: latencies past the servers' own time are waits
    for a core once every process together wants them all."""
    m = doc.get("machine") or {}
    if not m:
        return ""
    line = (
        f"The machine: {m['cores']} cores, {m['busy']} busy over the span"
        f" (the processes above {round(sum(doc['cpu_cores'].values()), 2)}),"
        f" {m['idle']} idle, {m['steal']} stolen by the host."
    )
    if doc.get("lenses_yielded"):
        line += f" Lenses run paced behind a loader catching up: {doc['lenses_yielded']}."
    return line


def _ms(v) -> str:
    return "–" if v is None else f"{v:.0f} ms"


def _cpu_ms(v) -> str:
    return "–" if v is None else f"{v:.1f} ms"


def plot(doc: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if doc["samples"]:
        fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        _latency_panel(a, doc)
    else:  # nobody read: the lag alone
        fig, b = plt.subplots(1, 1, figsize=(9, 3.5))
    lag = [(t, v) for t, v in doc["lag_series"] if v == v]
    if lag:
        b.plot(*zip(*lag), color="black")
    b.set_ylabel("ingest lag (s)")
    b.set_xlabel("seconds since the generator started")
    fig.suptitle(
        f"{doc['mode']}: {doc['offered_points_per_s']:,} points/s offered, {doc['users']} users"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _latency_panel(a, doc: dict) -> None:
    for name in doc["by_window"]:
        pts = [(t, ms) for t, w, st, ms in doc["samples"] if w == name and st == 200]
        if pts:
            a.scatter(*zip(*pts), s=4, label=name)
    bad = [(t, ms) for t, _, st, ms in doc["samples"] if st != 200]
    if bad:
        a.scatter(*zip(*bad), s=8, marker="x", color="red", label="error")
    a.set_yscale("log")
    a.set_ylabel("lens latency, client (ms)")
    a.legend(loc="upper left", fontsize=8, markerscale=3)


def bench_brief(
    cluster_dir: Path = typer.Option(
        None, "--cluster", help="the directory of a running `lenshouse cluster up` (default:"
        " an embedded `lenshouse serve` of its own)",
    ),
    sensors: int = typer.Option(1000),
    rate_hz: int = typer.Option(1000),
    users: int = typer.Option(100, help="lens users over the lens servers (0: nobody reads)"),
    think: float = typer.Option(1.0, help="seconds each user waits between lenses"),
    duration: float = typer.Option(60.0, help="seconds of lens load"),
    warmup: float = typer.Option(45.0, help="seconds of ingest before the users start"),
    data: Path = typer.Option(None, help="embedded: data directory (default: a new one)"),
    port: int = typer.Option(8088, help="embedded: the server's port"),
    out: Path = typer.Option(Path("bench-brief"), help="where brief.json/.md/.png go"),
) -> None:  # fmt: skip
    """The brief's workload (1000 sensors × 1 kHz while 100 users read lenses) through
    the public commands, embedded or on a running cluster; a report per window."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lenshouse-brief-"))
    if cluster_dir is not None:
        if not (cluster_dir / "cluster.json").exists():
            console.print(f"[red]{cluster_dir}/cluster.json not found: run lenshouse cluster up")
            raise typer.Exit(2)
        target = cluster(cluster_dir)
    else:
        target = embedded(data or work / "data", port, out / "serve.log")
    try:
        doc = run_brief(target, sensors, rate_hz, users, think, duration, warmup, work)
    finally:
        for p in target.owned:
            p.terminate()
            p.wait(60)
    command = " ".join(["lenshouse", *sys.argv[1:]])
    (out / "brief.json").write_text(json.dumps({**doc, "command": command}, indent=1))
    (out / "brief.md").write_text(markdown(doc, command))
    plotted = plot(doc, out / "brief.png")
    console.print(markdown(doc, command))
    console.print(f"report: {out}/brief.md, brief.json" + (", brief.png" if plotted else ""))
