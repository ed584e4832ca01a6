"""Cluster mode II end to end, on the real thing: 3 NATS JetStream servers, 2
loaders, 2 gateways and 2 lens servers (each its own process) over the 2 × 2
ClickHouse 18.16 cluster and its 3 ZooKeeper nodes. A workload streams
through the unreliable middle layer to both gateways while a fault is
injected; afterwards every acknowledged point must be stored once (an export
compared with what the client saw acknowledged) and random lenses from both
lens servers must equal the numpy oracle. (The killed log leader, replica,
shard and the rest of the fault matrix: ``lenshouse/scenarios/test_cluster_scenarios.py``.)"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenshouse.cluster import probes, processes, record
from lenshouse.cluster.testing import cluster_available
from lenshouse.conftest import cluster_store
from lenshouse.coordination import progress
from lenshouse.coordination.zk import SESSION_TIMEOUT_S, Paths
from lenshouse.coordination.zk import connect as zk_connect
from lenshouse.generators.sender import MiddleLayer
from lenshouse.generators.signals import Fleet
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.scenarios.ledger import JsonSeries, lens_checks, verdict
from lenshouse.scenarios.workload import Workload
from lenshouse.storage.introspect import raw_with_seq
from lenshouse.stream.partitions import partition_of
from lenshouse.tenancy.client import tenant_headers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cluster_available(), reason="ClickHouse/ZooKeeper not installed"),
]

SENSORS, RATE_HZ = 20, 500  # 10,000 points a second, in one batch a second
CATCH_UP_S = 120.0


def _root(doc: dict) -> Path:
    return Path(doc["dir"])


def _workload(doc: dict, name: str, seconds: int, **middle) -> Workload:
    """A workload of a tenant of its own (new on every run: a cluster may be
    reused), stamped with the wall clock, as sensors are: the lens servers'
    heads hold its newest seconds."""
    tenant = f"{name}-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(sensors=SENSORS, rate_hz=RATE_HZ, seed=zlib.crc32(name.encode()) % 1000,
                  start_ms=int(time.time() * 1000))  # fmt: skip
    layer = MiddleLayer(reorder=True, duplicate=0.2, replay_after_s=(0.2, 3.0), seed=1, **middle)
    return Workload(doc["gateways"], fleet, seconds, tenant=tenant, middle=layer,
                    token=doc["admin_token"])  # fmt: skip


def _wait(what: str, ready, timeout: float, poll: float = 0.25) -> float:
    """Seconds until ``ready()``; fails naming ``what`` after ``timeout``."""
    t0 = time.monotonic()
    for _ in range(int(timeout / poll) + 1):
        if ready():
            return time.monotonic() - t0
        time.sleep(poll)
    raise AssertionError(f"{what}: not after {timeout:.0f} s")


def _check(doc: dict, w: Workload, checks: int = 25) -> None:
    """Every acknowledged point stored once; lenses of both lens servers exact."""
    root = _root(doc)
    _wait(
        "loaders caught up with the log",
        lambda: probes.caught_up(record.load(root)),
        CATCH_UP_S,
    )
    rng = np.random.default_rng(7)
    lens1, lens2 = doc["lens_servers"]
    v = verdict(w.tenant, lens1, w.ledger, rng, checks)
    assert v.ok, v.line() + " " + "; ".join(v.notes)
    ok, problems = lens_checks(lens2, w.ledger, rng, checks)
    assert ok == checks, problems[:3]


def _fences_hold(doc: dict) -> None:
    """From the progress kept in the keeper: each partition's loads cover its
    records once, in order, and an owner's loads never come after a newer
    owner's (no two loaders ever committed the same partition concurrently)."""
    zk = zk_connect(record.keeper_hosts(doc))
    try:
        for p in range(doc["shards"]):
            state, _ = progress.read(zk, Paths("lenshouse"), p)
            history = state.history or []
            assert history, f"partition {p} has no loads on record"
            for a, b in itertools.pairwise(history):
                assert b["first"] == a["last"] + 1, f"partition {p}: gap or overlap {a} → {b}"
                assert b["fence"] >= a["fence"], f"partition {p}: a stale owner committed {b}"
                assert b["seq"] > a["seq"], f"partition {p}: seq not increasing {a} → {b}"
            assert state.next_lsn == history[-1]["last"] + 1
    finally:
        zk.stop()
        zk.close()


