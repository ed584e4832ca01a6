"""A lens server whose NATS is not reachable starts, answers lenses from
ClickHouse alone, and shows no head until it can subscribe."""

from __future__ import annotations

import socket

import pytest

from lenshouse.cluster import keeper_hosts
from lenshouse.conftest import cluster_store
from lenshouse.roles.lens_server import LensServer

pytestmark = pytest.mark.slow
T0 = 1_700_000_000_000


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_without_nats_lenses_come_from_clickhouse(cluster: dict) -> None:
    store = cluster_store(cluster)
    store.open()
    server = LensServer(keeper_hosts(cluster), store, nats=[f"nats://127.0.0.1:{_closed_port()}"])
    try:
        assert server.head is not None and server.head.closed() == [0, 1]
        doc, ok = server.health()
        assert ok and "head" not in doc, doc  # not subscribed: no head to show
        lens = server.lenses.lens([1, 2], T0, T0 + 60_000, step=1_000)
        assert [len(s.t) for s in lens.series] == [0, 0]  # nothing loaded, nothing claimed
        assert server.head.closed() == [0, 1]
    finally:
        server.close()
