"""What every scenario shares: the configuration, a server on a free loopback
port, ClickHouse's own counters, and running a function in another process."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lenshouse.bench.prepare import check_loader, write_dataset
from lenshouse.storage.backend import BLOCK_CACHE_MB
from lenshouse.storage.introspect import drop_block_cache, profile_events, wait_merges

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass
class BenchConfig:
    """Every knob of a bench run. ``full()`` is the issue's scale, ``tiny()``
    a seconds-long smoke run for tests."""

    duration: int = 60  # seconds of sustained ingest (and of the mixed run)
    # ingest
    ingest_sensors: int = 1000
    ingest_rate_hz: int = 1000
    ingest_senders: int = 2  # HTTP requests in flight from the client process
    ceiling_duration: int = 0  # seconds of bare chDB inserts; 0: as long as the ingest run
    format_duration: int = 15  # seconds each for JSON and line protocol
    format_batch_sensors: int = 100  # JSON / line protocol bodies: sensors x 1 s
    format_clients: int = 2  # client processes of the full-precision float runs
    drain_timeout: float = 180.0
    # lens (single user, no ingest)
    lens_sensors: int = 10
    lens_rate_hz: int = 1000
    lens_hours: float = 25.0  # 1 kHz data behind the 10 s .. 1 day windows (> 1 day:
    # day windows then start at random, unaligned positions)
    lens_windows: tuple[str, ...] = ("10s", "1m", "1h", "1d")
    lens_queries: int = 50  # per window
    month_rate_hz: int = 10
    month_days: float = 32.0
    month_windows: tuple[str, ...] = ("1h", "1d", "7d", "31d")
    # month (bench month): full-rate data over 30 days, then retention
    full_month_sensors: int = 1
    full_month_rate_hz: int = 1000
    full_month_days: float = 30.0
    # mixed
    mixed_users: int = 100
    mixed_think: float = 1.0
    mixed_prefill_hz: int = 1  # all ingest sensors, over the day before the run
    mixed_prefill_hours: float = 24.0
    mixed_warmup: float = 5.0
    mixed_mix: str = "10s:0.35,1m:0.3,1h:0.2,1d:0.15"
    # storage
    storage_sensors: int = 1000
    storage_seconds: int = 60
    storage_float_sensors: int = 100  # the peers' comparison: 100 sensors at 1 kHz
    storage_settle: float = 60.0  # seconds after the last load, then the data directory
    # concurrency
    concurrency_users: int = 20
    concurrency_duration: int = 30
    concurrency_window: str = "10m"
    points: int = 2500
    # burst: maximal Arrow ingest, lenses during it and in the seconds after
    burst_seconds: int = 30
    burst_after: float = 10.0
    burst_clients: int = 20
    # peers: the same line-protocol bytes into lenshouse, VictoriaMetrics, InfluxDB
    peers_clients: int = 2
    peers_data_s: int = 660  # seconds of its sensors' data each client sends
    peers_window_s: int = 600
    peers_queries: int = 30
    peers_concurrency_s: float = 20.0
    # prometheus: remote write in (synthetic and a real Prometheus), query_range out
    prom_clients: int = 2
    prom_series: int = 100  # series per remote-write body
    prom_samples: int = 20  # samples per series per body: 2,000 a body
    prom_bodies: int = 2000  # bodies each client sends
    prom_scrape_series: int = 20_000  # gauges the real Prometheus scrapes each second
    prom_scrape_s: float = 30.0
    prom_query_hours: float = 1.0  # of 10 series at 1 kHz, for query_range
    prom_queries: int = 20
    # page (the lens page in Chromium)
    page_rounds: int = 20  # fresh tabs, each a first draw and 5 in-place redraws
    block_cache_mb: float = BLOCK_CACHE_MB  # ClickHouse's uncompressed cache in the bench server
    seed: int = 0

    @classmethod
    def full(cls, duration: int = 60) -> BenchConfig:
        return cls(duration=duration)

    @classmethod
    def tiny(cls, duration: int = 1) -> BenchConfig:
        return cls(
            duration=duration,
            ingest_sensors=50,
            ingest_senders=1,
            ceiling_duration=1,
            format_duration=1,
            format_batch_sensors=20,
            format_clients=2,
            drain_timeout=30.0,
            lens_sensors=3,
            lens_rate_hz=20,
            lens_hours=1.1,
            lens_windows=("10s", "1m", "1h"),
            lens_queries=3,
            burst_seconds=2,
            burst_after=2.0,
            burst_clients=2,
            storage_float_sensors=5,
            storage_settle=1.0,
            peers_data_s=4,
            peers_window_s=2,
            peers_queries=2,
            peers_concurrency_s=0.5,
            prom_series=10,
            prom_bodies=20,
            prom_scrape_series=50,
            prom_scrape_s=4.0,
            prom_query_hours=0.02,
            prom_queries=2,
            month_rate_hz=1,
            month_days=1.1,
            month_windows=("1h", "1d"),
            full_month_rate_hz=2,
            full_month_days=9.0,
            mixed_users=4,
            mixed_think=0.2,
            mixed_prefill_hours=0.5,
            mixed_warmup=0.5,
            mixed_mix="10s:0.5,1m:0.3,1h:0.2",
            storage_sensors=20,
            storage_seconds=5,
            concurrency_users=3,
            concurrency_duration=1,
            concurrency_window="1m",
            page_rounds=2,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean(x: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None, tuples lists."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def machine() -> dict:
    import chdb

    try:
        import chdb_core  # type: ignore[import-not-found]

        engine = getattr(chdb_core, "__version__", "")
    except ImportError:
        engine = ""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "chdb": getattr(chdb, "__version__", ""),
        "chdb_core": engine,
    }


def git_state(repo: Path | None = None) -> dict:
    """The commit the bench ran on and whether the tree had local changes."""
    import subprocess

    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split("\n")
        return {"commit": head, "modified": sorted(x[3:] for x in dirty if x.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "", "modified": []}


# -- a node and its HTTP server -------------------------------------------------


class BenchServer:
    """A :class:`~lenshouse.node.Node` and uvicorn in this process, on a free
    loopback port. Load clients run in other processes; this process only
    serves and samples counters. Scenarios reach the node only through the
    methods below (its public counters, ClickHouse's system tables), never
    its fields."""

    def __init__(
        self,
        data_dir: Path,
        flush_interval: float = 1.0,
        lens_cache_mb: float = 256,
        block_cache_mb: float = BLOCK_CACHE_MB,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.flush_interval = flush_interval
        self.lens_cache_mb = lens_cache_mb
        self.block_cache_mb = block_cache_mb
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._node = None
        self._server = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BenchServer:
        import uvicorn

        from lenshouse.api.app import create_app
        from lenshouse.node import Node

        self._node = Node(
            self.data_dir,
            flush_interval=self.flush_interval,
            lens_cache_mb=self.lens_cache_mb,
            block_cache_mb=self.block_cache_mb,
        ).start()
        try:
            config = uvicorn.Config(
                create_app(self._node),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
            )
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + 30
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP server did not start on {self.url}")
                time.sleep(0.02)
        except BaseException:
            self._node.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        if self._node is not None:
            self._node.stop()

    # -- counters -------------------------------------------------------------
    def ingest_counters(self) -> dict:
        ing = self._node.ingestor
        return {
            "accepted": ing.points_accepted,
            "loaded": ing.loader.stats.rows_loaded,
            "queued": ing.loader.stats.queued_rows,
            "lag_s": ing.loader.lag_seconds(),
            "accepted_lsn": ing.wal.next_lsn - 1,
            "loaded_lsn": ing.loader.loaded_lsn - 1,
        }

    def wait_loaded(self, timeout: float) -> bool:
        """Wait until everything acknowledged is visible to lenses."""
        ing = self._node.ingestor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # queued_rows drops last, after the loaded-points counter moved on
            if ing.loader.loaded_lsn >= ing.wal.next_lsn and ing.loader.stats.queued_rows == 0:
                return True
            check_loader(self._node)
            time.sleep(0.05)
        return False

    def events(self, names: tuple[str, ...] = ("SelectedRows", "SelectedMarks")) -> dict:
        return profile_events(self._node.backend, names)

    def wait_merges(self, timeout: float) -> float:
        return wait_merges(self._node.backend, timeout)

    def drop_block_cache(self) -> None:
        """Empty ClickHouse's uncompressed cache: the next read decodes from disk."""
        drop_block_cache(self._node.backend)

    def parts(self) -> dict[str, dict]:
        """Active parts per table (parts, rows, bytes on disk)."""
        from lenshouse.storage.introspect import parts_by_table

        return parts_by_table(self._node.backend)

    def optimize_final(self, tables) -> None:
        """Merge each table's parts into one (to measure bytes per point)."""
        from lenshouse.storage.introspect import optimize_final

        for name in tables:
            optimize_final(self._node.backend, name)

    def raw_columns(self) -> dict:
        from lenshouse.storage.introspect import raw_columns

        return raw_columns(self._node.backend)

    def lens_cache(self) -> dict:
        cache = self._node.lenses.cache
        return {
            "hits": cache.hits,
            "misses": cache.misses,
            "hit_ratio": cache.hits / max(1, cache.hits + cache.misses),
            "invalidated": cache.invalidated,
            "refused": cache.refused,
            "bytes": cache.bytes,
        }

    def write_dataset(self, ds, **kw) -> dict:
        """Write a prepared dataset in process (faster than HTTP; see
        :func:`lenshouse.bench.prepare.write_dataset`)."""
        return write_dataset(self._node, ds, **kw)

    def wait_visible(self, timeout: float) -> bool:
        """Wait until every write acknowledged so far is visible to lenses."""
        ing = self._node.ingestor
        return ing.wait_visible(ing.wal.next_lsn - 1, timeout)

    def retention(self, now_ms: int, keep_raw_ms: str):
        """Keep raw points ``keep_raw_ms`` and run maintenance as of ``now_ms``."""
        from lenshouse.retention import maintain

        maintain.set_policy(self._node.store, "default", {"raw": keep_raw_ms})
        return maintain.run(
            self._node.store, now_ms=now_ms, settle_s=0, horizons=self._node.horizons
        )


# -- other processes ------------------------------------------------------------


def _child(fn: Callable, args: tuple, kwargs: dict, out: Path) -> None:
    try:
        result = fn(*args, **kwargs)
        doc = {"ok": True, "result": result}
    except BaseException as e:  # reported to the parent
        import traceback

        doc = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    out.write_text(json.dumps(doc))


@dataclass
class Child:
    """A function running in a fresh interpreter (spawn), its result as JSON."""

    process: Any
    out: Path
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.is_alive()

    def result(self, timeout: float | None = None) -> Any:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            raise TimeoutError(f"{self.process.name} did not finish in time")
        if not self.out.exists():
            raise RuntimeError(f"{self.process.name} died (exit code {self.process.exitcode})")
        doc = json.loads(self.out.read_text())
        self.out.unlink()
        if not doc["ok"]:
            raise RuntimeError(f"{self.process.name} failed: {doc['error']}\n{doc['trace']}")
        return doc["result"]

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def spawn(fn: Callable, *args, name: str, workdir: Path, **kwargs) -> Child:
    """Run ``fn(*args, **kwargs)`` in another process; its return value must be JSON."""
    out = Path(workdir) / f".{name}-{os.getpid()}-{time.monotonic_ns()}.json"
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_child, args=(fn, args, kwargs, out), name=name, daemon=True)
    p.start()
    return Child(p, out)


