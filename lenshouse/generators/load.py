"""Query load: N simultaneous closed-loop users against a lenshouse URL.

Each user repeatedly picks some sensors and a window, asks ``GET /v1/lens``,
waits for the whole answer, then thinks for a while before the next request
(closed loop: a slow server slows its users down instead of piling up
requests). Every request is recorded with its client-side latency, the
server's own ``X-Lens-Ms`` and its outcome, so a run yields percentiles per
window, error counts and throughput.

Windows either end at the present (live views, ``span=None``) or are placed
uniformly at random inside a fixed ``span`` of data (history).

Runs on asyncio with a :class:`lenshouse.client.AsyncClient` per user (no retries:
every answer is a sample); keep it in its own process
when the server runs in-process, so that both do not share one interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import orjson
import pyarrow as pa

from lenshouse.client import AsyncClient, LenshouseError

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass(frozen=True)
class Window:
    name: str
    ms: int
    weight: float = 1.0


# Live views dominate what people look at; a day is the occasional zoom out.
LIVE_MIX: tuple[Window, ...] = (
    Window("10s", 10 * SECOND, 0.35),
    Window("1m", MINUTE, 0.30),
    Window("1h", HOUR, 0.20),
    Window("1d", DAY, 0.15),
)

PERCENTILES = (50, 90, 95, 99)


def parse_mix(text: str) -> tuple[Window, ...]:
    """'10s:0.35,1m:0.3,1h:0.2,1d:0.15' (weights optional) → windows."""
    units = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, weight = item.partition(":")
        num = name.rstrip("smhd")
        unit = name[len(num) :]
        if not num or unit not in units:
            raise ValueError(f"{name!r} is not a window like 10s, 1m, 1h, 1d")
        out.append(Window(name, int(float(num) * units[unit]), float(weight or 1.0)))
    if not out:
        raise ValueError("empty window mix")
    return tuple(out)


@dataclass
class LoadConfig:
    url: str
    users: int = 10
    duration: float = 30.0  # seconds of load; requests in flight at the end still count
    think: float = 1.0  # seconds between a user's answer and its next request
    mix: Sequence[Window] = LIVE_MIX
    sensors: Sequence[int] = tuple(range(1, 1001))  # the pool users draw from
    min_sensors: int = 1
    max_sensors: int = 10
    points: int = 2500
    span: tuple[int, int] | None = None  # place windows inside [lo, hi) ms; None: end now
    seed: int = 0
    tenant: str = "default"
    token: str | None = None  # bearer token (None: LENSHOUSE_TOKEN, if set)
    timeout: float = 30.0
    parse: bool = False  # decode every body and count buckets (costs client CPU)
    answer: str = "json"  # or "arrow": the lens answer's format
    ramp: float = 1.0  # users start spread over this many seconds


@dataclass
class Sample:
    t: float  # seconds since the run began, at the request's start
    user: int
    window: str
    sensors: int
    status: int  # HTTP status, or 0 for a transport error / timeout
    latency_ms: float
    server_ms: float  # X-Lens-Ms, NaN when missing
    bytes: int
    buckets: int = -1  # buckets returned over all series (only when parsing)
    error: str = ""
    server_cpu_ms: float = math.nan  # X-Lens-Cpu-Ms: the server thread's CPU for it


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); NaN when empty."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(latencies: Sequence[float]) -> dict[str, float]:
    out = {f"p{q}": percentile(latencies, q) for q in PERCENTILES}
    out["mean"] = sum(latencies) / len(latencies) if latencies else math.nan
    out["max"] = max(latencies) if latencies else math.nan
    return out


@dataclass
class LoadResult:
    config: dict
    samples: list[Sample] = field(default_factory=list)
    elapsed: float = 0.0
    client_cpu_seconds: float = 0.0  # CPU the load generator itself used

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 200]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.status != 200)

    @property
    def requests(self) -> int:
        return len(self.samples)

    def error_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for s in self.samples:
            if s.status != 200:
                key = f"{s.status} {s.error}"[:120]
                kinds[key] = kinds.get(key, 0) + 1
        return kinds

    def latency(self, window: str | None = None) -> dict[str, float]:
        """Client-side percentiles (ms) of successful requests."""
        return summarize([s.latency_ms for s in self.ok if window in (None, s.window)])

    def server(self, window: str | None = None) -> dict[str, float]:
        """Percentiles of the server's own X-Lens-Ms."""
        return summarize([s.server_ms for s in self.ok if window in (None, s.window)])

    def server_cpu(self, window: str | None = None) -> float:
        """Mean server CPU per answered lens (ms), NaN if the server did not say."""
        xs = [s.server_cpu_ms for s in self.ok if window in (None, s.window)]
        xs = [x for x in xs if not math.isnan(x)]
        return sum(xs) / len(xs) if xs else math.nan

    def windows(self) -> list[str]:
        return list(dict.fromkeys(s.window for s in self.samples))

    def throughput(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self, samples: bool = False) -> dict:
        doc = {
            "config": self.config,
            "elapsed_s": self.elapsed,
            "requests": self.requests,
            "errors": self.errors,
            "error_kinds": self.error_kinds(),
            "throughput_rps": self.throughput(),
            "client_cpu_seconds": self.client_cpu_seconds,
            "client_cores": self.client_cpu_seconds / self.elapsed if self.elapsed > 0 else 0.0,
            "latency_ms": self.latency(),
            "server_ms": self.server(),
            "server_cpu_ms_per_lens": self.server_cpu(),
            "by_window": {
                w: {
                    "requests": sum(1 for s in self.samples if s.window == w),
                    "errors": sum(1 for s in self.samples if s.window == w and s.status != 200),
                    "latency_ms": self.latency(w),
                    "server_ms": self.server(w),
                    "server_cpu_ms_per_lens": self.server_cpu(w),
                }
                for w in self.windows()
            },
        }
        if samples:
            doc["samples"] = [asdict(s) for s in self.samples]
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> LoadResult:
        return cls(
            config=doc["config"],
            samples=[Sample(**s) for s in doc.get("samples", [])],
            elapsed=doc["elapsed_s"],
            client_cpu_seconds=doc.get("client_cpu_seconds", 0.0),
        )