def test_the_topology_is_on_record(topology: dict) -> None:
    roles = {n["role"] for n in topology["nodes"]}
    assert {"clickhouse", "keeper", "nats", "gateway", "loader", "lens"} <= roles
    assert len(topology["gateways"]) == 2 and len(topology["lens_servers"]) == 2
    root = _root(topology)
    for n in topology["nodes"]:
        assert record.alive(n), n["name"]
    parts = probes.loader_partitions(record.load(root))
    assert sorted(parts) == [0, 1]
    assert len({row["loader"] for row in parts.values()}) == 2, "each loader owns one partition"


def test_replays_through_both_gateways_are_stored_once(topology: dict) -> None:
    w = _workload(topology, "replays", 8).start()
    w.join(120)
    _check(topology, w)
    # The middle layer's replays carry the same bytes: the log itself dropped them.
    dups = 0
    for url in topology["gateways"]:
        text = httpx.get(url + "/metrics", timeout=5).text
        dups += sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("lenshouse_log_messages_duplicate")
        )
    assert dups > 0


class _Reader(threading.Thread):
    """Random lenses from both lens servers while a workload streams in, most
    of them over the newest seconds acknowledged: where loads are in flight."""

    def __init__(self, doc: dict, w: Workload, until: threading.Event, seed: int) -> None:
        super().__init__(daemon=True)
        self.doc, self.w, self.until, self.seed = doc, w, until, seed
        self.answers: list[dict] = []
        self.errors: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(self.seed)
        lo = self.w.fleet.start_ms
        with httpx.Client(timeout=30) as client:
            for k in range(5000):  # bounded; stops when the workload is done
                if self.until.is_set():
                    return
                newest = lo + 1000 * len(self.w.acks)
                end = newest + int(rng.integers(-1500, 1500))
                start = end - int(rng.integers(150, 5000))
                params = {
                    "sensors": ",".join(map(str, rng.choice(np.arange(1, SENSORS + 1), 3, False))),
                    "start": start,
                    "end": end,
                    "points": int(rng.integers(5, 400)),
                }
                url = self.doc["lens_servers"][k % 2]
                r = client.get(
                    url + "/v1/lens",
                    params=params,
                    headers=tenant_headers(self.w.tenant, self.w.token),
                )
                if r.status_code == 200:
                    self.answers.append(r.json())
                else:
                    self.errors.append(f"{r.status_code} {r.text[:200]}")


def _explained(doc: dict, rows, partitions: int) -> str | None:
    """None if, for each partition, the answer's series equal the oracle over
    that partition's points of loads with seq <= k, for one k (the loads it
    had completed); else what no k explains."""
    sensor = rows.column("sensor").to_numpy().astype(np.int64)
    ts, value, seq = (rows.column(c).to_numpy() for c in ("ts", "value", "seq"))
    by_part: dict[int, list[dict]] = {}
    for series in doc["series"]:
        p = int(partition_of(doc["tenant"], np.array([series["sensor"]]), partitions)[0])
        by_part.setdefault(p, []).append(series)
    for p, group in by_part.items():
        mine = np.isin(sensor, [g["sensor"] for g in group])
        candidates = [-1, *np.unique(seq[mine]).tolist()]
        if not any(
            all(
                mismatch(
                    JsonSeries(g),
                    brute_force(
                        ts[(sensor == g["sensor"]) & (seq <= k)],
                        value[(sensor == g["sensor"]) & (seq <= k)],
                        doc["start"],
                        doc["end"],
                        doc["step"],
                    ),
                )
                is None
                for g in group
            )
            for k in candidates
        ):
            return f"partition {p}: no set of completed loads gives {[g['sensor'] for g in group]}"
    return None


def test_lenses_during_ingest_reflect_completed_loads(topology: dict, cluster: dict) -> None:
    """While loaders of both partitions load concurrently, every lens from
    either lens server equals the oracle over exactly the loads completed at
    some moment (per partition, a prefix of its loads): never a load half
    seen, never a load of one tier and not of another."""
    w = _workload(topology, "during", 15).start()
    done = threading.Event()
    readers = [_Reader(topology, w, done, seed) for seed in range(2)]
    for r in readers:
        r.start()
    w.join(120)
    _wait("loaders caught up", lambda: probes.caught_up(record.load(_root(topology))), 120)
    done.set()
    for r in readers:
        r.join(60)
    answers = [a for r in readers for a in r.answers]
    errors = [e for r in readers for e in r.errors]
    assert len(answers) >= 100, (len(answers), errors[:3])
    assert not errors, errors[:3]
    store = cluster_store(cluster, database="lenshouse")
    try:
        rows = raw_with_seq(store.backend, w.tenant)
    finally:
        store.close()
    problems = []
    for answer in answers:
        bad = _explained({**answer, "tenant": w.tenant}, rows, topology["shards"])
        if bad:
            problems.append(
                f"{bad} in lens {answer['start']}..{answer['end']} step {answer['step']}"
            )
    assert not problems, problems[:3]


