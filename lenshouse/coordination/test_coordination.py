"""The keeper state of cluster mode on a real ZooKeeper ensemble: the shared
load counter and fenced progress, what lens servers read from it, and the
ownership of partitions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from lenshouse.cluster import record
from lenshouse.cluster.testing import cluster_available
from lenshouse.coordination import progress
from lenshouse.coordination.ownership import Ownership
from lenshouse.coordination.progress import PartitionProgress
from lenshouse.coordination.zk import Paths, connect, ensure_layout
from lenshouse.ingest.load_state import Fenced, Pending
from lenshouse.lens.cluster_visibility import ClusterVisibility
from lenshouse.lens.visibility import LoadSpan

pytestmark = pytest.mark.skipif(not cluster_available(), reason="ZooKeeper not installed")


@pytest.fixture
def keeper(cluster: dict) -> Iterator[tuple]:
    zk = connect(record.keeper_hosts(cluster))
    paths = Paths(f"t_{uuid.uuid4().hex[:10]}")
    ensure_layout(zk, paths)
    try:
        yield zk, paths
    finally:
        zk.delete(paths.root, recursive=True)
        zk.stop()
        zk.close()


def _span(tenant: str, lo: int, hi: int, sensor: int) -> LoadSpan:
    keys = np.array([(sensor << 32) | (lo >> 12)], np.uint64)
    return LoadSpan(-1, frozenset([tenant]), lo, hi, {tenant: keys})


def test_loads_of_two_partitions_share_one_counter_and_stay_hidden_until_done(keeper) -> None:
    zk, paths = keeper
    p0 = PartitionProgress(zk, paths, 0, "a")
    p1 = PartitionProgress(zk, paths, 1, "b")
    vis = ClusterVisibility(zk, paths, 2)
    s0, s1 = p0.load(), p1.load()
    before = vis.snapshot()
    assert (before.committed_seq, before.hidden, before.started) == (-1, (), 0)

    seq_a = p0.intent(s0, Pending(-1, 1, 4), _span("t", 1000, 1999, 7))
    seq_b = p1.intent(s1, Pending(-1, 1, 2), _span("t", 1500, 2500, 8))
    assert (seq_a, seq_b) == (0, 1)
    snap = vis.snapshot()
    assert snap.committed_seq == 1 and set(snap.hidden) == {0, 1}
    assert {s.seq for s in snap.inflight} == {0, 1}
    (span_a,) = [s for s in snap.inflight if s.seq == 0]
    assert span_a.touches_sensor("t", 7, 1000, 1100) and not span_a.touches_sensor("t", 8, 0, 9999)

    s1.next_lsn, s1.pending = 3, None  # b completes first: out of seq order
    p1.done(s1)
    snap = vis.snapshot()
    assert snap.committed_seq == 1 and snap.hidden == (0,)
    newer = vis.started_since(before)
    assert sorted(s.seq for s in newer) == [0, 1]
    assert vis.started_since(snap) == []

    s0.next_lsn, s0.pending = 5, None
    p0.done(s0)
    assert vis.snapshot().hidden == ()
    doc, _ = progress.read(zk, paths, 0)
    assert doc.next_lsn == 5 and [h["seq"] for h in doc.history] == [0]


def test_a_new_owner_fences_the_old_one(keeper) -> None:
    zk, paths = keeper
    old = PartitionProgress(zk, paths, 0, "a")
    state = old.load()
    seq = old.intent(state, Pending(-1, 1, 3), _span("t", 0, 999, 1))
    new = PartitionProgress(zk, paths, 0, "b")  # takes over while the load is in doubt
    assert new.fence == old.fence + 1
    replay = new.load()
    assert replay.pending == Pending(seq, 1, 3)  # same seq and records: replayed identically
    state.next_lsn, state.pending = 4, None
    with pytest.raises(Fenced):
        old.done(state)
    assert new.intent(replay, Pending(-1, 1, 3), _span("t", 0, 999, 1)) == seq
    replay.next_lsn, replay.pending = 4, None
    new.done(replay)
    doc, _ = progress.read(zk, paths, 0)
    assert [(h["seq"], h["owner"], h["fence"]) for h in doc.history] == [(seq, "b", new.fence)]

    # A stale owner between loads cannot even begin the next one.
    old = PartitionProgress(zk, paths, 1, "a")
    state = old.load()
    old.intent(state, Pending(-1, 1, 1), _span("t", 0, 9, 1))
    state.next_lsn, state.pending = 2, None
    old.done(state)
    PartitionProgress(zk, paths, 1, "b")
    with pytest.raises(Fenced):
        old.intent(state, Pending(-1, 2, 2), _span("t", 0, 9, 1))


def test_a_completion_whose_answer_was_lost_is_not_taken_for_fencing(keeper) -> None:
    zk, paths = keeper
    p = PartitionProgress(zk, paths, 0, "a")
    state = p.load()
    p.intent(state, Pending(-1, 1, 1), _span("t", 0, 9, 1))
    stale_doc, stale_version = p.doc, p._version
    state.next_lsn, state.pending = 2, None
    p.done(state)
    p.doc, p._version = stale_doc, stale_version  # as if the answer had not arrived
    p.done(state)  # the retry sees its own write and returns
    assert progress.read(zk, paths, 0)[0].next_lsn == 2


def test_started_since_says_when_history_no_longer_tells(keeper, monkeypatch) -> None:
    zk, paths = keeper
    monkeypatch.setattr(progress, "HISTORY", 3)
    p = PartitionProgress(zk, paths, 0, "a")
    vis = ClusterVisibility(zk, paths, 1)
    before = vis.snapshot()
    state = p.load()
    for k in range(5):
        p.intent(state, Pending(-1, k + 1, k + 1), _span("t", 0, 9, 1))
        state.next_lsn, state.pending = k + 2, None
        p.done(state)
    assert vis.started_since(before) is None  # 5 loads since, 3 on record: re-read


class _Worker:
    def __init__(self) -> None:
        self.alive = True

    def stop(self) -> None:
        self.alive = False


def test_partitions_are_shared_fairly_and_taken_over(keeper, cluster: dict) -> None:
    zk, paths = keeper
    zk_b = connect(record.keeper_hosts(cluster))
    try:
        a = Ownership(zk, paths, 2, "loader-a", lambda p: _Worker())
        a.round()
        assert a.owned() == [0, 1]  # alone: both
        b = Ownership(zk_b, paths, 2, "loader-b", lambda p: _Worker())
        b.round()  # registers, finds nothing free
        a.round()  # gives one back
        b.round()
        assert len(a.owned()) == len(b.owned()) == 1 and set(a.owned()) | set(b.owned()) == {0, 1}
        b.release_all()
        zk_b.stop()  # b's session ends: its nodes go
        a.round()
        a.round()
        assert a.owned() == [0, 1]
    finally:
        zk_b.close()


def test_a_restarted_loader_of_the_same_name_fences_its_former_self(keeper) -> None:
    """Compose and Kubernetes give a restarted loader its old name: the fence,
    not the name, tells the two apart."""
    zk, paths = keeper
    old = PartitionProgress(zk, paths, 0, "loader-0")
    state = old.load()
    old.intent(state, Pending(-1, 1, 1), _span("t", 0, 9, 1))
    state.next_lsn, state.pending = 2, None
    old.done(state)
    new = PartitionProgress(zk, paths, 0, "loader-0")
    assert new.fence == old.fence + 1
    with pytest.raises(Fenced):
        old.intent(state, Pending(-1, 2, 2), _span("t", 0, 9, 1))
    doc, _ = progress.read(zk, paths, 0)
    assert doc.pending is None and doc.fence == new.fence
