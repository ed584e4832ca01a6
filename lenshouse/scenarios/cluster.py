"""``lenshouse scenario cluster``: faults on the cluster of ``cluster up``,
checked as Jepsen checks databases.

A workload streams through the unreliable middle layer (held back, reordered,
replayed) to every gateway, closed-loop lens users read from every lens
server, a fault is injected and lifted, and the run goes on until the
loaders have caught up. The checker then compares what the client saw
acknowledged with an export of the raw data (lost, doubled, wrong values)
and random lenses of both lens servers with the numpy oracle; it reads
nothing of the store's own bookkeeping. The timeline (acknowledged points
per second, ingest lag, lens latency and errors) goes to the report.

Lenses are also checked while the fault is on. A live lens reflects the
loads completed by the time it was read, which an outside checker cannot
know; so before the run a *settled* tenant's data (late and replayed batches
too) is written and loaded, and every few queries each lens user asks a
random lens of it and compares the answer with the oracle on the spot. Any
answer during a fault is then either an error (503) or exact.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lenshouse.client import Client, Lens, LenshouseError
from lenshouse.cluster import probes, processes, record
from lenshouse.generators.sender import MiddleLayer
from lenshouse.generators.signals import Fleet
from lenshouse.scenarios.faults import FAULTS, Fault
from lenshouse.scenarios.ledger import (
    Ledger,
    Verdict,
    ask,
    check_answer,
    lens_checks,
    random_lens,
    verdict,
)
from lenshouse.scenarios.workload import Workload

LAG_OK_S = 2.0  # recovered: ingest lag back under this, for good


@dataclass(frozen=True)
class ClusterConfig:
    fault_s: float = 60.0
    sensors: int = 200
    rate_hz: int = 1000
    users: int = 20
    before_s: int = 10  # seconds of streaming before the fault
    after_s: int = 20  # … and after it is lifted
    checks: int = 100
    catch_up_s: float = 600.0
    seed: int = 0
    settled_sensors: int = 10  # the settled tenant's data, checked during the fault
    settled_s: int = 20
    settled_every: int = 3  # every 3rd query of each lens user asks a settled lens


SMALL = ClusterConfig(
    fault_s=5, sensors=20, rate_hz=500, users=4, before_s=4, after_s=4, checks=20, catch_up_s=180,
    settled_sensors=5, settled_s=5,
)  # fmt: skip


@dataclass
class Timeline:
    """Per-second samples, relative to the run's start."""

    lag: list[tuple[float, float]] = field(default_factory=list)  # (t, max lag over partitions)
    lens: list[tuple[float, float, int]] = field(default_factory=list)  # (t, seconds, status)
    acks: list[tuple[float, int]] = field(default_factory=list)  # (t acknowledged, points)
    checks: list[tuple[float, bool]] = field(default_factory=list)  # (t, settled lens exact)
    write_failures: list[float] = field(default_factory=list)
    fault: tuple[float, float] = (0.0, 0.0)  # injected, lifted


@dataclass
class ClusterVerdict(Verdict):
    write_errors_s: int = 0
    lens_errors_s: int = 0
    max_lag_s: float = 0.0
    recovery_s: float = 0.0
    timeline: Timeline = field(default_factory=Timeline)
    users: int = 1  # lens users; with none, no live check is asked for

    @property
    def live(self) -> tuple[int, int, int]:
        """Settled lenses checked while streaming: (exact, checked, within the fault)."""
        tl = self.timeline
        inside = sum(tl.fault[0] <= t <= tl.fault[1] for t, _ in tl.checks)
        return sum(ok for _, ok in tl.checks), len(tl.checks), inside

    @property
    def ok(self) -> bool:
        exact, checked, _ = self.live
        return super().ok and exact == checked and (checked > 0 or self.users == 0)

    def line(self) -> str:
        exact, checked, inside = self.live
        return (
            f"scenario cluster/{self.name}: sent={self.sent} distinct={self.distinct}"
            f" stored={self.stored} lost={self.lost} dup={self.dup} wrong={self.wrong}"
            f" lens_checks={self.checks_ok}/{self.checks} live_checks={exact}/{checked}"
            f" in_fault={inside} {'exact' if self.ok else 'FAILED'}"
            f" write_errors_s={self.write_errors_s} lens_errors_s={self.lens_errors_s}"
            f" max_lag_s={self.max_lag_s:.1f} recovery_s={self.recovery_s:.1f}"
        )


