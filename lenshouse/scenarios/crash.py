"""Scenario ``crash``: a streaming client that retries unacknowledged batches
runs while the server is killed with SIGKILL at random moments, sometimes
again while it recovers. After the last restart nothing acknowledged is lost
or doubled and every lens is exact."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenshouse.generators.signals import Fleet
from lenshouse.scenarios.ledger import Ledger, Verdict, verdict
from lenshouse.scenarios.server import ServerProcess


@dataclass
class CrashConfig:
    sensors: int = 50
    rate_hz: int = 1000
    seconds: int = 60  # of data at least, one batch per second of data
    pace_s: float = 0.1  # between batches; the stream goes on until the last restart
    kills: int = 6
    checks: int = 200
    seed: int = 0


def run(data: Path, cfg: CrashConfig, say=print) -> Verdict:
    rng = np.random.default_rng(cfg.seed)
    fleet = Fleet(sensors=cfg.sensors, rate_hz=cfg.rate_hz, seed=cfg.seed,
                  start_ms=1_700_000_000_000)  # fmt: skip
    ledger = Ledger()
    server = ServerProcess(data, flush_interval=0.3)
    server.start()
    done = threading.Event()
    killing = threading.Event()
    killing.set()
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            with ledger.client(server.url, timeout=30.0) as client:
                k = 0
                while k < cfg.seconds or killing.is_set():
                    ledger.send(client, fleet.second(k))
                    k += 1
                    time.sleep(cfg.pace_s)
        except BaseException as e:  # reported in the verdict
            failure.append(e)
        finally:
            done.set()

    client = threading.Thread(target=stream, daemon=True)
    client.start()
    recoveries = []
    mid_stream = 0
    try:
        for i in range(cfg.kills):
            time.sleep(float(rng.uniform(0.2, 1.5)))
            mid_stream += not done.is_set()
            server.kill9()
            server.spawn()
            if i % 3 == 2:  # kill again while it recovers
                time.sleep(float(rng.uniform(0.05, 0.8)))
                server.kill9()
                say(f"  kill {i + 1}: killed again during recovery")
                server.spawn()
            recoveries.append(server.wait_ready())
            say(f"  kill {i + 1}/{cfg.kills}: back in {recoveries[-1]:.2f} s")
        killing.clear()
        done.wait(600)
        server.wait_loaded()
        v = verdict("crash", server.url, ledger, rng, cfg.checks)
    finally:
        killing.clear()
        server.stop()
    if failure:
        v.notes.insert(0, f"client failed: {failure[0]!r}")
        v.checks += 1  # a failed client is a failed scenario
    v.notes.insert(0, "recovery seconds: " + ", ".join(f"{r:.2f}" for r in recoveries))
    v.notes.insert(1, f"{mid_stream} of {cfg.kills} kills hit a running stream;"
                      f" client retried {ledger.stats.retries} times")  # fmt: skip
    return v