def _config_doc(cfg: LoadConfig) -> dict:
    doc = asdict(cfg)
    doc["mix"] = [asdict(w) for w in cfg.mix]
    sensors = list(cfg.sensors)
    doc["sensors"] = (
        f"{len(sensors)} ids, {min(sensors)}..{max(sensors)}" if len(sensors) > 10 else sensors
    )
    return doc


def choose_request(
    rng: random.Random, cfg: LoadConfig, now_ms: int
) -> tuple[Window, list[int], int, int]:
    """One user's next request: (window, sensors, start, end)."""
    window = rng.choices(list(cfg.mix), weights=[w.weight for w in cfg.mix])[0]
    hi_n = min(cfg.max_sensors, len(cfg.sensors))
    n = rng.randint(min(cfg.min_sensors, hi_n), hi_n)
    sensors = sorted(rng.sample(list(cfg.sensors), n))
    if cfg.span is None:
        end = now_ms
        start = end - window.ms
    else:
        lo, hi = cfg.span
        start = rng.randint(lo, max(lo, hi - window.ms))
        end = start + window.ms
    return window, sensors, start, end


async def _user(
    uid: int,
    client: AsyncClient,
    cfg: LoadConfig,
    t0: float,
    stop_at: float,
    out: list[Sample],
) -> None:
    rng = random.Random(cfg.seed * 1_000_003 + uid)
    if cfg.ramp > 0 and cfg.users > 1:
        await asyncio.sleep(cfg.ramp * uid / cfg.users)
    while time.monotonic() < stop_at:
        window, sensors, start, end = choose_request(rng, cfg, int(time.time() * 1000))
        params = {
            "sensors": ",".join(map(str, sensors)),
            "start": start,
            "end": end,
            "points": cfg.points,
            **({"format": "arrow"} if cfg.answer == "arrow" else {}),
        }
        began = time.monotonic()
        sample = Sample(began - t0, uid, window.name, len(sensors), 0, 0.0, math.nan, 0)
        try:
            r = await client.lens_response(params)
            sample.latency_ms = (time.monotonic() - began) * 1000
            sample.status = r.status_code
            sample.bytes = len(r.content)
            server = r.headers.get("x-lens-ms")
            sample.server_ms = float(server) if server else math.nan
            cpu = r.headers.get("x-lens-cpu-ms")
            sample.server_cpu_ms = float(cpu) if cpu else math.nan
            if cfg.parse and cfg.answer == "arrow":
                sample.buckets = pa.ipc.open_stream(r.content).read_all().num_rows
            elif cfg.parse:
                doc = orjson.loads(r.content)
                sample.buckets = sum(len(s["t"]) for s in doc["series"])
        except LenshouseError as e:  # not retried: every answer is a sample
            sample.latency_ms = (time.monotonic() - began) * 1000
            sample.status = e.status  # 0: no answer
            sample.error = e.message[:200]
        except OSError as e:
            sample.latency_ms = (time.monotonic() - began) * 1000
            sample.error = f"{type(e).__name__}: {e}"[:200]
        out.append(sample)
        if sample.status == 0:  # the server is unreachable: do not spin
            await asyncio.sleep(max(cfg.think, 0.1))
        elif cfg.think > 0:
            await asyncio.sleep(cfg.think)


async def run_load_async(
    cfg: LoadConfig, on_tick: Callable[[float, list[Sample]], None] | None = None
) -> LoadResult:
    """Run the users for ``cfg.duration`` seconds; ``on_tick`` is called every second."""
    if cfg.users < 1:
        raise ValueError("users must be at least 1")
    if cfg.answer not in ("json", "arrow"):
        raise ValueError(f"answer must be json or arrow, got {cfg.answer!r}")
    if not cfg.sensors:
        raise ValueError("the sensor pool is empty")
    samples: list[Sample] = []
    cpu = os.times()
    async with contextlib.AsyncExitStack() as stack:
        # A connection of its own per user, as each browser tab has: one pool
        # shared by every user costs the generator a scan of all connections
        # per request (httpcore), which made it the slowest part of a run.
        clients = [
            await stack.enter_async_context(
                AsyncClient(cfg.url, cfg.token, cfg.tenant, cfg.timeout, retries=0, connections=1)
            )
            for _ in range(cfg.users)
        ]
        t0 = time.monotonic()
        stop_at = t0 + cfg.duration
        tasks = [
            asyncio.create_task(_user(u, clients[u], cfg, t0, stop_at, samples))
            for u in range(cfg.users)
        ]
        if on_tick is not None:
            while not all(t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=1.0)
                on_tick(time.monotonic() - t0, samples)
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
    samples.sort(key=lambda s: s.t)
    now = os.times()
    used = (now.user - cpu.user) + (now.system - cpu.system)
    return LoadResult(_config_doc(cfg), samples, elapsed, used)


def run_load(
    cfg: LoadConfig, on_tick: Callable[[float, list[Sample]], None] | None = None
) -> LoadResult:
    return asyncio.run(run_load_async(cfg, on_tick))


def run_load_to_file(cfg: LoadConfig, path: str) -> None:
    """Entry point for a separate process: run and write the result (with samples) as JSON."""
    result = run_load(cfg)
    with open(path, "w") as f:
        json.dump(result.to_dict(samples=True), f)
