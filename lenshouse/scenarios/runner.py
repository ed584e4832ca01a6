"""Runs a scenario by name, at full or test scale."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lenshouse.scenarios import crash, late, replay
from lenshouse.scenarios.ledger import Verdict

SCENARIOS = ("replay", "crash", "late")

SMALL = {
    "replay": replay.ReplayConfig(sensors=4, rate_hz=20, seconds=700, dedup_pages=64, checks=40),
    "crash": crash.CrashConfig(sensors=10, rate_hz=500, seconds=20, kills=5, checks=40),
    "late": late.LateConfig(sensors=3, rate_hz=10, seconds=3700, batch_seconds=20,
                            checks_per_step=2, checks=30),
}  # fmt: skip
FULL = {
    "replay": replay.ReplayConfig(),
    "crash": crash.CrashConfig(),
    "late": late.LateConfig(),
}


def run(name: str, data: Path, small: bool = False, seed: int = 0, say=print) -> Verdict:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    cfg = dataclasses.replace((SMALL if small else FULL)[name], seed=seed)
    module = {"replay": replay, "crash": crash, "late": late}[name]
    return module.run(Path(data), cfg, say=say)
