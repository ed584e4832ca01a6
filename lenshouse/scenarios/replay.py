"""Scenario ``replay``: the middle layer re-sends a random 20% of batches:
some at once, some ten minutes (of data) later, some re-split across other
batch boundaries. Raw counts must equal the distinct keys sent; lenses exact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenshouse.generators.signals import Fleet
from lenshouse.points import PointBatch
from lenshouse.scenarios.ledger import Ledger, Verdict, verdict
from lenshouse.scenarios.server import ServerProcess


@dataclass
class ReplayConfig:
    sensors: int = 20
    rate_hz: int = 100
    seconds: int = 900  # of data, one batch per second
    fraction: float = 0.2
    later_s: int = 600
    dedup_pages: int = 512  # small, so that late replays are checked against storage
    checks: int = 200
    seed: int = 0


def run(data: Path, cfg: ReplayConfig, say=print) -> Verdict:
    rng = np.random.default_rng(cfg.seed)
    fleet = Fleet(sensors=cfg.sensors, rate_hz=cfg.rate_hz, seed=cfg.seed,
                  start_ms=1_700_000_000_000)  # fmt: skip
    ledger = Ledger()
    later: dict[int, list[PointBatch]] = {}
    counts = {"immediate": 0, "later": 0, "resplit": 0}
    with (
        ServerProcess(data, dedup_pages=cfg.dedup_pages) as server,
        ledger.client(server.url) as client,
    ):
        prev = None
        for k in range(cfg.seconds):
            batch = fleet.second(k)
            ledger.send(client, batch)
            for old in later.pop(k, []):
                ledger.send(client, old)
            if rng.random() < cfg.fraction:
                kind = rng.choice(["immediate", "later", "resplit"])
                counts[kind] += 1
                if kind == "immediate":
                    ledger.send(client, batch)
                elif kind == "later":
                    later.setdefault(k + cfg.later_s, []).append(batch)
                elif prev is not None:
                    for part in resplit(prev, batch, rng):
                        ledger.send(client, part)
            prev = batch
            if k % 100 == 99:
                say(f"  sent {k + 1}/{cfg.seconds} batches")
        for k in sorted(later):
            for old in later[k]:
                ledger.send(client, old)
        server.wait_loaded()
        v = verdict("replay", server.url, ledger, rng, cfg.checks)
        h = server.health()
    v.notes.insert(0, f"replays: {counts}; server dedup: {h.get('points_duplicate', '?')} points")
    return v


def resplit(a: PointBatch, b: PointBatch, rng: np.random.Generator) -> list[PointBatch]:
    """Two consecutive batches cut at other boundaries, in time order."""
    s = np.concatenate([a.sensor, b.sensor])
    t = np.concatenate([a.ts, b.ts])
    v = np.concatenate([a.value, b.value])
    order = np.argsort(t, kind="stable")
    cuts = np.sort(rng.integers(1, len(t), int(rng.integers(1, 4))))
    return [PointBatch(a.tenant, s[p], t[p], v[p]) for p in np.split(order, cuts) if len(p)]
