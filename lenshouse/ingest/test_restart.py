"""Crash safety end to end: a real ``lenshouse serve`` process is killed with
SIGKILL, restarted on the same directory, and every acknowledged point must be
there exactly once (raw rows and rollups alike); a batch that was in flight
when the process died is there whole or not at all."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from lenshouse.conftest import free_port
from lenshouse.generators.sender import ARROW, encode_arrow
from lenshouse.points import PointBatch

pytestmark = pytest.mark.slow

HOUR = 3_600_000
SENSORS = 4
PER_SENSOR = 5  # points per sensor per batch
POINTS = SENSORS * PER_SENSOR
# The last whole hour: inside the accepted range, and one 1 h lens bucket holds it all.
HOUR_START = BASE = 0  # read when the module's first test starts (see _clock)


@pytest.fixture(scope="module", autouse=True)
def _clock() -> None:
    """The clock read when these tests run, not when the suite was collected."""
    global HOUR_START, BASE
    HOUR_START = (int(time.time() * 1000) // HOUR - 1) * HOUR
    BASE = HOUR_START + 1000


def make_batch(b: int) -> PointBatch:
    """Batch ``b``: PER_SENSOR points for each of sensors 1..SENSORS, at
    ts BASE + b*PER_SENSOR + k, with values that identify batch and point."""
    j = np.arange(POINTS)
    return PointBatch(
        "default",
        (1 + j % SENSORS).astype(np.uint32),
        BASE + b * PER_SENSOR + (j // SENSORS).astype(np.int64),
        b + j / 64,
    )


def batch_points(b: int) -> dict[tuple[int, int], float]:
    pb = make_batch(b)
    return {(int(s), int(t)): float(v) for s, t, v in zip(pb.sensor, pb.ts, pb.value, strict=True)}


class Server:
    """``lenshouse serve`` in a child process."""

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> Server:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lenshouse.cli",
                    "serve",
                    "--data",
                    str(self.data),
                    "--port",
                    str(port),
                    "--flush-interval",
                    "0.2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not come up in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        r = httpx.get(self.url + "/healthz", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, client: httpx.Client, b: int) -> int:
        r = client.post(
            self.url + "/v1/write",
            content=encode_arrow(make_batch(b)),
            headers={"Content-Type": ARROW},
        )
        assert r.status_code == 204, r.text
        return int(r.headers["X-Lenshouse-Lsn"])

    def wait_loaded(self, timeout: float = 60.0) -> dict:
        """Wait until everything the log holds is visible to lenses."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["loaded_lsn"] == h["accepted_lsn"]:
                return h
            if time.monotonic() > deadline:
                pytest.fail(f"loader stuck at {h}:\n{self.log()}")
            time.sleep(0.05)

    def stored(self, batches: int) -> dict[tuple[int, int], tuple[int, float]]:
        """(sensor, ts) -> (count, value) for every stored point, via 1 ms buckets."""
        end = BASE + batches * PER_SENSOR
        assert end - BASE <= 20_000  # one lens request at step=1
        r = httpx.get(
            self.url + "/v1/lens",
            params={
                "sensors": ",".join(str(s) for s in range(1, SENSORS + 1)),
                "start": BASE,
                "end": end,
                "step": 1,
            },
            timeout=30,
        )
        assert r.status_code == 200, r.text
        out = {}
        for s in r.json()["series"]:
            for t, c, mn, mx in zip(s["t"], s["count"], s["min"], s["max"], strict=True):
                assert c > 1 or mn == mx
                out[(s["sensor"], t)] = (c, mn)
        return out

    def hourly_counts(self) -> dict[int, int]:
        """Points per sensor in the whole hour, answered from the 1 h rollup tier."""
        r = httpx.get(
            self.url + "/v1/lens",
            params={
                "sensors": ",".join(str(s) for s in range(1, SENSORS + 1)),
                "start": HOUR_START,
                "end": HOUR_START + HOUR,
                "step": HOUR,
                "agg": "count",
            },
            timeout=30,
        )
        assert r.status_code == 200, r.text
        out = {}
        for s in r.json()["series"]:
            assert s["t"] in ([], [HOUR_START])
            out[s["sensor"]] = sum(s["count"])
        return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "data", tmp_path / "server.log")
    try:
        yield s
    finally:
        s.kill()


def check_exactly_once(server: Server, acked: set[int], maybe: set[int], batches: int) -> int:
    """Every acked batch is stored exactly once; a batch in doubt whole or not at
    all; nothing else. Returns how many batches are stored."""
    stored = server.stored(batches)
    dupes = {k: c for k, (c, _) in stored.items() if c != 1}
    assert not dupes, f"points stored more than once: {sorted(dupes.items())[:10]}"
    present = set()
    for b in range(batches):
        want = batch_points(b)
        have = {k: stored[k][1] for k in want if k in stored}
        if have:
            assert have == want, f"batch {b} is stored in part or with other values"
            present.add(b)
    missing = acked - present
    assert not missing, f"acknowledged batches lost: {sorted(missing)}"
    assert present <= acked | maybe, f"batches never sent are stored: {present - acked - maybe}"
    assert len(stored) == len(present) * POINTS  # nothing outside the batches
    # The rollups agree with raw data: a replayed load was not counted twice there either.
    per_sensor = len(present) * PER_SENSOR
    assert server.hourly_counts() == {s: per_sensor for s in range(1, SENSORS + 1)}
    return len(present)


