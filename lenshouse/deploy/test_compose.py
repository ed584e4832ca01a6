"""The compose stack, run for real: images built here from Debian packages,
the whole 2 × 2 topology of ``deploy/compose`` up on lenshouse's own docker
daemon, the generator's data streamed through the unreliable middle layer to
both gateways while one ClickHouse container is killed and another is cut
from its network for 20 s. Through the public API only, every acknowledged
point must then be stored once with its value, and random lenses must equal
the numpy oracle."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from lenshouse.deploy import compose, render
from lenshouse.generators.sender import MiddleLayer
from lenshouse.generators.signals import Fleet
from lenshouse.scenarios.ledger import fetch_stored, verdict
from lenshouse.scenarios.workload import Workload

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROJECT = f"lhtest{os.getpid()}"
GATEWAYS = ["http://127.0.0.1:18080", "http://127.0.0.1:18081"]
LENS = ["http://127.0.0.1:18100", "http://127.0.0.1:18101"]
ARTIFACTS = REPO / "test-artifacts"
ADMIN_TOKEN = Path("/var/lib/lenshouse-docker/admin-token")
PINNED = compose.pinned(render.FULL, compose.DEFAULT_BACKEND_NET)
TOOLS = ("dockerd", "docker-compose", "debootstrap")


def _compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LENSHOUSE_COMPOSE_PROJECT": PROJECT}
    return subprocess.run(
        [str(REPO / "scripts/compose-local"), *args],
        cwd=REPO,
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def _docker(*args: str) -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///var/lib/lenshouse-docker/docker.sock"}
    subprocess.run(
        ["/usr/bin/docker", *args], env=env, check=True, capture_output=True, timeout=120
    )


def _wait_ready(urls: list[str], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    for url in urls:
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready within {limit_s:.0f} s")
            time.sleep(1)


@pytest.fixture(scope="module")
def stack():
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS):
        pytest.skip(f"needs root and {', '.join(TOOLS)} (scripts/install-system-deps)")
    t0 = time.monotonic()
    try:
        # Always from this checkout (the layers of unchanged packages are cached).
        daemon = subprocess.run(
            [str(REPO / "scripts/container-daemon"), "start"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        built = subprocess.run(
            [str(REPO / "scripts/build-images"), "local"],
            cwd=REPO,
            env={**os.environ, "DOCKER_HOST": daemon.stdout.strip()},
            check=True,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        print(built.stdout)
        up = _compose("up")
        print(up.stdout, up.stderr, f"stack up in {time.monotonic() - t0:.0f} s", sep="\n")
        _wait_ready(GATEWAYS + LENS, 300)
        print(f"stack ready in {time.monotonic() - t0:.0f} s")
        yield
    finally:
        logs = _compose("logs", "--no-color", "--timestamps", check=False)
        ARTIFACTS.mkdir(exist_ok=True)
        saved = ARTIFACTS / f"compose-{PROJECT}.log"
        saved.write_text(logs.stdout)
        print(f"the stack's logs: {saved}")
        _compose("down", check=False)


def test_compose_stack_keeps_every_point_through_a_kill_and_a_cut(stack) -> None:
    # Auth is on in the stack: without the token nothing is written or read.
    r = httpx.post(GATEWAYS[0] + "/v1/write", content=b"", headers={"X-Tenant": "x"}, timeout=10)
    assert r.status_code == 401, r.text
    assert httpx.get(LENS[0] + "/v1/sensors", timeout=10).status_code == 401
    fleet = Fleet(sensors=20, rate_hz=1000, seed=3, start_ms=(int(time.time()) - 5) * 1000)
    middle = MiddleLayer(
        delay_s=0.3, reorder=True, duplicate=0.1, replay_after_s=(0.5, 5.0), seed=3
    )
    w = Workload(
        GATEWAYS,
        fleet,
        30,
        tenant=f"compose-{uuid.uuid4().hex[:6]}",
        token=ADMIN_TOKEN.read_text().strip(),  # compose-local made it
        middle=middle,
        give_up_after=300,
    )
    w.start()
    killed, cut = f"{PROJECT}_ch-s1-r2_1", f"{PROJECT}_ch-s2-r1_1"

    def faults() -> None:
        time.sleep(6)
        _docker("kill", killed)
        time.sleep(2)
        _docker("network", "disconnect", f"{PROJECT}_backend", cut)
        time.sleep(20)
        # Back as compose attached it: under its service name, at its own address.
        _docker("network", "connect", "--alias", "ch-s2-r1", "--ip", PINNED["ch-s2-r1"],
                f"{PROJECT}_backend", cut)  # fmt: skip
        _docker("start", killed)

    injector = threading.Thread(target=faults)
    injector.start()
    injector.join(120)
    w.join(600)
    # Caught up when the lens server holds every acknowledged point (bounded).
    s, t, _ = w.ledger.distinct()
    deadline = time.monotonic() + 300
    while True:
        stored = fetch_stored(
            LENS[0], w.ledger.tenant, np.unique(s).tolist(), int(t.min()), int(t.max()) + 1,
            w.ledger.token,
        )  # fmt: skip
        if len(stored[0]) >= len(t) or time.monotonic() > deadline:
            break
        time.sleep(2)
    v = verdict("compose", LENS[1], w.ledger, np.random.default_rng(3), 20)
    print(v.line(), f"write failures: {len(w.ledger.stats.failed_at)}")
    assert v.ok, v.line() + " " + "; ".join(v.notes)
    assert v.lost == v.dup == v.wrong == 0 and v.stored == v.distinct > 0
