"""Deletes: ``DELETE /v1/points`` removes a sensor's points in a time range,
in log order with the writes around it. Afterwards raw data, every tier, the
lens cache, the head and every lens agree with the numpy oracle over the points
that remain; points written after a delete are stored again (a rewrite), and a
delete cut short by a crash is finished on restart."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenshouse.api.app import create_app
from lenshouse.conftest import tier_points
from lenshouse.ingest.wal import WriteAheadLog
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.node import Node
from lenshouse.points import BadInput, Erasure, PointBatch
from lenshouse.rollup.tiers import TIERS, Tier
from lenshouse.storage.errors import FatalError
from lenshouse.stream import payload

HOUR = 3_600_000
NOW = T0 = 0  # read when the module's first test starts (see _clock)


@pytest.fixture(scope="module", autouse=True)
def _clock() -> None:
    """The clock read when these tests run, not when the suite was collected:
    the newest minute of the data must be the head's."""
    global NOW, T0
    NOW = int(time.time() * 1000)
    T0 = NOW // HOUR * HOUR - 4 * HOUR  # four hours up to now: raw, every tier and the head


class Model:
    """What the store should hold: first value wins per (sensor, ts) among
    points accepted since the last delete that covered the key."""

    def __init__(self) -> None:
        self.points: dict[int, dict[int, float]] = {}

    def write(self, sensor: int, ts: np.ndarray, value: np.ndarray) -> None:
        held = self.points.setdefault(sensor, {})
        for t, v in zip(ts.tolist(), value.tolist(), strict=True):
            held.setdefault(t, v)

    def erase(self, sensors: list[int], start: int, end: int) -> int:
        n = 0
        for s in sensors:
            held = self.points.get(s, {})
            gone = [t for t in held if start <= t < end]
            for t in gone:
                del held[t]
            n += len(gone)
        return n

    def arrays(self, sensor: int) -> tuple[np.ndarray, np.ndarray]:
        held = self.points.get(sensor, {})
        ts = np.array(sorted(held), np.int64)
        return ts, np.array([held[t] for t in ts.tolist()], np.float64)


def check(node: Node, model: Model, tenant: str, windows) -> None:
    for sensors, start, end, points in windows:
        lens = node.lenses.lens(sensors, start, end, points=points, tenant=tenant)
        for s in lens.series:
            ts, v = model.arrays(s.sensor)
            bad = mismatch(s, brute_force(ts, v, lens.start, lens.end, lens.step))
            assert bad is None, f"{tenant}/{s.sensor} [{start},{end}) step {lens.step}: {bad}"


def tier_count(node: Node, tier: Tier, tenant: str, sensors: str) -> int:
    return tier_points(node.store, tier, f"tenant = '{tenant}' AND sensor IN ({sensors})")


def wait(node: Node, lsn: int) -> None:
    assert node.ingestor.wait_visible(lsn, 60), "the log was not loaded in time"