class _LensUsers:
    """Closed-loop lens users over every lens server: each asks, waits for the
    answer, asks again; every ``every``-th query is a random lens of the
    settled data, checked against the oracle at once. Ownership: each thread
    appends to ``samples``, ``checks`` and ``problems`` (a list append is
    atomic); read them after ``stop``."""

    def __init__(self, urls: list[str], tenant: str, fleet: Fleet, users: int, t0: float,
                 settled: Ledger, every: int, token: str | None) -> None:  # fmt: skip
        self.urls, self.tenant, self.fleet, self.t0 = urls, tenant, fleet, t0
        self.token = token
        self.settled, self.every = settled, every
        self.samples: list[tuple[float, float, int]] = []
        self.checks: list[tuple[float, bool]] = []
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(users)
        ]

    def start(self) -> _LensUsers:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(70)

    def _run(self, k: int) -> None:
        rng = np.random.default_rng(1000 + k)
        url = self.urls[k % len(self.urls)]
        s, ts, _ = self.settled.distinct()
        settled_ids, lo, hi = np.unique(s), int(ts.min()), int(ts.max()) + 1
        # No retries: every answer, an error too, is a sample.
        live = Client(url, token=self.token, tenant=self.tenant, timeout=60.0, retries=0)
        settled = Client(url, token=self.token, tenant=self.settled.tenant, timeout=60.0, retries=0)
        with live, settled:
            for i in range(100_000):  # bounded; stops with the scenario
                if self._stop.is_set():
                    return
                check = i % self.every == self.every - 1
                params = random_lens(rng, settled_ids, lo, hi) if check else self._live(rng)
                t = time.monotonic()
                try:
                    lens = ask(settled if check else live, params)
                    status = 200
                except LenshouseError as e:
                    status = e.status  # 0: no answer
                self.samples.append((t - self.t0, time.monotonic() - t, status))
                if status != 200:
                    self._stop.wait(0.2)
                elif check:
                    self._check(t - self.t0, params, lens)

    def _live(self, rng: np.random.Generator) -> dict:
        """A lens a dashboard would ask: up to 3 sensors, the last 10 s–10 min."""
        newest = self.fleet.start_ms + int((time.monotonic() - self.t0) * 1000)
        width = int(rng.choice([10_000, 60_000, 600_000]))
        end = newest - int(rng.integers(0, 5_000))
        ids = rng.choice(np.arange(1, self.fleet.sensors + 1), min(3, self.fleet.sensors))
        return {"sensors": sorted(set(ids.tolist())), "start": end - width,
                "end": end, "points": 2500}  # fmt: skip

    def _check(self, t: float, params: dict, lens: Lens) -> None:
        bad = check_answer(lens, *self.settled.distinct())
        self.checks.append((t, bad is None))
        if bad:
            self.problems.append(f"settled lens at {t:.1f} s {params}: {bad}")


def _max_lag(doc: dict) -> float | None:
    parts = probes.loader_partitions(doc)
    lags = [r["lag_seconds"] for r in parts.values() if r["lag_seconds"] is not None]
    return max(lags) if lags else None