@contextmanager
def sampler(fn: Callable[[], dict], every: float = 0.5) -> Iterator[list[dict]]:
    """Call ``fn`` every ``every`` seconds in a thread; yields the growing list of
    samples, each with ``t`` (seconds since start)."""
    samples: list[dict] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def one() -> None:
        doc = fn()
        doc["t"] = round(time.monotonic() - t0, 3)
        samples.append(doc)

    def run() -> None:
        while True:
            one()
            if stop.wait(every):
                break

    th = threading.Thread(target=run, name="sampler", daemon=True)
    th.start()
    try:
        yield samples
    finally:
        stop.set()
        th.join(5)
        one()  # the state at the end


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class MachineCpu:
    """Busy cores of the whole machine between ``start()`` and ``stop()``
    (from /proc/stat), to tell our load from anybody else's."""

    def __init__(self) -> None:
        self._t0 = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        try:
            with open("/proc/stat") as f:
                vals = [float(x) for x in f.readline().split()[1:]]
        except OSError:
            return (0.0, 0.0)
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)  # idle + iowait
        return (sum(vals) - idle, sum(vals))

    def busy_cores(self) -> float:
        b1, t1 = self._read()
        b0, t0 = self._t0
        if t1 <= t0:
            return 0.0
        return (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1)


def relative_timeline(samples: list[dict], before: dict) -> list[dict]:
    """Ingest samples as counts since ``before``."""
    return [
        {
            "t": s["t"],
            "accepted": s["accepted"] - before["accepted"],
            "loaded": s["loaded"] - before["loaded"],
            "lag_s": round(s["lag_s"], 3),
            "queued": s["queued"],
        }
        for s in samples
    ]


def run_threads(target: Callable[[], None], n: int) -> None:
    """Run ``target`` in ``n`` threads and wait for all of them."""
    threads = [threading.Thread(target=target, daemon=True) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
