"""The query-load generator against a real server, at tiny scale."""

from __future__ import annotations

import math
import time

import pytest

from lenshouse.conftest import free_port
from lenshouse.generators.load import (
    LoadConfig,
    LoadResult,
    Window,
    choose_request,
    parse_mix,
    percentile,
    run_load,
    summarize,
)
from lenshouse.generators.signals import Fleet

SENSORS = 4


def test_parse_mix() -> None:
    mix = parse_mix("10s:0.35,1m:0.3, 1h:0.2,1d")
    assert [w.name for w in mix] == ["10s", "1m", "1h", "1d"]
    assert [w.ms for w in mix] == [10_000, 60_000, 3_600_000, 86_400_000]
    assert mix[-1].weight == 1.0
    with pytest.raises(ValueError):
        parse_mix("10x")
    with pytest.raises(ValueError):
        parse_mix("")


def test_percentiles_are_ordered_and_match_interpolation() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 100.0
    s = summarize([5.0, 1.0, 3.0, math.nan, 2.0, 4.0])
    assert s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"] == 5.0
    assert math.isnan(summarize([])["p50"])


def test_requests_respect_sensor_counts_and_span() -> None:
    import random

    cfg = LoadConfig(
        url="http://x",
        sensors=tuple(range(1, 21)),
        min_sensors=2,
        max_sensors=5,
        mix=(Window("1m", 60_000),),
        span=(1_000_000, 2_000_000),
    )
    rng = random.Random(1)
    for _ in range(200):
        w, sensors, start, end = choose_request(rng, cfg, now_ms=0)
        assert 2 <= len(sensors) <= 5 and len(set(sensors)) == len(sensors)
        assert set(sensors) <= set(cfg.sensors)
        assert start >= 1_000_000 and end <= 2_000_000 and end - start == w.ms
    live = LoadConfig(url="http://x", mix=(Window("10s", 10_000),))
    _, _, start, end = choose_request(rng, live, now_ms=5_000_000)
    assert (start, end) == (4_990_000, 5_000_000)


@pytest.mark.parametrize("answer", ["json", "arrow"])
def test_users_against_a_live_server(node, live_server, answer: str) -> None:
    now = int(time.time()) * 1000
    fleet = Fleet(sensors=SENSORS, rate_hz=100, start_ms=now - 70_000)
    for k in range(70):
        lsn = node.ingestor.write_sync(fleet.second(k))
    assert node.ingestor.wait_visible(lsn, timeout=20)
    cfg = LoadConfig(
        url=live_server.url,
        users=3,
        duration=1.5,
        think=0.02,
        mix=parse_mix("10s:2,1m:1"),
        sensors=tuple(range(1, SENSORS + 1)),
        max_sensors=SENSORS,
        points=500,
        parse=True,
        seed=3,
        answer=answer,
    )
    ticks: list[float] = []
    result = run_load(cfg, on_tick=lambda t, samples: ticks.append(t))
    assert ticks, "on_tick is called while the users run"
    assert result.requests >= 3 and result.errors == 0
    assert {s.user for s in result.samples} == {0, 1, 2}
    assert set(result.windows()) <= {"10s", "1m"}
    for s in result.samples:
        assert s.status == 200 and s.bytes > 0
        assert 0 < s.server_ms <= s.latency_ms
        assert 0 <= s.server_cpu_ms <= s.server_ms + 0.1  # one thread: no more CPU than time
        assert 1 <= s.sensors <= SENSORS
        assert s.buckets > 0  # every window holds data
    lat = result.latency()
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result.throughput() > 0
    doc = result.to_dict(samples=True)
    assert doc["requests"] == sum(w["requests"] for w in doc["by_window"].values())
    again = LoadResult.from_dict(doc)
    assert again.requests == result.requests and again.latency() == lat


def test_an_unreachable_server_counts_errors() -> None:
    cfg = LoadConfig(
        url=f"http://127.0.0.1:{free_port()}", users=2, duration=0.3, think=0.0, timeout=1.0
    )
    result = run_load(cfg)
    assert result.requests >= 2
    assert result.errors == result.requests
    assert all(s.status == 0 and s.error for s in result.samples)
    assert math.isnan(result.latency()["p50"])