def test_kill_right_after_acks(server: Server) -> None:
    server.start()
    n = 40
    with httpx.Client(timeout=10) as client:
        lsns = [server.post(client, b) for b in range(n)]
    assert lsns == list(range(n))
    server.kill()  # the loader, flushing every 0.2 s, has most of it still to load

    server.start()
    h = server.wait_loaded()
    assert h["accepted_lsn"] == n - 1
    assert check_exactly_once(server, set(range(n)), set(), n) == n

    # The node goes on taking writes after recovery, after the recovered log.
    with httpx.Client(timeout=10) as client:
        assert server.post(client, n) == n
    server.wait_loaded()
    assert check_exactly_once(server, set(range(n + 1)), set(), n + 1) == n + 1


def loader_state(data: Path, next_lsn: int, timeout: float = 10.0) -> dict:
    """loader.json once it records every load below ``next_lsn`` as done (it is
    written just after /healthz shows the load)."""
    path = data / "loader.json"
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(path.read_text())
        if state["next_lsn"] == next_lsn and state["pending"] is None:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.01)


def test_load_in_doubt_is_replayed_without_doubling(server: Server) -> None:
    """A crash after a load's insert landed but before it was recorded as done:
    the restart replays it with the same token, and ClickHouse drops it, in raw
    data and in every rollup tier."""
    server.start()
    with httpx.Client(timeout=10) as client:
        assert [server.post(client, b) for b in range(10)] == list(range(10))
        server.wait_loaded()
        before = loader_state(server.data, 10)
        # Batches 10..14 in one request: one record, so one load of its own.
        many = [make_batch(b) for b in range(10, 15)]
        body = encode_arrow(
            PointBatch(
                "default",
                *(np.concatenate([getattr(m, c) for m in many]) for c in ("sensor", "ts", "value")),
            )
        )
        r = client.post(server.url + "/v1/write", content=body, headers={"Content-Type": ARROW})
        assert (r.status_code, r.headers["X-Lenshouse-Lsn"]) == (204, "10")
    server.wait_loaded()
    after = loader_state(server.data, 11)
    server.kill()
    state_path = server.data / "loader.json"
    seq = before["next_seq"]
    assert after == {**before, "next_lsn": 11, "next_seq": seq + 1}
    # Put the load back in doubt, as a crash between insert and completion leaves it.
    state_path.write_text(
        json.dumps(
            {
                **before,
                "next_lsn": 10,
                "next_seq": seq,
                "pending": {"seq": seq, "first_lsn": 10, "last_lsn": 10},
            }
        )
    )

    server.start()
    h = server.wait_loaded()
    assert (h["accepted_lsn"], h["loaded_lsn"]) == (10, 10)
    assert json.loads(state_path.read_text())["next_seq"] == seq + 1
    assert check_exactly_once(server, set(range(15)), set(), 15) == 15


class Writers:
    """Threads posting distinct batches until stopped or the server dies."""

    def __init__(self, server: Server, first: int, threads: int = 3, limit: int = 900) -> None:
        self.server = server
        self.first = first
        self.threads = threads
        self.limit = limit  # batches per writer at most
        self.acked: set[int] = set()
        self.sent: set[int] = set()  # posted, acknowledged or not
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(threads)]

    def _run(self, k: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(self.limit):
                if self._stop.is_set():
                    return
                b = self.first + k + self.threads * i
                with self._lock:
                    self.sent.add(b)
                try:
                    r = client.post(
                        self.server.url + "/v1/write",
                        content=encode_arrow(make_batch(b)),
                        headers={"Content-Type": ARROW},
                    )
                except httpx.TransportError:
                    return  # the server is gone; this batch is in doubt
                if r.status_code != 204:
                    self.errors.append(f"batch {b}: {r.status_code} {r.text}")
                    return
                with self._lock:
                    self.acked.add(b)

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"only {len(self.acked)} batches acked"
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
            assert not t.is_alive(), "a writer thread hung"

    @property
    def last(self) -> int:
        return max(self.sent) + 1 if self.sent else self.first


def test_kill_in_the_middle_of_a_stream_of_writes(server: Server) -> None:
    acked: set[int] = set()
    sent: set[int] = set()
    issued = 0  # batch numbers below this have been used
    for kill_after in (60, 150):
        server.start()
        if issued:
            server.wait_loaded()
            check_exactly_once(server, acked, sent - acked, issued)
        with Writers(server, issued) as w:
            w.wait_acked(kill_after)
            server.kill()  # while the writers keep posting
        assert not w.errors, w.errors
        assert len(w.acked) >= kill_after
        acked |= w.acked
        sent |= w.sent
        issued = w.last

    server.start()
    h = server.wait_loaded()
    stored = check_exactly_once(server, acked, sent - acked, issued)
    assert stored >= len(acked) >= 210
    # Every log position holds one stored batch: nothing was logged twice, and a
    # batch in doubt is stored exactly when its record made it to the log.
    assert h["accepted_lsn"] + 1 == stored
