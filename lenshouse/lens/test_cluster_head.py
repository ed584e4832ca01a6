"""The lens server's head against an oracle that knows every load: whatever
announcements get lost, arrive late or twice, whatever loads are pending, a
lens settled at a snapshot gets from the head exactly the points of the
loads complete at it, above the head's boundary."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lenshouse.lens import cluster_head
from lenshouse.lens.cluster_head import ClusterHead
from lenshouse.lens.visibility import LoadSpan, Snapshot

PARTS = 2
T0 = 1_700_000_000_000


@pytest.fixture(autouse=True, scope="module")
def _no_wait() -> Iterator[None]:
    """A load not announced by its completion is given up at once."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(cluster_head, "WAIT_S", 0.0)
        yield


def _owner(tenant: str, sensors) -> np.ndarray:
    return np.asarray(sensors) % PARTS


class _Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> float:
        return self.ms / 1000


class _World:
    """Every load as the keeper and ClickHouse know it."""

    def __init__(self) -> None:
        self.loads: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.completed: list[list[LoadSpan]] = [[] for _ in range(PARTS)]
        self.pending: list[int | None] = [None] * PARTS

    def snapshot(self) -> Snapshot:
        floors = tuple(
            (p - 1) if p is not None else (c[-1].seq if c else -1)
            for p, c in zip(self.pending, self.completed)
        )
        return Snapshot(0, (), 0, floors=floors, completed=tuple(map(tuple, self.completed)))

    def points(self, floors, sensor: int, lo: int, hi: int) -> np.ndarray:
        got = [
            np.stack([ts[m], v[m]])
            for seq, p, s, ts, v in self.loads
            if seq <= floors[p]
            for m in [(s == sensor) & (ts >= lo) & (ts < hi)]
        ]
        out = np.concatenate(got, axis=1) if got else np.empty((2, 0))
        return out[:, np.lexsort((out[1], out[0]))]


def _rows(sensor: np.ndarray, ts: np.ndarray, value: np.ndarray) -> pa.Table:
    tenant = pa.DictionaryArray.from_arrays(np.zeros(len(ts), np.int32), pa.array(["default"]))
    return pa.table({"tenant": tenant, "sensor": sensor, "ts": ts, "value": value})


load_st = st.fixed_dictionaries(
    {
        "partition": st.integers(0, PARTS - 1),
        "points": st.integers(0, 40),
        "late_ms": st.sampled_from([0, 0, 3_000, 20_000]),  # 20 s: below the head's span
        "announce": st.sampled_from(["now", "now", "now", "never", "late", "twice"]),
        "advance_ms": st.integers(0, 2_000),
        "lens": st.booleans(),  # a lens while the load is in flight
        "lens_after": st.booleans(),  # … and once it is complete
        "erase": st.integers(0, 30),
    }
)


@settings(max_examples=60, deadline=None)
@given(loads=st.lists(load_st, min_size=1, max_size=40), seed=st.integers(0, 2**16))
def test_the_head_answers_exactly_the_completed_loads(loads: list[dict], seed: int) -> None:
    rng = np.random.default_rng(seed)
    clock = _Clock()
    head = ClusterHead(PARTS, _owner, seconds=10.0, clock=clock)
    world = _World()
    for p in range(PARTS):
        head.open(p, -1, None, head.since_ms())
    late: list[tuple] = []
    for seq, load in enumerate(loads):
        clock.ms += load["advance_ms"]
        p = load["partition"]
        if load["erase"] == 0:  # a delete (of nothing here): drops the partition's head
            gone = LoadSpan(seq, frozenset(["default"]), 0, 1, erases=True)
            world.completed[p].append(gone)
            _lens(head, world, rng, clock)
            assert p in head.closed()
            for q in head.closed():
                head.open(q, world.completed[q][-1].seq if world.completed[q] else -1,
                          _newest(world, q, head.since_ms()), head.since_ms())  # fmt: skip
            continue
        n = load["points"]
        sensor = (rng.integers(0, 3, n) * PARTS + p).astype(np.uint32)
        ts = clock.ms - rng.integers(0, load["late_ms"] + 1, n)
        value = rng.normal(size=n)
        world.loads.append((seq, p, sensor, ts, value))
        prev = world.completed[p][-1].seq if world.completed[p] else -1
        message = (p, seq, prev, _rows(sensor, ts, value))
        world.pending[p] = seq
        if load["announce"] in ("now", "twice"):
            head.add(*message)
        if load["lens"]:  # a lens while the load is in flight
            _lens(head, world, rng, clock)
        lo, hi = (int(ts.min()), int(ts.max())) if n else (0, -1)
        world.completed[p].append(LoadSpan(seq, frozenset(["default"]), lo, hi))
        world.pending[p] = None
        if load["announce"] == "twice":
            head.add(*message)  # a replay's announcement
        if load["announce"] == "late":
            late.append(message)
        if load["lens_after"]:
            _lens(head, world, rng, clock)
        if late and rng.random() < 0.5:
            head.add(*late.pop(0))  # after a lens gave it up, or before any asked
    _lens(head, world, rng, clock)