class Shared:
    """One node for the module (chDB opens one data directory per process);
    a test may restart it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.node = Node(path, flush_interval=0.05).start()

    def restart(self) -> Node:
        self.node.stop()
        self.node = Node(self.path, flush_interval=0.05).start()
        return self.node


@pytest.fixture(scope="module")
def module_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    held = Shared(tmp_path_factory.mktemp("erase") / "data")
    yield held
    held.node.stop()


@pytest.fixture
def shared(module_node: Shared) -> Node:
    return module_node.node


def test_an_erasure_travels_the_log(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal")
    wal.start()
    e = Erasure.of("t1", [3, 1, 3], T0, T0 + 5000)
    b = PointBatch.from_columns("t1", [1], [T0], [1.5])
    lsns = [wal.append(x).result() for x in (b, e, b)]
    wal.close()
    recs = list(WriteAheadLog(tmp_path / "wal").read(0))
    assert [r.lsn for r in recs] == lsns
    got = recs[1].batch
    assert isinstance(got, Erasure) and got.sensor.tolist() == [1, 3]
    assert (got.tenant, got.start, got.end, len(got)) == ("t1", T0, T0 + 5000, 0)
    assert isinstance(recs[2].batch, PointBatch) and len(recs[2].batch) == 1
    headers = {payload.TENANT_HEADER: "t1", payload.KIND_HEADER: payload.ERASE}
    back = payload.decode_message(payload.encode_erasure(e), headers)
    assert isinstance(back, Erasure) and back.sensor.tolist() == [1, 3] and back.end == e.end
    for bad in (([], T0, T0 + 1), ([1], T0 + 1, T0), ([1], 5, 10)):
        with pytest.raises(BadInput):
            Erasure.of("t1", *bad)


def test_delete_rewrite_and_replay(shared: Node) -> None:
    """Deletes cutting cells of every tier, the cache warmed before them, a
    rewrite of the range, and a replay of the deleted batch after it."""
    node, model, tenant = shared, Model(), "rw"
    rng = np.random.default_rng(3)
    batches = []
    for s in (1, 2, 3):
        ts = np.arange(T0, NOW, 41, dtype=np.int64) + s
        v = np.round(rng.normal(10, 2, len(ts)), 3)
        batches.append(PointBatch.from_columns(tenant, np.full(len(ts), s), ts, v))
        model.write(s, ts, v)
    for b in batches:
        lsn = node.ingestor.write_sync(b)
    wait(node, lsn)
    windows = [
        ([1, 2, 3], T0, NOW, 2500),
        ([1, 2], T0, NOW, 300),
        ([1], T0 + HOUR - 30_000, T0 + HOUR + 30_000, 600),
        ([2, 3], NOW - 60_000, NOW + 1000, 1200),  # the head
    ]
    check(node, model, tenant, windows * 2)  # the second pass is served from the cache
    assert node.lenses.cache.hits > 0
    # Cuts a 1 h, a 10 min, a 1 min, a 1 s and a 100 ms cell at each end.
    start, end = T0 + HOUR + 754_321, NOW - 45_678
    lsn = node.ingestor.erase_sync(Erasure.of(tenant, [1, 2], start, end))
    wait(node, lsn)
    removed = model.erase([1, 2], start, end)
    assert removed > 0 and node.ingestor.loader.erased_by_lsn[lsn] == removed
    check(node, model, tenant, windows)
    # Rewriting part of the range stores the new values; replaying the
    # original batch then adds only what the rewrite left out.
    ts = np.arange(start, end, 97, dtype=np.int64)
    v = np.full(len(ts), -1.0)
    lsn = node.ingestor.write_sync(PointBatch.from_columns(tenant, np.full(len(ts), 1), ts, v))
    model.write(1, ts, v)
    lsn = node.ingestor.write_sync(batches[0])
    model.write(1, batches[0].ts, batches[0].value)
    wait(node, lsn)
    check(node, model, tenant, windows)
    rows, _ = node.lenses.export([1, 2], T0, NOW + 1000, tenant=tenant)
    exp = sum(len(model.arrays(s)[0]) for s in (1, 2))
    assert rows.num_rows == exp, "raw rows equal the oracle's points"
    for tier in TIERS:  # every tier counts exactly the remaining points
        n = tier_count(node, tier, tenant, "1, 2")
        assert n == exp, tier.name


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_writes_and_deletes_match_the_oracle(shared: Node, data: st.DataObject) -> None:
    """Random batches (late, out of order, duplicated) and deletes in any
    order, then random lenses; each example in a tenant of its own."""
    node, model = shared, Model()
    tenant = f"h{next(_tenants)}"
    span = 4 * HOUR
    lsn = -1
    for _ in range(data.draw(st.integers(2, 6), label="steps")):
        if data.draw(st.booleans(), label="delete?"):
            sensors = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True))
            a = T0 + data.draw(st.integers(0, span), label="start")
            b = a + data.draw(st.sampled_from([1, 99, 5_000, 600_000, 3 * HOUR]), label="width")
            lsn = node.ingestor.erase_sync(Erasure.of(tenant, sensors, a, b))
            model.erase(sensors, a, b)
        else:
            s = data.draw(st.integers(1, 3), label="sensor")
            a = T0 + data.draw(st.integers(0, span - 1), label="from")
            n = data.draw(st.integers(1, 3000), label="points")
            gap = data.draw(st.sampled_from([1, 7, 250, 4000]), label="gap")
            seed = data.draw(st.integers(0, 2**31), label="seed")
            rng = np.random.default_rng(seed)
            ts = a + np.arange(n, dtype=np.int64) * gap
            ts = ts[ts < NOW]
            ts = np.concatenate([ts, ts[: len(ts) // 3]])  # duplicates in the batch
            rng.shuffle(ts)
            v = np.round(rng.normal(0, 5, len(ts)), 2)
            lsn = node.ingestor.write_sync(
                PointBatch.from_columns(tenant, np.full(len(ts), s), ts, v)
            )
            model.write(s, ts, v)
    wait(node, lsn)
    windows = []
    for _ in range(4):
        a = T0 + data.draw(st.integers(-HOUR, span), label="lens start")
        w = data.draw(st.sampled_from([10_000, 60_000, HOUR, span]), label="lens width")
        p = data.draw(st.sampled_from([50, 700, 2500]), label="points")
        windows.append(([1, 2, 3], a, a + w, p))
    check(node, model, tenant, windows)


_tenants = itertools.count()


def test_a_delete_cut_short_is_finished_on_restart(module_node: Shared) -> None:
    """The store fails after the delete removed raw points and tier cells,
    before the edge cells were stored again; the restarted node replays it."""
    model, tenant = Model(), "crash"
    node = module_node.node
    ts = np.arange(T0, NOW, 53, dtype=np.int64)
    v = np.cos(ts / 7e4)
    wait(
        node, node.ingestor.write_sync(PointBatch.from_columns(tenant, np.full(len(ts), 9), ts, v))
    )
    model.write(9, ts, v)
    insert_cells = node.store.insert_cells

    def fail_on_erase(cells, seq, token):
        if token.startswith("lh-erase"):
            raise FatalError("the disk went away")
        return insert_cells(cells, seq, token)

    node.store.insert_cells = fail_on_erase  # type: ignore[method-assign]
    start, end = T0 + 2 * HOUR - 77_777, T0 + 3 * HOUR + 1_234
    lsn = node.ingestor.erase_sync(Erasure.of(tenant, [9], start, end))
    deadline = time.monotonic() + 30
    while node.ingestor.loader.failure is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.ingestor.loader.failure and "the disk went away" in node.ingestor.loader.failure
    assert node.ingestor.loader.state.pending is not None, "the delete is in doubt"
    model.erase([9], start, end)
    node = module_node.restart()
    assert node.ingestor.loader.loaded_lsn > lsn
    check(node, model, tenant, [([9], T0, NOW, 2500), ([9], start - HOUR, end + HOUR, 20_000)])
    n = tier_count(node, TIERS[-1], tenant, "9")
    assert n == len(model.arrays(9)[0])


def test_delete_api(shared: Node) -> None:
    node = shared
    with TestClient(create_app(node)) as client:
        ts = np.arange(T0, T0 + 10_000, 10, dtype=np.int64)
        batch = PointBatch.from_columns("a", np.full(len(ts), 4), ts, np.ones(len(ts)))
        wait(node, node.ingestor.write_sync(batch))
        q = {"sensors": "4", "start": T0 + 1000, "end": T0 + 2000}
        r = client.delete("/v1/points", params=q, headers={"X-Tenant": "b"})
        assert r.status_code == 200 and r.json()["deleted"] == 0, "another tenant's points"
        r = client.delete("/v1/points", params=q, headers={"X-Tenant": "a"})
        assert r.status_code == 200, r.text
        assert r.json() | {"lsn": 0} == {
            "sensors": [4], "start": T0 + 1000, "end": T0 + 2000,
            "lsn": 0, "applied": True, "deleted": 100,
        }  # fmt: skip
        lens = node.lenses.lens([4], T0, T0 + 10_000, step=1000, tenant="a")
        assert lens.series[0].count.tolist() == [100, *[100] * 8]
        assert lens.series[0].t.tolist()[1] == T0 + 2000
        for params, words in (
            ({"start": T0, "end": T0 + 1}, "name the sensors"),
            ({"sensor": "4", "start": T0 + 5, "end": T0}, "must be after"),
            ({"sensors": "x", "start": T0, "end": T0 + 1}, "integer ids"),
            ({"sensors": ",".join(map(str, range(11))), "start": T0, "end": T0 + 1}, "1 to 10"),
            ({"sensors": "4", "start": 5, "end": 10}, "2000-01-01"),
            ({"sensors": "4", "end": 10}, "start"),
        ):
            r = client.delete("/v1/points", params=params)
            assert r.status_code == 422 and words in r.json()["error"], (params, r.text)
        # Below the raw mark the hour cells cannot be rebuilt: refused.
        mark = pa.table({"tenant": ["a"], "source": ["raw"], "before": [T0 + HOUR // 2]})
        node.store.put_expiry(mark)
        node.horizons.refresh()
        a = {"X-Tenant": "a"}
        r = client.delete(
            "/v1/points", params={"sensors": "4", "start": T0 + HOUR, "end": NOW}, headers=a
        )
        assert r.status_code == 200
        r = client.delete("/v1/points", params={"sensors": "4", "start": T0, "end": NOW}, headers=a)
        assert r.status_code == 422 and str(T0 + HOUR) in r.json()["error"], r.text
