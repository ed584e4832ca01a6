"""The Prometheus query API against a brute force of PromQL's own definition
(samples with ``t − range < ts <= t``) on the same raw points: random
evaluation grids, ranges, functions and aggregations over 1 kHz bursts,
sparse series and late, shuffled writes; and its answer shapes and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenshouse.api.app import create_app
from lenshouse.lens.engine import MAX_BUCKETS, MAX_RAW_WINDOW_MS
from lenshouse.lens.test_oracle import write_shuffled
from lenshouse.node import Node

T0 = 1_700_006_400_000 - 2 * 3_600_000  # two hours before a day boundary
SPAN = 4 * 3_600_000
LABELS = {
    1: {"__name__": "temp", "site": "A", "line": "1"},
    2: {"__name__": "temp", "site": "A", "line": "2"},
    3: {"__name__": "temp", "site": "B", "line": "1"},
    4: {"__name__": "pressure", "site": "B", "line": "1"},
}
FUNCTIONS = ("avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
             "count_over_time", "last_over_time")  # fmt: skip


def _data() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = {}
    for sensor in LABELS:
        parts = [rng.integers(T0, T0 + SPAN, 3000)]  # sparse
        for _ in range(3):  # 1 kHz bursts of up to 10 minutes
            a = int(rng.integers(T0, T0 + SPAN - 600_000))
            parts.append(np.arange(a, a + int(rng.integers(1, 600_000))))
        ts = np.unique(np.concatenate(parts).astype(np.int64))
        out[sensor] = (ts, rng.normal(20, 5, len(ts)).round(3))
    return out


class World:
    def __init__(self, client: TestClient, data: dict) -> None:
        self.client, self.data = client, data

    def query_range(self, query: str, start: int, end: int, step: int, post: bool = False):
        params = {"query": query, "start": start / 1000, "end": end / 1000, "step": step / 1000}
        if post:
            return self.client.post("/api/v1/query_range", data=params)
        return self.client.get("/api/v1/query_range", params=params)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir: Path = tmp_path_factory.mktemp("promql") / "data"
    node = Node(data_dir, flush_interval=0.02).start()
    try:
        data = _data()
        write_shuffled(node, "default", data, 3)
        for sensor, labels in LABELS.items():
            node.catalog.put("default", sensor, labels)
        with TestClient(create_app(node)) as client:
            yield World(client, data)
    finally:
        node.stop()


def brute(ts: np.ndarray, value: np.ndarray, name: str, times: np.ndarray, r: int) -> np.ndarray:
    """PromQL's range function at each time, straight from its definition
    (``ts`` ascending)."""
    out = np.full(len(times), np.nan)
    for i, t in enumerate(times):
        v = value[(ts > t - r) & (ts <= t)]
        if len(v):
            out[i] = {
                "avg_over_time": np.mean,
                "min_over_time": np.min,
                "max_over_time": np.max,
                "sum_over_time": np.sum,
                "count_over_time": len,
                "last_over_time": lambda v: v[-1],
            }[name](v)
    return out


def _answer(r) -> dict[tuple, dict[int, float]]:
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "success" and doc["data"]["resultType"] == "matrix"
    return {
        tuple(sorted(s["metric"].items())): {round(t * 1000): float(v) for t, v in s["values"]}
        for s in doc["data"]["result"]
    }


def _same(got: dict[int, float], times: np.ndarray, want: np.ndarray, what: str) -> None:
    expect = {int(t): float(w) for t, w in zip(times, want) if not np.isnan(w)}
    assert set(got) == set(expect), f"{what}: times differ"
    for t, w in expect.items():
        assert got[t] == pytest.approx(w, rel=1e-9, abs=1e-9), f"{what} at {t}"


def _refused(resp, start: int, end: int, step: int, n: int, r: int) -> bool:
    """Whether the query was refused, and then rightly: the grid of every window's
    edges holds more buckets than a lens serves, or no tier divides it and the
    span is more than raw points answer (10 minutes)."""
    g = math.gcd(step, r) if n > 1 else r
    too_many = (end - start + r) // g > MAX_BUCKETS
    untiered = g % 100 != 0 and end - start + r > MAX_RAW_WINDOW_MS
    if resp.status_code == 200:
        assert not too_many and not untiered
        return False
    assert resp.status_code == 422 and resp.json()["errorType"] == "execution", resp.text
    assert (too_many and "buckets" in resp.text) or (untiered and "tier" in resp.text), resp.text
    return True


grids = st.tuples(
    st.integers(T0 - 600_000, T0 + SPAN),  # start
    st.sampled_from([1000, 2000, 5000, 15_000, 60_000, 300_000, 1300, 250]),  # step
    st.integers(1, 400),  # points
    st.sampled_from([1000, 5000, 15_000, 60_000, 300_000, 3_600_000, 2500, 700]),  # range
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(grid=grids, name=st.sampled_from(FUNCTIONS), aligned=st.booleans())
def test_range_functions_equal_their_definition(world: World, grid, name, aligned) -> None:
    start, step, n, r = grid
    if aligned:
        start -= start % step  # Grafana aligns start to the step
    end = start + (n - 1) * step
    r_text = f"{r}ms"
    resp = world.query_range(f'{name}(temp{{site="A"}}[{r_text}])', start, end, step)
    if _refused(resp, start, end, step, n, r):
        return
    got = _answer(resp)
    times = start + step * np.arange(n, dtype=np.int64)
    for sensor in (1, 2):
        labels = {k: v for k, v in LABELS[sensor].items() if k != "__name__"}
        ts, value = world.data[sensor]
        want = brute(ts, value, name, times, r)
        _same(got.get(tuple(sorted(labels.items())), {}), times, want, f"{name} sensor {sensor}")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    grid=grids,
    op=st.sampled_from(["sum", "avg", "min", "max", "count"]),
    by=st.sampled_from(["by (site)", "without (line)", "by (line)", ""]),
)
def test_aggregations_equal_their_definition(world: World, grid, op, by) -> None:
    start, step, n, r = grid
    start -= start % step
    end = start + (n - 1) * step
    resp = world.query_range(
        f'{op} {by} (max_over_time({{__name__=~"temp|pressure"}}[{r}ms]))', start, end, step
    )
    if _refused(resp, start, end, step, n, r):
        return
    got = _answer(resp)
    times = start + step * np.arange(n, dtype=np.int64)
    groups: dict[tuple, list[np.ndarray]] = {}
    for sensor, labels in LABELS.items():
        key = {"by (site)": ("site",), "by (line)": ("line",), "": ()}.get(by)
        if key is None:
            kept = tuple(sorted((k, v) for k, v in labels.items() if k not in ("line", "__name__")))
        else:
            kept = tuple(sorted((k, labels[k]) for k in key))
        ts, value = world.data[sensor]
        groups.setdefault(kept, []).append(brute(ts, value, "max_over_time", times, r))
    for key, rows in groups.items():
        m = np.array(rows)
        present = ~np.isnan(m)
        n_ = present.sum(axis=0)
        if op in ("sum", "avg"):
            fold = np.where(present, m, 0.0).sum(axis=0) / (np.maximum(n_, 1) if op == "avg" else 1)
        elif op == "min":
            fold = np.where(present, m, np.inf).min(axis=0)
        elif op == "max":
            fold = np.where(present, m, -np.inf).max(axis=0)
        else:
            fold = n_.astype(float)
        want = np.where(n_ > 0, fold, np.nan)
        _same(got.get(key, {}), times, want, f"{op} {by} group {key}")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(grid=grids)
def test_a_selector_on_its_own_is_the_latest_sample_in_the_lookback(world: World, grid) -> None:
    start, step, n, _ = grid
    start -= start % step
    end = start + (n - 1) * step
    resp = world.query_range('temp{line="1"}', start, end, step)
    if _refused(resp, start, end, step, n, 300_000):
        return
    got = _answer(resp)
    times = start + step * np.arange(n, dtype=np.int64)
    for sensor in (1, 3):
        ts, value = world.data[sensor]
        want = brute(ts, value, "last_over_time", times, 300_000)
        key = tuple(sorted(LABELS[sensor].items()))  # __name__ kept, as Prometheus keeps it
        _same(got.get(key, {}), times, want, f"temp sensor {sensor}")


def test_instant_queries_and_scalars(world: World) -> None:
    t = T0 + SPAN // 2
    r = world.client.get(
        "/api/v1/query", params={"query": "count_over_time(temp[1h])", "time": t / 1000}
    )
    assert r.status_code == 200, r.text
    doc = r.json()["data"]
    assert doc["resultType"] == "vector" and len(doc["result"]) == 3
    for item in doc["result"]:
        sensor = next(s for s in (1, 2, 3) if LABELS[s]["line"] == item["metric"]["line"]
                      and LABELS[s]["site"] == item["metric"]["site"])  # fmt: skip
        ts, value = world.data[sensor]
        assert item["value"][0] == t / 1000
        assert (
            float(item["value"][1])
            == brute(ts, value, "count_over_time", np.array([t]), 3_600_000)[0]
        )
    r = world.client.post("/api/v1/query", data={"query": "1+1", "time": "1700000000"})
    assert r.json() == {
        "status": "success",
        "data": {"resultType": "scalar", "result": [1_700_000_000.0, "2"]},
    }


def test_grafana_posts_forms(world: World) -> None:
    start = T0 + 3_600_000
    get = world.query_range("avg_over_time(temp[1m])", start, start + 600_000, 60_000)
    post = world.query_range("avg_over_time(temp[1m])", start, start + 600_000, 60_000, True)
    a, b = _answer(get), _answer(post)
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:  # float sums may add in another order (parallel aggregation)
        assert a[key] == pytest.approx(b[key], rel=1e-12)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("rate(temp[5m])", "function 'rate' is not supported"),
        ("temp[5m]", "inside a range function"),
        ("avg_over_time(temp[5m] offset 1m)", "'offset' modifier"),
        ("avg_over_time(temp[5m:1m])", "subqueries"),
        ("avg_over_time(temp[5m]) / 2", "between series"),
        ('avg_over_time({a=""}[1m])', "does not match the empty value"),
        ('avg_over_time(temp{site=~"("}[1m])', "not a regular expression"),
        ("avg_over_time(temp[5m]", "expected ')'"),
        ("", "missing parameter"),
    ],
)
def test_unsupported_promql_is_refused_naming_the_part(world: World, query, words) -> None:
    r = world.query_range(query, T0, T0 + 60_000, 15_000)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["status"] == "error" and doc["errorType"] == "bad_data" and words in doc["error"]


def test_bad_parameters_are_refused(world: World) -> None:
    c = world.client
    base = {"query": "avg_over_time(temp[1m])", "start": T0 / 1000, "end": T0 / 1000 + 60}
    for params, words in [
        ({**base, "step": "0"}, "zero or negative"),
        ({**base, "step": "0.001"}, "maximum resolution"),
        ({**base, "step": "soon"}, "valid duration"),
        ({**base, "start": "yesterday", "step": "15"}, "valid timestamp"),
        ({**base, "end": T0 / 1000 - 60, "step": "15"}, "before start"),
    ]:
        r = c.get("/api/v1/query_range", params=params)
        assert r.status_code == 400 and words in r.json()["error"], (params, r.text)
    r = c.get(
        "/api/v1/query_range",
        params={**base, "step": "15", "query": 'count_over_time({__name__=~".+"}[1m])'},
    )
    assert r.status_code == 200  # 4 series: within the limit


def test_series_and_labels(world: World) -> None:
    c = world.client
    r = c.get("/api/v1/series", params={"match[]": ['temp{site="B"}', "pressure"]})
    assert r.status_code == 200
    assert sorted(r.json()["data"], key=lambda d: d["__name__"]) == [LABELS[4], LABELS[3]]
    assert c.get("/api/v1/labels").json() == {
        "status": "success",
        "data": ["__name__", "line", "site"],
    }
    values = c.get("/api/v1/label/__name__/values").json()
    assert values == {"status": "success", "data": ["pressure", "temp"]}
    scoped = c.get("/api/v1/label/line/values", params={"match[]": 'temp{site="B"}'}).json()
    assert scoped["data"] == ["1"]
    r = c.get("/api/v1/series")
    assert r.status_code == 400 and r.json()["errorType"] == "bad_data"
    other = c.get("/api/v1/labels", headers={"X-Tenant": "other"}).json()
    assert other == {"status": "success", "data": []}
    assert c.get("/api/v1/status/buildinfo").json()["status"] == "success"
