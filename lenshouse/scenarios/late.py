"""Scenario ``late``: 10% of points arrive between one second and one hour
late. After every step, once the server has made what it acknowledged
visible, random lenses must equal the oracle over everything acknowledged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenshouse.generators.signals import Fleet
from lenshouse.points import PointBatch
from lenshouse.scenarios.ledger import Ledger, Verdict, lens_checks, verdict
from lenshouse.scenarios.server import ServerProcess


@dataclass
class LateConfig:
    sensors: int = 10
    rate_hz: int = 100
    seconds: int = 3900  # of data: more than the longest delay
    batch_seconds: int = 10
    fraction: float = 0.1
    checks_per_step: int = 4
    checks: int = 100
    seed: int = 0


def run(data: Path, cfg: LateConfig, say=print) -> Verdict:
    rng = np.random.default_rng(cfg.seed)
    fleet = Fleet(sensors=cfg.sensors, rate_hz=cfg.rate_hz, seed=cfg.seed,
                  start_ms=1_700_000_000_000)  # fmt: skip
    ledger = Ledger()
    held: dict[int, list[PointBatch]] = {}  # due step → late parts
    steps = cfg.seconds // cfg.batch_seconds
    ok = total = 0
    problems: list[str] = []
    with ServerProcess(data) as server, ledger.client(server.url) as client:
        for step in range(steps + 3600 // cfg.batch_seconds + 1):
            if step < steps:
                ks = range(step * cfg.batch_seconds, (step + 1) * cfg.batch_seconds)
                parts = [fleet.second(k) for k in ks]
                b = PointBatch("default", *(np.concatenate([getattr(p, c) for p in parts])
                                            for c in ("sensor", "ts", "value")))  # fmt: skip
                late = rng.random(len(b)) < cfg.fraction
                delay_s = np.exp(rng.uniform(0, np.log(3600), int(late.sum())))
                due = step + np.ceil(delay_s / cfg.batch_seconds).astype(int)
                idx = np.flatnonzero(late)
                for d in np.unique(due):
                    sel = idx[due == d]
                    held.setdefault(int(d), []).append(
                        PointBatch("default", b.sensor[sel], b.ts[sel], b.value[sel])
                    )
                on_time = ~late
                ledger.send(
                    client,
                    PointBatch("default", b.sensor[on_time], b.ts[on_time], b.value[on_time]),
                )
            for part in held.pop(step, []):
                ledger.send(client, part)
            if not held and step >= steps:
                break
            if step % 10 == 0:
                server.wait_loaded()
                n_ok, p = lens_checks(server.url, ledger, rng, cfg.checks_per_step)
                ok, total = ok + n_ok, total + cfg.checks_per_step
                problems += p
            if step % 100 == 0:
                say(f"  step {step}: {ledger.sent_points} points sent, checks {ok}/{total}")
        server.wait_loaded()
        v = verdict("late", server.url, ledger, rng, cfg.checks)
    v.checks_ok += ok
    v.checks += total
    v.notes = problems[:5] + v.notes
    return v
