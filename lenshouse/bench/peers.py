"""Peers: lenshouse next to VictoriaMetrics and InfluxDB 1.x (Debian's
``victoria-metrics`` and ``influxdb``), on this machine, one server at a
time, given the very same bytes.

For each server, on a fresh data directory on loopback:

* **ingest**: ``peers_clients`` client processes each post the same
  pre-encoded Influx line-protocol bodies (``format_batch_sensors`` sensors ×
  1 s of full-precision floats, 10 + sin + 0.05·N(0,1) printed ``%.17g``,
  three tags, ms timestamps), each its own sensors, as fast as the server
  acknowledges them, until each has sent ``peers_data_s`` seconds of its
  sensors' data. Points per second = all points ÷ the time until the last
  acknowledgement, then until the data is queryable (lenshouse: loaded;
  VictoriaMetrics: ``/internal/force_flush``; InfluxDB answers at once).
* **lens**: 10 sensors over windows of ``peers_window_s`` seconds at random
  offsets inside the data, in 2,500 buckets of 240 ms, asked the
  way each server asks it: ``/v1/lens?step=240`` (avg/min/max/count, exact),
  ``avg_over_time(sensor_value{id=~…}[240ms])`` by ``/api/v1/query_range``
  (avg only, over ``(t − 240 ms, t]``), ``SELECT mean, min, max, count …
  GROUP BY time(240ms), id``. One client (``peers_queries`` lenses), then
  ``concurrency_users`` closed-loop clients for ``peers_concurrency_s``.
* **disk**: ``storage_settle`` seconds after the ingest, the bytes of the
  whole data directory per point stored (for lenshouse also its store's
  active parts alone).

A server that is not installed is reported as missing, not guessed.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from lenshouse.bench.common import BenchConfig, BenchServer, free_port, spawn
from lenshouse.bench.console import console
from lenshouse.bench.ingest import _merged, _start_ms, _text_bodies, text_client
from lenshouse.bench.storage import _dir_bytes
from lenshouse.cluster.processes import serving
from lenshouse.generators.load import summarize

PEERS = ("lenshouse", "victoriametrics", "influxdb")
STEP_MS = 240
LENS_SENSORS = 10


@dataclass
class Peer:
    """A server under test: where it listens, how it is written to and asked."""

    name: str
    url: str
    write_path: str
    data: Path

    def flush(self, client: httpx.Client) -> None:
        """Make everything acknowledged queryable."""

    def lens(self, client: httpx.Client, ids: list[int], start: int, end: int) -> int:
        """Ask 240 ms buckets of ``ids`` over [start, end); the buckets of the first series."""
        raise NotImplementedError

    def store_bytes(self) -> int | None:
        return None

    def stored(self, client: httpx.Client, start: int, end: int) -> int:
        """Points the server holds in [start, end), by its own count."""
        raise NotImplementedError


@dataclass
class _Lenshouse(Peer):
    srv: BenchServer

    def flush(self, client: httpx.Client) -> None:
        if not self.srv.wait_loaded(600):
            raise RuntimeError("lenshouse did not load what it acknowledged within 600 s")

    def lens(self, client: httpx.Client, ids: list[int], start: int, end: int) -> int:
        params = {"sensors": ",".join(map(str, ids)), "start": start, "end": end, "step": STEP_MS}
        r = client.get(self.url + "/v1/lens", params=params)
        r.raise_for_status()
        return len(r.json()["series"][0]["t"])

    def store_bytes(self) -> int:
        return sum(p["bytes_on_disk"] for p in self.srv.parts().values())

    def stored(self, client: httpx.Client, start: int, end: int) -> int:
        return int(self.srv.ingest_counters()["loaded"])


class _Victoria(Peer):
    def flush(self, client: httpx.Client) -> None:
        client.get(self.url + "/internal/force_flush").raise_for_status()

    def lens(self, client: httpx.Client, ids: list[int], start: int, end: int) -> int:
        ids_re = "|".join(map(str, ids))
        params = {
            "query": f'avg_over_time(sensor_value{{id=~"{ids_re}"}}[{STEP_MS}ms])',
            # Prometheus-style points at start + k·step, each over (t − step, t].
            "start": f"{(start + STEP_MS) / 1000:.3f}",
            "end": f"{end / 1000:.3f}",
            "step": f"{STEP_MS}ms",
        }
        r = client.get(self.url + "/api/v1/query_range", params=params)
        r.raise_for_status()
        result = r.json()["data"]["result"]
        return len(result[0]["values"]) if result else 0

    def stored(self, client: httpx.Client, start: int, end: int) -> int:
        query = f"sum(count_over_time(sensor_value[{end - start + 1000}ms]))"
        r = client.get(self.url + "/api/v1/query", params={"query": query, "time": end / 1000})
        r.raise_for_status()
        result = r.json()["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0


class _Influx(Peer):
    def lens(self, client: httpx.Client, ids: list[int], start: int, end: int) -> int:
        ids_re = "|".join(map(str, ids))
        q = (
            "SELECT mean(value), min(value), max(value), count(value) FROM sensor"
            f" WHERE id =~ /^({ids_re})$/ AND time >= {start}ms AND time < {end}ms"
            f" GROUP BY time({STEP_MS}ms), id"
        )
        r = client.get(self.url + "/query", params={"db": "bench", "epoch": "ms", "q": q})
        r.raise_for_status()
        series = r.json()["results"][0].get("series") or []
        return len(series[0]["values"]) if series else 0

    def stored(self, client: httpx.Client, start: int, end: int) -> int:
        q = f"SELECT count(value) FROM sensor WHERE time >= {start}ms AND time < {end}ms"
        r = client.get(self.url + "/query", params={"db": "bench", "q": q})
        r.raise_for_status()
        series = r.json()["results"][0].get("series") or []
        return int(series[0]["values"][0][1]) if series else 0


# -- the servers' processes --------------------------------------------------------


INFLUX_CONF = """reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{data}/meta"
[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false
  max-series-per-database = 0
  max-values-per-tag = 0
[retention]
  enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
"""


@contextlib.contextmanager
def _peer(name: str, data: Path, cfg: BenchConfig) -> Iterator[Peer]:
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    if name == "lenshouse":
        with BenchServer(data / "node", block_cache_mb=cfg.block_cache_mb) as srv:
            yield _Lenshouse(name, srv.url, "/v1/write", data / "node", srv)
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if name == "victoriametrics":
        argv = [
            "victoria-metrics",
            f"-storageDataPath={data / 'vm'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y",
        ]
        with serving(argv, data / "stdout.log", url + "/health"):
            yield _Victoria(name, url, "/write?precision=ms", data / "vm")
        return
    conf = data / "influxdb.conf"
    conf.write_text(INFLUX_CONF.format(rpc=free_port(), data=data, port=port))
    with serving(["influxd", "-config", str(conf)], data / "stdout.log", url + "/ping"):
        httpx.post(url + "/query", params={"q": "CREATE DATABASE bench"}).raise_for_status()
        yield _Influx(name, url, "/write?db=bench&precision=ms", data)


BINARIES = {"victoriametrics": "victoria-metrics", "influxdb": "influxd"}


def installed(name: str) -> bool:
    return name == "lenshouse" or shutil.which(BINARIES[name]) is not None


# -- the measurements --------------------------------------------------------------


def _ingest(peer: Peer, cfg: BenchConfig, workdir: Path, start: int) -> dict:
    n = cfg.format_batch_sensors
    t0 = time.monotonic()
    kids = [
        spawn(
            text_client,
            peer.url,
            "lineproto",
            n,
            1000,
            start,
            3600.0,  # bounded by the bodies, not by time
            1,
            "default",
            1 + k * n,
            "float",
            path=peer.write_path,
            bodies=cfg.peers_data_s,
            name=f"{peer.name}-client-{k}",
            workdir=workdir,
        )
        for k in range(cfg.peers_clients)
    ]
    sent = _merged([c.result(timeout=None) for c in kids])
    t_sent = time.monotonic()
    with httpx.Client(timeout=600) as client:
        peer.flush(client)
        elapsed = time.monotonic() - t0
        stored = peer.stored(client, start, start + cfg.peers_data_s * 1000)
    return {
        "points": sent["points"],
        "stored": stored,
        "bodies": sent["batches"],
        "body_bytes": sent.get("body_bytes", 0),
        "errors": sent["errors"],
        "acknowledged_per_s": sent["points"] / (t_sent - t0),
        "points_per_s": sent["points"] / elapsed,
        "queryable_after_s": time.monotonic() - t_sent,
        "client_cores": sent["cpu_seconds"] / (t_sent - t0),
    }


def _windows(cfg: BenchConfig, start: int, rng: random.Random) -> Iterator[tuple[int, int]]:
    """Windows of ``peers_window_s`` inside the data every client sent, at
    random offsets, on bucket boundaries."""
    span = cfg.peers_data_s * 1000
    width = min(cfg.peers_window_s * 1000, span - STEP_MS) // STEP_MS * STEP_MS
    first = -(-start // STEP_MS) * STEP_MS  # buckets start at multiples of the step
    room = (start + span - width - first) // STEP_MS
    while True:
        lo = first + rng.randrange(0, room + 1) * STEP_MS
        yield lo, lo + width


def _one_lens(peer: Peer, client: httpx.Client, window: tuple[int, int]) -> tuple[float, int]:
    ids = list(range(1, LENS_SENSORS + 1))
    t = time.perf_counter()
    buckets = peer.lens(client, ids, *window)
    return (time.perf_counter() - t) * 1000, buckets


def _lenses(peer: Peer, cfg: BenchConfig, start: int) -> dict:
    rng = random.Random(cfg.seed)
    windows = _windows(cfg, start, rng)
    with httpx.Client(timeout=300) as client:
        _one_lens(peer, client, next(windows))  # warm-up, not counted
        single = [_one_lens(peer, client, next(windows)) for _ in range(cfg.peers_queries)]
    lock = threading.Lock()
    concurrent: list[float] = []
    stop_at = time.monotonic() + cfg.peers_concurrency_s
    t0 = time.monotonic()

    def user(k: int) -> None:
        mine = _windows(cfg, start, random.Random(cfg.seed + 1 + k))
        with httpx.Client(timeout=300) as client:
            for _ in range(100_000):  # bounded: ends with the run's time
                ms, _ = _one_lens(peer, client, next(mine))
                with lock:
                    concurrent.append(ms)
                if time.monotonic() >= stop_at:
                    return

    threads = [
        threading.Thread(target=user, args=(k,), daemon=True) for k in range(cfg.concurrency_users)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(600)
    elapsed = time.monotonic() - t0
    width = next(windows)
    return {
        "window_s": (width[1] - width[0]) / 1000,
        "buckets": single[0][1],
        "single_ms": summarize([ms for ms, _ in single]),
        "users": cfg.concurrency_users,
        "concurrent_ms": summarize(concurrent),
        "concurrent_per_s": len(concurrent) / elapsed if elapsed > 0 else 0.0,
    }


def _disk(peer: Peer, cfg: BenchConfig, points: int) -> dict:
    time.sleep(cfg.storage_settle)
    whole = _dir_bytes(peer.data)
    store = peer.store_bytes()
    return {
        "settle_s": cfg.storage_settle,
        "data_dir_bytes": whole,
        "data_dir_bytes_per_point": whole / points if points else 0.0,
        "store_bytes_per_point": (store / points if points else 0.0) if store is not None else None,
    }


def run_peers(cfg: BenchConfig, workdir: Path) -> dict:
    console.rule("[bold]peers")
    workdir = Path(workdir)
    start = _start_ms()
    body = _text_bodies("lineproto", cfg.format_batch_sensors, 1000, start, 1, "float")[0][0]
    out: dict = {
        "body": {
            "sensors": cfg.format_batch_sensors,
            "bytes": len(body),
            "first_line": body.split(b"\n", 1)[0].decode(),
        },
        "clients": cfg.peers_clients,
        "data_s": cfg.peers_data_s,
        "step_ms": STEP_MS,
        "servers": {},
    }
    for name in PEERS:
        if not installed(name):
            console.print(f"  {name}: not installed, skipped")
            out["servers"][name] = {"installed": False}
            continue
        with _peer(name, workdir / f"peer-{name}", cfg) as peer:
            doc: dict = {"installed": True}
            doc["ingest"] = _ingest(peer, cfg, workdir, start)
            doc["lens"] = _lenses(peer, cfg, start)
            doc["disk"] = _disk(peer, cfg, doc["ingest"]["points"])
        shutil.rmtree(workdir / f"peer-{name}", ignore_errors=True)
        ing, lens, disk = doc["ingest"], doc["lens"], doc["disk"]
        console.print(
            f"  {name}: {ing['points']:,} points ({ing['stored']:,} stored)"
            f" at {ing['points_per_s']:,.0f}/s"
            f" (acknowledged {ing['acknowledged_per_s']:,.0f}/s);"
            f" lens {lens['window_s']:.0f} s → {lens['buckets']} buckets:"
            f" p50 {lens['single_ms']['p50']:.1f} ms, {lens['users']} users"
            f" p50 {lens['concurrent_ms']['p50']:.0f} ms;"
            f" disk {disk['data_dir_bytes_per_point']:.2f} B/point"
        )
        out["servers"][name] = doc
    return out
