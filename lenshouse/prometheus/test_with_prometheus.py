"""A real Prometheus (Debian's 2.42) scrapes an exporter of the test's own and
remote-writes into lenshouse; what Prometheus stored and what lenshouse holds
must agree sample for sample."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from lenshouse.api.auth import Auth
from lenshouse.cluster import prometheus as testing
from lenshouse.conftest import LiveServer, free_port
from lenshouse.node import Node
from lenshouse.tenancy.registry import FileRegistry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not testing.available(), reason="Debian's prometheus is not installed"),
]
SCRAPES = 8
WAIT_S = 60.0
TENANT = "prom"
FUNCTIONS = ("avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
             "count_over_time")  # fmt: skip


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


def _matrix(url: str, params: dict, headers: dict | None = None) -> dict[tuple, list]:
    r = httpx.post(url + "/api/v1/query_range", data=params, headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "success" and doc["data"]["resultType"] == "matrix"
    return {
        tuple(sorted(s["metric"].items())): [(round(t * 1000), float(v)) for t, v in s["values"]]
        for s in doc["data"]["result"]
    }


def _wait_for(setup: Setup, params: dict, want: dict[tuple, list]) -> dict[tuple, list]:
    """lenshouse's answer once it holds every sample the answer needs."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = _matrix(setup.lens.url, params, setup.auth)
        if got.keys() == want.keys() and all(len(got[k]) == len(want[k]) for k in want):
            return got
        assert time.monotonic() < deadline, (got, want)
        time.sleep(0.5)


def _scraped(setup: Setup) -> tuple[dict[tuple, list], list[int]]:
    stored = testing.samples(setup.prom, 'lh_temperature{site="A"}', time.time() - 2.0, 3600)
    stamps = sorted({t for samples in stored.values() for t, _ in samples})
    assert len(stored) == 3 and len(stamps) >= SCRAPES - 3
    return stored, stamps


@pytest.mark.parametrize("function", FUNCTIONS)
def test_query_api_answers_as_prometheus_does(setup: Setup, function: str) -> None:
    """The same query_range asked of Prometheus and of lenshouse, evaluated
    between scrapes (where Prometheus 2's closed windows and the left-open
    ones of Prometheus 3 and lenshouse hold the same samples)."""
    _, stamps = _scraped(setup)
    start, end = stamps[1] + 500, stamps[-1] - 500
    query = f'{function}(lh_temperature{{site="A"}}[2s])'
    params = {"query": query, "start": start / 1000, "end": end / 1000, "step": "1"}
    want = _matrix(setup.prom, params)
    assert len(want) == 3 and all(want.values())
    got = _wait_for(setup, params, want)
    for key, series in want.items():
        assert [t for t, _ in got[key]] == [t for t, _ in series], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in series], rel=1e-12), key


def test_windows_leave_out_their_left_edge(setup: Setup) -> None:
    """At the scrapes' own timestamps a 2 s window's left edge is a sample:
    (t − 2s, t] leaves it out (Prometheus 3, lenshouse); Prometheus 2.42's
    [t − 2s, t] counts it. Checked against Prometheus' own stored samples."""
    stored, stamps = _scraped(setup)
    start, end = stamps[1], stamps[-1]
    params = {"query": 'count_over_time(lh_temperature{site="A"}[2s])', "start": start / 1000,
              "end": end / 1000, "step": "1"}  # fmt: skip
    closed = _matrix(setup.prom, params)
    got = _wait_for(setup, params, closed)
    edge_hits = 0
    for key, samples in stored.items():
        labels = tuple(kv for kv in key if kv[0] != "__name__")
        ts = np.array([t for t, _ in samples])
        for (t, n), (t2, n_closed) in zip(got[labels], closed[labels]):
            assert t == t2
            assert n == ((ts > t - 2000) & (ts <= t)).sum()  # left-open, from the samples
            edge = int((ts == t - 2000).sum())
            assert n == n_closed - edge
            edge_hits += edge
    assert edge_hits > 0  # the scrapes are 1 s apart: some windows began on a sample