def _newest(world: _World, p: int, since: int) -> int | None:
    ts = [t[t >= since] for seq, q, _, t, _ in world.loads if q == p]
    ts = [t for t in ts if len(t)]
    return int(max(t.max() for t in ts)) if ts else None


def _lens(head: ClusterHead, world: _World, rng: np.random.Generator, clock: _Clock) -> int:
    """One lens's head part against the oracle; how many of its sensors the
    head answered for some of the window."""
    snap = world.snapshot()
    head.settle(snap)
    end = clock.ms + int(rng.integers(1, 2_000))
    start = end - int(rng.choice([500, 5_000, 30_000]))
    step = int(rng.choice([1, 10, 100]))
    sensors = sorted(set(rng.integers(0, 6, 3).tolist()))
    boundaries, points = head.read("default", sensors, start, end, snap, step, 0)
    answered = 0
    for s in sensors:
        lo = max(start, boundaries[s])
        want = world.points(snap.floors, s, lo, end)
        ts, v = points[s].points() if s in points else (np.empty(0, np.int64), np.empty(0))
        got = np.stack([ts, v])[:, np.lexsort((v, ts))] if len(ts) else np.empty((2, 0))
        assert got.shape == want.shape and np.array_equal(got, want), (
            f"sensor {s} [{lo}, {end}) at floors {snap.floors}: head {got.shape[1]} points,"
            f" loads {want.shape[1]}"
        )
        answered += lo < end
    return answered


def test_a_lost_announcement_is_waited_for_then_given_up(monkeypatch) -> None:
    """A lens waits (bounded) for a completed load's announcement; when it
    never comes, the head stops claiming that load's time range."""
    monkeypatch.setattr(cluster_head, "WAIT_S", 0.2)
    clock = _Clock()
    head = ClusterHead(PARTS, _owner, seconds=10.0, clock=clock)
    head.open(0, -1, None, head.since_ms())
    one = np.array([0], np.uint32)
    head.add(0, 0, -1, _rows(one, np.array([T0 - 100]), np.array([1.0])))
    snap = Snapshot(0, (), 0, floors=(1, -1), completed=(
        (LoadSpan(0, frozenset(["default"]), T0 - 100, T0 - 100),
         LoadSpan(1, frozenset(["default"]), T0 - 50, T0 - 40)), ()))  # fmt: skip
    head.settle(snap)
    assert head.given_up == 1
    boundaries, points = head.read("default", [0], T0 - 1_000, T0, snap, 1, 0)
    assert boundaries[0] > T0 - 40  # load 1's points are no longer claimed
    assert 0 not in points or len(points[0].points()[0]) == 0
    head.add(0, 1, 0, _rows(one, np.array([T0 - 45]), np.array([2.0])))  # too late: ignored
    _, points = head.read("default", [0], T0 - 1_000, T0, snap, 1, 0)
    assert 0 not in points or len(points[0].points()[0]) == 0


def test_the_head_answers_the_newest_seconds_of_announced_loads() -> None:
    """Loads announced and completed in order: a lens of the last seconds is
    answered by the head alone, exactly."""
    clock = _Clock()
    head = ClusterHead(PARTS, _owner, seconds=10.0, clock=clock)
    world = _World()
    for p in range(PARTS):
        head.open(p, -1, None, head.since_ms())
    rng = np.random.default_rng(0)
    for seq in range(20):
        clock.ms += 500
        p = seq % PARTS
        sensor = (rng.integers(0, 3, 50) * PARTS + p).astype(np.uint32)
        ts = clock.ms - rng.integers(0, 400, 50)
        value = rng.normal(size=50)
        world.loads.append((seq, p, sensor, ts, value))
        prev = world.completed[p][-1].seq if world.completed[p] else -1
        head.add(p, seq, prev, _rows(sensor, ts, value))
        world.completed[p].append(
            LoadSpan(seq, frozenset(["default"]), int(ts.min()), int(ts.max()))
        )
    snap = world.snapshot()
    head.settle(snap)
    assert head.given_up == 0
    boundaries, _ = head.read("default", [0, 1, 2, 3], clock.ms - 5_000, clock.ms, snap, 2, 0)
    assert all(b <= clock.ms - 5_000 for b in boundaries.values())
    assert _lens(head, world, rng, clock) > 0