def run_fault(root: Path, fault: Fault, cfg: ClusterConfig, say=print) -> ClusterVerdict:
    root = Path(root)
    doc = processes.up(root, roles=True)  # everything running before the fault
    hold = max(cfg.fault_s, fault.min_s)
    seconds = int(cfg.before_s + (0 if fault.instant else hold) + cfg.after_s)
    fleet = Fleet(sensors=cfg.sensors, rate_hz=cfg.rate_hz, seed=cfg.seed,
                  start_ms=(int(time.time()) - 5) * 1000)  # fmt: skip
    tenant = f"scn-{fault.name}-{uuid.uuid4().hex[:6]}"
    middle = MiddleLayer(delay_s=0.3, reorder=True, duplicate=0.1, replay_after_s=(0.5, 5.0),
                         seed=cfg.seed)  # fmt: skip
    settled = _settle(root, doc, cfg, middle, tenant + "-settled")
    w = Workload(doc["gateways"], fleet, seconds, tenant=tenant, middle=middle,
                 give_up_after=max(300.0, 3 * hold),
                 token=doc.get("admin_token"))  # fmt: skip
    t0 = time.monotonic()
    tl = Timeline()
    w.start()
    users = _LensUsers(doc["lens_servers"], tenant, fleet, cfg.users, t0, settled,
                       cfg.settled_every, doc.get("admin_token")).start()  # fmt: skip
    sampling = threading.Event()

    def sample() -> None:
        for _ in range(100_000):  # bounded; stops with the scenario
            if sampling.is_set():
                return
            lag = _max_lag(record.load(root))
            if lag is not None:
                tl.lag.append((time.monotonic() - t0, lag))
            sampling.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        time.sleep(cfg.before_s)
        say(f"  {fault.name}: {fault.what}")
        t_in = time.monotonic()
        state = fault.inject(root)
        if not fault.instant:
            time.sleep(max(0.0, hold - (time.monotonic() - t_in)))
        fault.lift(root, state)
        t_out = time.monotonic()
        tl.fault = (t_in - t0, t_out - t0)
        say(f"  lifted after {t_out - t_in:.1f} s; streaming on")
        w.join(seconds + cfg.catch_up_s)
        _wait_caught_up(root, cfg.catch_up_s)
    finally:
        users.stop()
        sampling.set()
        sampler.join(10)
    tl.lens = users.samples
    tl.checks = users.checks
    tl.acks = [(a.acked - t0, a.points) for a in w.acks]
    tl.write_failures = [t - t0 for t in w.ledger.stats.failed_at]
    say("  checking: export against the acknowledged points, lenses against the oracle")
    rng = np.random.default_rng(cfg.seed)
    lens1, *others = doc["lens_servers"]
    v = verdict(f"cluster/{fault.name}", lens1, w.ledger, rng, cfg.checks // 2)
    ok2, problems2 = lens_checks(others[0] if others else lens1, w.ledger, rng, cfg.checks // 2)
    return ClusterVerdict(
        fault.name, v.sent, v.distinct, v.stored, v.lost, v.dup, v.wrong,
        v.checks_ok + ok2, v.checks + cfg.checks // 2, (users.problems + v.notes + problems2)[:5],
        write_errors_s=len({int(t) for t in tl.write_failures}),
        lens_errors_s=len({int(t) for t, _, s in tl.lens if s != 200}),
        max_lag_s=max((lag for _, lag in tl.lag), default=0.0),
        recovery_s=_recovery(tl),
        timeline=tl,
        users=cfg.users,
    )  # fmt: skip


def _settle(root: Path, doc: dict, cfg: ClusterConfig, middle: MiddleLayer,
            tenant: str) -> Ledger:  # fmt: skip
    """Write the settled tenant's data (an hour old, through the middle layer)
    and wait until it is loaded; returns what was acknowledged."""
    fleet = Fleet(sensors=cfg.settled_sensors, rate_hz=cfg.rate_hz, seed=cfg.seed + 1,
                  start_ms=(int(time.time()) - 3600) * 1000)  # fmt: skip
    w = Workload(doc["gateways"], fleet, cfg.settled_s, tenant=tenant, middle=middle,
                 realtime=False, token=doc.get("admin_token")).start()  # fmt: skip
    w.join(cfg.catch_up_s)
    _wait_caught_up(root, cfg.catch_up_s)
    w.ledger.distinct()  # computed once, before the lens users share it
    return w.ledger


def _wait_caught_up(root: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not probes.caught_up(record.load(root)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"loaders had not caught up {limit_s:.0f} s after the run")
        time.sleep(0.5)


def _recovery(tl: Timeline) -> float:
    """Seconds from the lift until the ingest lag stayed under LAG_OK_S and
    writes and lenses stopped failing."""
    lifted = tl.fault[1]
    last_bad = lifted
    for t, lag in tl.lag:
        if t >= lifted and lag > LAG_OK_S:
            last_bad = max(last_bad, t)
    for t in tl.write_failures:
        last_bad = max(last_bad, t)
    for t, _, status in tl.lens:
        if status != 200:
            last_bad = max(last_bad, t)
    return max(0.0, last_bad - lifted)


def run(root: Path, names: list[str], cfg: ClusterConfig, say=print) -> list[ClusterVerdict]:
    verdicts = []
    for name in names:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
        v = run_fault(root, FAULTS[name], cfg, say)
        say(v.line())
        verdicts.append(v)
    return verdicts