@pytest.fixture(scope="module")
def streaming(topology: dict, cluster: dict) -> Iterator[tuple[Workload, object]]:
    """A workload streaming through both gateways for the tests that read
    while it runs (stopped once they are done), and a store to check with."""
    w = _workload(topology, "streaming", 600).start()
    store = cluster_store(cluster, database="lenshouse")
    time.sleep(3)
    try:
        yield w, store
    finally:
        w.stop()
        w.join(120)
        store.close()


_STEPS = (10, 100, 1_000, 10_000, 60_000)
_WIDTHS = (300, 2_000, 60_000, 3_600_000, 86_400_000)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    back=st.integers(-3_000, 1_500),
    width=st.one_of(st.sampled_from(_WIDTHS), st.integers(100, 120_000)),
    res=st.one_of(
        st.tuples(st.just("points"), st.integers(5, 2500)),
        st.tuples(st.just("step"), st.sampled_from(_STEPS)),
    ),
    sensors=st.lists(st.integers(1, SENSORS), min_size=1, max_size=4, unique=True),
    m4=st.booleans(),
    server=st.integers(0, 1),
)
def test_lenses_while_loads_run_equal_the_oracle_of_their_loads(
    topology: dict, streaming, back, width, res, sensors, m4, server
) -> None:
    """Windows ending at the newest points, fine and coarse, from either lens
    server while both partitions load back to back: each answer is one read
    (two at most), exact over a prefix of each partition's loads."""
    w, store = streaming
    assert w.streaming, "the workload must still be streaming while lenses are read"
    end = w.fleet.start_ms + int(1000 * (time.monotonic() - w.started)) + back
    start = end - width
    kind, amount = res
    if kind == "step" and (end - start) // amount > 20_000:
        kind, amount = "points", 2500
    params = {"sensors": ",".join(map(str, sensors)), "start": start, "end": end, kind: amount}
    if m4:
        params["agg"] = "avg,min,max,count,first,last,tfirst,tlast,tmin,tmax"
    url = topology["lens_servers"][server]
    r = httpx.get(
        url + "/v1/lens", params=params, headers=tenant_headers(w.tenant, w.token), timeout=30
    )
    assert r.status_code == 200, r.text[:300]
    assert int(r.headers["X-Lens-Reads"]) <= 2, r.headers["X-Lens-Reads"]
    answer = r.json()
    rows = store.backend.query(
        "SELECT sensor, ts, value, seq FROM raw"
        f" WHERE tenant = '{w.tenant}' AND sensor IN ({params['sensors']})"
        f" AND ts >= {answer['start']} AND ts < {answer['end']} ORDER BY sensor, ts"
    )
    bad = _explained({**answer, "tenant": w.tenant}, rows, topology["shards"])
    assert bad is None, f"{bad} in lens {params}"


