"""A real Prometheus (Debian's 2.42) scrapes an exporter of the test's own and
remote-writes into lenshouse; what Prometheus stored and what lenshouse holds
must agree sample for sample."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from lenshouse.api.auth import Auth
from lenshouse.conftest import LiveServer, free_port
from lenshouse.node import Node
from lenshouse.prometheus import testing
from lenshouse.tenancy.registry import FileRegistry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not testing.available(), reason="Debian's prometheus is not installed"),
]
SCRAPES = 8
WAIT_S = 60.0
TENANT = "prom"


class Setup:
    def __init__(
        self, lens: LiveServer, prom_url: str, exporter: testing.Exporter, token: str
    ) -> None:
        self.lens, self.prom, self.exporter = lens, prom_url, exporter
        self.auth = {"Authorization": f"Bearer {token}"}

    def lenshouse_samples(self, start_ms: int, end_ms: int) -> dict[tuple, list]:
        """{sorted labels: [(ts, value), ...]} of every series lenshouse holds."""
        h = self.auth
        listed = httpx.get(self.lens.url + "/v1/sensors", headers=h).json()["sensors"]
        out = {}
        for entry in listed:
            r = httpx.get(
                self.lens.url + "/v1/export",
                params={"sensors": entry["sensor"], "start": start_ms, "end": end_ms},
                headers=h,
            )
            r.raise_for_status()
            t = pa.ipc.open_stream(r.content).read_all()
            key = tuple(sorted(entry["labels"].items()))
            out[key] = list(zip(t.column("ts").to_pylist(), t.column("value").to_pylist()))
        return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root: Path = tmp_path_factory.mktemp("prom")
    node = Node(root / "lenshouse", flush_interval=0.05).start()
    registry = FileRegistry(root / "lenshouse")
    token = registry.create(TENANT)
    try:
        with contextlib.ExitStack() as stack:
            lens = stack.enter_context(LiveServer(node, Auth(registry)))
            exporter = stack.enter_context(testing.Exporter())
            write_url = lens.url + "/api/v1/write"
            prom = stack.enter_context(
                testing.prometheus(root / "p", free_port(), exporter.target, write_url, token=token)
            )
            deadline = time.monotonic() + WAIT_S
            while exporter.scrapes < SCRAPES:
                assert time.monotonic() < deadline, "Prometheus did not scrape the exporter"
                time.sleep(0.2)
            yield Setup(lens, prom, exporter, token)
    finally:
        node.stop()


def test_remote_write_holds_what_prometheus_stored(setup: Setup) -> None:
    at = time.time() - 2.0  # samples up to here were scraped and are being sent
    want = testing.samples(setup.prom, '{job="sensors"}', at, 3600)
    assert len(want) >= 6 and all(len(v) >= SCRAPES - 3 for v in want.values()), want.keys()
    end_ms = int(at * 1000) + 1  # Prometheus' range ends at `at` inclusive
    deadline = time.monotonic() + WAIT_S
    while True:
        got = setup.lenshouse_samples(end_ms - 3_600_000, end_ms)
        got = {k: v for k, v in got.items() if dict(k).get("job") == "sensors"}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(got) == set(want)
    for key, samples in want.items():
        assert got[key] == samples, key
