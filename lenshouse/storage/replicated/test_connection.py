"""A replica that goes silent (cut off by the network, its sockets open but
nothing coming back) costs the read pool one read timeout, not one per pooled
connection: the replica turns suspect and the pool's other clients move to
the next replica before they read. The silence is made by a TCP relay in
front of a real 18.16 server that, once cut, swallows every byte."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lenshouse.storage.errors import RetryableError
from lenshouse.storage.replicated.connection import _client, _Pool, _run, _Suspects, _unpinged

pytestmark = pytest.mark.slow


class _Relay:
    """Forwards 127.0.0.1:<port> to ``upstream`` until ``cut`` is set, then
    reads and drops everything both ways (a partition, not a refusal)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if not self.cut.is_set():
                dst.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in [self._listener, *self._sockets]:
            s.close()


@contextmanager
def _pool(cluster: dict, suspects: _Suspects | None) -> Iterator[tuple[_Relay, _Pool]]:
    node = next(n for n in cluster["nodes"] if n["role"] == "clickhouse")
    real = f"127.0.0.1:{node['ports']['tcp']}"
    relay = _Relay(node["ports"]["tcp"])
    addresses = [f"127.0.0.1:{relay.port}", real]  # the relay first: every client starts there
    pool = _Pool(lambda: _unpinged(_client(addresses, "default", "default", "", 1.0)), 4, suspects)
    try:
        yield relay, pool
    finally:
        pool.close()
        relay.close()


def _reads(pool: _Pool, n: int) -> list[bool]:
    """``n`` reads one after another (the pool is FIFO: each takes the next
    client); True for each that answered."""
    got = []
    for _ in range(n):
        try:
            with pool.client() as c:
                got.append(_run(c, "SELECT 1")[0][0] == 1)
        except RetryableError as e:
            assert e.network, e
            got.append(False)
    return got


def test_a_silent_replica_costs_one_read_timeout(cluster: dict) -> None:
    with _pool(cluster, _Suspects()) as (relay, pool):
        assert _reads(pool, 4) == [True] * 4  # every client connected through the relay
        relay.cut.set()
        t0 = time.monotonic()
        assert _reads(pool, 8) == [False] + [True] * 7
        assert time.monotonic() - t0 < 5.0  # one 1 s timeout, not four
        relay.cut.clear()
        assert _reads(pool, 4) == [True] * 4


def test_without_suspects_every_connection_waits_out_the_timeout(cluster: dict) -> None:
    """The contrast that shows what the suspects buy (and that the relay's
    cut really silences a connection)."""
    with _pool(cluster, None) as (relay, pool):
        assert _reads(pool, 4) == [True] * 4
        relay.cut.set()
        assert _reads(pool, 4) == [False] * 4
        assert _reads(pool, 4) == [True] * 4  # each reconnected, through the relay