def test_the_lens_servers_heads_answer_the_newest_seconds(topology: dict, streaming) -> None:
    """Both lens servers hold every partition's newest loads (announced by the
    loaders): a lens of the last few seconds reads no ClickHouse at all."""
    w, _ = streaming
    for url in topology["lens_servers"]:
        head = httpx.get(url + "/healthz", timeout=10).json()["head"]
        assert head["open_partitions"] == list(range(topology["shards"])), head
        assert head["loads_received"] > 0 and head["points"] > 0, head
        end = w.fleet.start_ms + int(1000 * (time.monotonic() - w.started)) - 2_000
        params = {"sensors": "1,2,3", "start": end - 3_000, "end": end, "points": 300}
        r = httpx.get(url + "/v1/lens", params=params, headers=tenant_headers(w.tenant, w.token),
                      timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        after = httpx.get(url + "/healthz", timeout=10).json()["head"]
        assert after["lenses_answered_whole"] > head["lenses_answered_whole"], after


class _Tenant:
    """A tenant of its own writing sensors 1–4 through any gateway, and the
    points per sensor a lens of it counts."""

    sensors = np.arange(1, 5, dtype=np.uint32)

    def __init__(self, topology: dict, name: str) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.headers = {"Authorization": f"Bearer {topology['admin_token']}", "X-Tenant": self.name}

    def post(self, url: str, when: np.ndarray, value: float) -> None:
        from lenshouse.generators.sender import ARROW, encode_arrow
        from lenshouse.points import PointBatch

        n = len(self.sensors)
        batch = PointBatch(self.name, np.repeat(self.sensors, len(when)), np.tile(when, n),
                           np.full(len(when) * n, value))  # fmt: skip
        r = httpx.post(url + "/v1/write", content=encode_arrow(batch), timeout=30,
                       headers={"Content-Type": ARROW, **self.headers})  # fmt: skip
        assert r.status_code == 204, r.text

    def lens(self, url: str, params: dict) -> list[dict]:
        r = httpx.get(url + "/v1/lens", params=params, headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["series"]

    def counts(self, url: str, params: dict) -> list[int]:
        return [sum(s["count"]) for s in self.lens(url, params)]


def test_cached_lenses_of_both_lens_servers_see_a_late_batch(topology: dict) -> None:
    """Both lens servers cache a window's chunks; a late batch lands in it
    through the other gateway; both then answer the oracle over every point
    (the cached chunks it wrote into are read again), while chunks it did not
    touch keep answering from the cache."""
    tenant = _Tenant(topology, "late")
    gw1, gw2 = topology["gateways"]
    t0 = 1_700_000_000_000
    ts = np.arange(t0, t0 + 60_000, 2, dtype=np.int64)  # every other ms, a minute
    late_ts = ts[(ts >= t0 + 50_000) & (ts < t0 + 51_000)] + 1  # the odd ms of one second
    params = {"sensors": "1,2,3,4", "start": t0, "end": t0 + 60_000, "step": 100}
    tenant.post(gw1, ts, 1.0)
    for url in topology["lens_servers"]:
        _wait("the batch loaded", lambda url=url: tenant.counts(url, params) == [len(ts)] * 4,
              CATCH_UP_S)  # fmt: skip
    before = [_cache(url) for url in topology["lens_servers"]]
    for url in topology["lens_servers"]:
        assert tenant.counts(url, params) == [len(ts)] * 4
    hits = [_cache(url)["hits"] - b["hits"] for url, b in zip(topology["lens_servers"], before)]
    assert all(h > 0 for h in hits), f"the second reads came from the cache: {hits}"
    tenant.post(gw2, late_ts, 3.0)
    every = np.concatenate([ts, late_ts])
    value = np.concatenate([np.ones(len(ts)), np.full(len(late_ts), 3.0)])
    want = brute_force(every, value, t0, t0 + 60_000, 100)
    seen_all = [len(every)] * 4
    for url in topology["lens_servers"]:
        _wait("the late batch seen", lambda url=url: tenant.counts(url, params) == seen_all,
              CATCH_UP_S)  # fmt: skip
        seen = _cache(url)
        for series in tenant.lens(url, params):
            assert mismatch(JsonSeries(series), want) is None, url
        after = _cache(url)
        assert after["invalidated"] > 0, "the chunk the late batch wrote into was dropped"
        assert after["hits"] > seen["hits"], "the chunks it did not write into still answer"


def test_heads_of_both_lens_servers_see_a_late_batch(topology: dict) -> None:
    """The same with the window in the last minute, which the lens servers'
    heads answer: a late batch through the other gateway reaches both heads
    (announced by the loader that loads it), and both answer the oracle over
    every point, from the head alone."""
    tenant = _Tenant(topology, "late-head")
    gw1, gw2 = topology["gateways"]
    t0 = (int(time.time()) - 20) * 1000
    ts = np.arange(t0, t0 + 10_000, 2, dtype=np.int64)
    late_ts = ts[(ts >= t0 + 5_000) & (ts < t0 + 6_000)] + 1
    params = {"sensors": "1,2,3,4", "start": t0, "end": t0 + 10_000, "step": 10}
    tenant.post(gw1, ts, 1.0)
    for url in topology["lens_servers"]:
        _wait("the batch loaded", lambda url=url: tenant.counts(url, params) == [len(ts)] * 4,
              CATCH_UP_S)  # fmt: skip
    tenant.post(gw2, late_ts, 3.0)
    every = np.concatenate([ts, late_ts])
    value = np.concatenate([np.ones(len(ts)), np.full(len(late_ts), 3.0)])
    want = brute_force(every, value, t0, t0 + 10_000, 10)
    seen_all = [len(every)] * 4
    for url in topology["lens_servers"]:
        _wait("the late batch seen", lambda url=url: tenant.counts(url, params) == seen_all,
              CATCH_UP_S)  # fmt: skip
        before = _head(url)
        for series in tenant.lens(url, params):
            assert mismatch(JsonSeries(series), want) is None, url
        after = _head(url)
        assert after["lenses_answered_whole"] > before["lenses_answered_whole"], after
        assert after["given_up"] == before["given_up"], after


def _head(url: str) -> dict:
    return httpx.get(url + "/healthz", timeout=10).json()["head"]


def _cache(url: str) -> dict:
    return httpx.get(url + "/healthz", timeout=10).json()["lens_cache"]


def test_a_gateway_killed_mid_stream(topology: dict) -> None:
    root = _root(topology)
    w = _workload(topology, "gateway-kill", 10).start()
    time.sleep(3)
    processes.stop(root, "gw1", kill=True)
    time.sleep(3)
    processes.start(root, "gw1")
    w.join(120)
    assert w.ledger.stats.failovers > 0, "the client moved to the other gateway"
    _check(topology, w)


def test_a_loader_killed_mid_load_is_taken_over(topology: dict) -> None:
    root = _root(topology)
    w = _workload(topology, "loader-kill", 14).start()
    time.sleep(4)
    victim = probes.loader_partitions(record.load(root))[0]["loader"]
    processes.stop(root, victim, kill=True)
    t_kill = time.monotonic()
    other = next(
        n["name"] for n in topology["nodes"] if n["role"] == "loader" and n["name"] != victim
    )
    took = _wait(
        "the other loader took partition 0",
        lambda: probes.loader_partitions(record.load(root)).get(0, {}).get("loader") == other,
        SESSION_TIMEOUT_S + 20,
    )
    assert took <= SESSION_TIMEOUT_S + 5, f"takeover took {took:.1f} s"
    w.join(120)
    _check(topology, w)
    _fences_hold(topology)
    processes.start(root, victim)
    _wait(
        "the restarted loader took a partition back",
        lambda: (
            len({r["loader"] for r in probes.loader_partitions(record.load(root)).values()}) == 2
        ),
        30 + time.monotonic() - t_kill,
    )


@contextlib.contextmanager
def _cut_off(ports: list[int]) -> Iterator[None]:
    """Drop every packet to these loopback ports while the servers keep running."""
    rules = [["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(p), "-j", "DROP"] for p in ports]
    added = []
    try:
        for r in rules:
            subprocess.run(["iptables", "-I", *r], check=True)
            added.append(r)
        yield
    finally:
        for r in added:
            subprocess.run(["iptables", "-D", *r], check=True)


def _iptables_works() -> bool:
    try:
        subprocess.run(["iptables", "-L", "INPUT", "-n"], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


@pytest.mark.skipif(not _iptables_works(), reason="needs iptables (root)")
def test_clickhouse_unreachable_for_20_seconds(topology: dict) -> None:
    """The network to every ClickHouse server cut for 20 s: writes are still
    acknowledged at once, lenses answer 503 (never a wrong answer), and the
    loaders catch up afterwards."""
    w = _workload(topology, "clickhouse-cut", 30).start()
    time.sleep(4)
    tcp = [n["ports"]["tcp"] for n in record.clickhouse_nodes(topology)]
    lens_url = topology["lens_servers"][0]
    statuses = []
    with _cut_off(tcp):
        t0 = time.monotonic()
        acked_before = len(w.acks)
        while time.monotonic() - t0 < 20:
            with contextlib.suppress(httpx.TimeoutException):
                params = {"sensors": "1", "start": 1_700_000_000_000, "end": 1_700_000_100_000}
                headers = tenant_headers(w.tenant, w.token)
                r = httpx.get(lens_url + "/v1/lens", params=params, headers=headers, timeout=3)
                statuses.append(r.status_code)
            time.sleep(1)
        acked_during = len(w.acks) - acked_before
    assert acked_during >= 15, f"only {acked_during} batches acknowledged during the outage"
    assert all(s in (200, 503) for s in statuses), statuses
    w.join(120)
    _check(topology, w)


def test_a_full_log_answers_503_and_keeps_what_it_acknowledged(topology: dict) -> None:
    """Past its byte budget the log refuses new batches (503 with Retry-After)
    and drops none of those it acknowledged."""
    from fastapi.testclient import TestClient

    from lenshouse.generators.sender import ARROW, encode_arrow
    from lenshouse.points import PointBatch
    from lenshouse.roles.gateway import Gateway, create_gateway_app
    from lenshouse.stream import jetstream
    from lenshouse.stream.partitions import LogLayout

    prefix = f"FULL{uuid.uuid4().hex[:6].upper()}"
    urls = record.log_urls(topology)
    loop = jetstream.LoopThread()
    try:
        nc = loop.run(jetstream.connect(urls, "test"))
        js = nc.jetstream()
        layout = LogLayout(prefix, 1)
        loop.run(jetstream.ensure_streams(js, layout, 3, budget=1 << 20))  # 1 MiB
        rng = np.random.default_rng(0)
        acknowledged, refused = 0, None
        with TestClient(create_gateway_app(Gateway(urls, prefix))) as client:
            _wait("the gateway is ready", lambda: client.get("/healthz").status_code == 200, 30)
            for k in range(200):  # ~100 KB each: the budget is reached well before
                ts = 1_700_000_000_000 + k * 10_000 + np.arange(10_000, dtype=np.int64)
                batch = PointBatch("full", np.ones(10_000, np.uint32), ts, rng.normal(size=10_000))
                r = client.post("/v1/write", content=encode_arrow(batch),
                                headers={"Content-Type": ARROW})  # fmt: skip
                if r.status_code == 204:
                    acknowledged += 1
                    continue
                refused = r
                break
        assert refused is not None, "the log never said it was full"
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "full" in refused.json()["error"]
        info = loop.run(js.stream_info(layout.stream(0)))
        assert info.state.messages == acknowledged > 0
        loop.run(js.delete_stream(layout.stream(0)))
        loop.run(nc.close())
    finally:
        loop.close()


def test_a_reader_whose_consumer_the_log_dropped_renews_it(topology: dict) -> None:
    """The log may drop a loader's consumer (idle too long, while loading waited
    for ClickHouse): the loader notices, reads on from where it was, loses nothing."""
    from lenshouse.stream import jetstream

    w = _workload(topology, "consumer-gone", 12).start()
    time.sleep(4)
    loop = jetstream.LoopThread()
    try:
        nc = loop.run(jetstream.connect(record.log_urls(topology), "test"))
        jsm = nc.jsm()
        dropped = 0
        for p in range(topology["shards"]):
            for c in loop.run(jsm.consumers_info(f"LH_P{p}")):
                loop.run(jsm.delete_consumer(f"LH_P{p}", c.name))
                dropped += 1
        loop.run(nc.close())
    finally:
        loop.close()
    assert dropped >= topology["shards"]
    w.join(120)
    _check(topology, w)


def test_tenants_of_the_cluster_see_only_their_own_data(topology: dict) -> None:
    """Auth is always on in cluster mode: tokens made through a lens server's
    admin API hold at every gateway and lens server (the keeper shares them);
    a tenant's token writes and reads its own data only."""
    from lenshouse.generators.sender import ARROW, encode_arrow
    from lenshouse.points import PointBatch

    admin = {"Authorization": f"Bearer {topology['admin_token']}"}
    lens1, lens2 = topology["lens_servers"]
    gw1, gw2 = topology["gateways"]
    names = [f"tn-{k}-{uuid.uuid4().hex[:6]}" for k in range(2)]
    tokens = {}
    for name in names:
        r = httpx.post(f"{lens1}/v1/admin/tenants/{name}/tokens", headers=admin, timeout=10)
        assert r.status_code == 201, r.text
        tokens[name] = {"Authorization": f"Bearer {r.json()['token']}"}
    ts = 1_700_000_000_000 + np.arange(1000, dtype=np.int64)
    for k, name in enumerate(names):
        body = encode_arrow(PointBatch(name, np.ones(1000, np.uint32), ts, np.full(1000, k + 1.0)))
        for url, headers in ((gw2, {}), (gw1, {"Authorization": "Bearer lh_0_x"})):
            r = httpx.post(url + "/v1/write", content=body, timeout=10,
                           headers={"Content-Type": ARROW, **headers})  # fmt: skip
            assert r.status_code == 401, r.text
        r = httpx.post(gw1 + "/v1/write", content=body, timeout=30,
                       headers={"Content-Type": ARROW, **tokens[name]})  # fmt: skip
        assert r.status_code == 204, r.text
    params = {"sensors": "1", "start": int(ts[0]), "end": int(ts[-1]) + 1, "step": 100}
    for k, name in enumerate(names):

        def sees_own(name=name, k=k) -> bool:
            r = httpx.get(lens2 + "/v1/lens", params=params, headers=tokens[name], timeout=10)
            assert r.status_code == 200, r.text
            series = r.json()["series"][0]
            assert set(series["avg"]) <= {k + 1.0}, f"{name} sees another tenant's points"
            return sum(series["count"]) == 1000

        _wait(f"{name}'s points loaded", sees_own, CATCH_UP_S)
    # Prometheus' query API on a lens server: a left-open window off the tiers'
    # grid, (ts[500] − 1 s, ts[500]], holds points 0..500 of the tenant's own.
    for k, name in enumerate(names):
        r = httpx.put(f"{lens1}/v1/sensors/1", json={"labels": {"kind": "x"}}, headers=tokens[name])
        assert r.status_code == 204, r.text
        for fn, want in (("count_over_time", 501), ("sum_over_time", 501 * (k + 1))):
            q = {"query": f'{fn}({{kind="x"}}[1s])', "time": int(ts[500]) / 1000}
            r = httpx.get(lens2 + "/api/v1/query", params=q, headers=tokens[name], timeout=10)
            assert r.status_code == 200, r.text
            assert [float(x["value"][1]) for x in r.json()["data"]["result"]] == [want], r.text
    other = {**tokens[names[0]], "X-Tenant": names[1]}
    assert httpx.get(lens1 + "/v1/lens", params=params, headers=other).status_code == 403
    assert httpx.get(lens1 + "/v1/lens", params=params).status_code == 401
    r = httpx.get(lens1 + "/v1/admin/tenants", headers=tokens[names[0]])
    assert r.status_code == 403
    listed = httpx.get(lens2 + "/v1/admin/tenants", headers=admin).json()["tenants"]
    assert set(names) <= set(listed)
    # Revoked at one lens server: refused by the other and by the gateways.
    r = httpx.delete(f"{lens1}/v1/admin/tenants/{names[0]}", headers=admin)
    assert r.json() == {"revoked": 1}
    _wait(
        "the revocation seen by the other lens server",
        lambda: (
            httpx.get(lens2 + "/v1/lens", params=params, headers=tokens[names[0]]).status_code
            == 401
        ),
        10,
    )
    r = httpx.post(gw2 + "/v1/write", content=b"", timeout=10,
                   headers={"Content-Type": ARROW, **tokens[names[0]]})  # fmt: skip
    assert r.status_code == 401


def test_deletes_are_refused_where_the_storage_cannot_apply_them(topology: dict) -> None:
    """18.16 has no lightweight deletes and its mutations stall behind quorum
    inserts: the loaders say so in the keeper, and gateways answer 501
    instead of acknowledging a delete that would not be done."""
    admin = {"Authorization": f"Bearer {topology['admin_token']}", "X-Tenant": "erase-check"}
    params = {"sensors": "1", "start": 1_700_000_000_000, "end": 1_700_000_001_000}
    for url in topology["gateways"]:
        r = httpx.delete(url + "/v1/points", params=params, headers=admin, timeout=10)
        assert r.status_code == 501, r.text
        assert "18.16" in r.json()["error"] and "23.3" in r.json()["error"]
        r = httpx.delete(url + "/v1/points", params={**params, "end": 5}, headers=admin)
        assert r.status_code == 422, r.text


def test_remote_write_through_any_gateway_maps_each_series_once(topology: dict) -> None:
    """Prometheus remote write at both gateways: a label set gets one id from
    the keeper whichever gateway sees it first, a resend through the other is
    stored once, and the lens servers list and query the series by label."""
    from lenshouse.prometheus.remote_write import RemoteSeries, encode_write_request
    from lenshouse.prometheus.series import BASE

    admin = {"Authorization": f"Bearer {topology['admin_token']}"}
    lens1, lens2 = topology["lens_servers"]
    gw1, gw2 = topology["gateways"]
    name = f"rw-{uuid.uuid4().hex[:6]}"
    r = httpx.post(f"{lens1}/v1/admin/tenants/{name}/tokens", headers=admin, timeout=10)
    assert r.status_code == 201, r.text
    token = {"Authorization": f"Bearer {r.json()['token']}"}
    t0 = 1_700_000_000_000
    ts = t0 + np.arange(1000, dtype=np.int64)

    def series(job: str) -> RemoteSeries:
        return RemoteSeries((("__name__", "rw_test"), ("job", job)), ts, np.full(1000, 2.0))

    headers = {**token, "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    both = encode_write_request([series("a"), series("b")])
    for url, body in ((gw1, both), (gw2, both), (gw2, encode_write_request([series("c")]))):
        r = httpx.post(url + "/api/v1/write", content=body, headers=headers, timeout=30)
        assert r.status_code == 204, r.text
    q = {"query": 'count_over_time(rw_test{job=~"a|b|c"}[1s])', "time": int(ts[-1]) / 1000}

    def counted() -> bool:
        r = httpx.get(lens2 + "/api/v1/query", params=q, headers=token, timeout=10)
        assert r.status_code == 200, r.text
        got = {x["metric"]["job"]: float(x["value"][1]) for x in r.json()["data"]["result"]}
        assert all(v <= 1000 for v in got.values()), got  # the resend never doubles
        return got == {"a": 1000.0, "b": 1000.0, "c": 1000.0}

    _wait("the remote-written series loaded", counted, CATCH_UP_S)
    listed = httpx.get(lens1 + "/v1/sensors", params={"match": '{__name__="rw_test"}'},
                       headers=token, timeout=10).json()["sensors"]  # fmt: skip
    assert sorted(s["labels"]["job"] for s in listed) == ["a", "b", "c"]
    assert all(s["sensor"] >= BASE for s in listed)
    r = httpx.get(lens2 + "/api/v1/series", params={"match[]": "rw_test"}, headers=token)
    assert len(r.json()["data"]) == 3


def test_with_a_shard_down_lenses_of_the_other_shard_answer(topology: dict) -> None:
    """Both replicas of shard 2 stopped: a lens of sensors on shard 1 answers
    200 and exact; a lens that needs shard 2 answers 503 naming it."""
    from lenshouse.generators.sender import ARROW, encode_arrow
    from lenshouse.points import PointBatch

    root = _root(topology)
    tenant = f"shard-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {topology['admin_token']}", "X-Tenant": tenant}
    ids = np.arange(1, 41, dtype=np.uint32)
    shard = partition_of(tenant, ids, topology["shards"])
    on_1, on_2 = int(ids[shard == 0][0]), int(ids[shard == 1][0])
    ts = 1_700_000_000_000 + np.arange(5000, dtype=np.int64)
    batch = PointBatch(tenant, np.repeat([on_1, on_2], len(ts)).astype(np.uint32),
                       np.tile(ts, 2), np.ones(2 * len(ts)))  # fmt: skip
    r = httpx.post(topology["gateways"][0] + "/v1/write", content=encode_arrow(batch),
                   headers={"Content-Type": ARROW, **headers}, timeout=30)  # fmt: skip
    assert r.status_code == 204, r.text
    lens = topology["lens_servers"][0] + "/v1/lens"

    def ask(sensor: int, step: int = 100) -> httpx.Response:
        params = {"sensors": sensor, "start": int(ts[0]), "end": int(ts[-1]) + 1, "step": step}
        return httpx.get(lens, params=params, headers=headers, timeout=60)

    for s in (on_1, on_2):
        _wait("loaded", lambda s=s: sum(ask(s).json()["series"][0]["count"]) == 5000, CATCH_UP_S)
    down = [n["name"] for n in topology["nodes"] if n["name"].startswith("ch-s2-")]
    for name in down:
        processes.stop(root, name, kill=True)
    try:
        # A step not asked before: no cached chunk answers, the shard must be read.
        r = ask(on_1, step=50)
        assert r.status_code == 200, r.text
        assert sum(r.json()["series"][0]["count"]) == 5000
        r = ask(on_2, step=50)
        assert r.status_code == 503, r.text
        assert "shard 2" in r.json()["error"], r.text
    finally:
        for name in down:
            processes.start(root, name)
    _wait("shard 2 back", lambda: ask(on_2).status_code == 200, 60)
