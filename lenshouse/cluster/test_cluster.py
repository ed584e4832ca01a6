"""The local cluster: topology and configs (fast), then a real 2×2 cluster with three
keepers through replication, a kill -9, a restart, a second up and down (slow)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lenshouse.cluster import (
    Topology,
    clickhouse_hosts,
    down,
    keeper_hosts,
    load,
    query,
    shard_replicas,
    start,
    stop,
    up,
)
from lenshouse.cluster.cli import cluster_app
from lenshouse.cluster.record import alive, node
from lenshouse.cluster.testing import cluster_available, running_cluster
from lenshouse.deploy.server_config import (
    clickhouse_server_xml,
    clickhouse_users_xml,
    nats_conf,
    zoo_cfg,
)

DDL = {"distributed_ddl_task_timeout": 30}


def test_topology_names_and_distinct_ports() -> None:
    topo = Topology().with_free_ports()
    names = [n.name for n in topo.nodes()]
    assert names == ["zk1", "zk2", "zk3", "ch-s1-r1", "ch-s1-r2", "ch-s2-r1", "ch-s2-r2"]
    roles = [(n.name, n.role) for n in topo.roles()]
    assert roles == [("loader1", "loader"), ("loader2", "loader"), ("gw1", "gateway"),
                     ("gw2", "gateway"), ("lens1", "lens"), ("lens2", "lens")]  # fmt: skip
    assert [n.name for n in topo.log_servers()] == ["nats1", "nats2", "nats3"]
    every = [*topo.nodes(), *topo.log_servers(), *topo.roles()]
    ports = [p for n in every for p in n.ports.values()] + [topo.server_port]
    assert len(set(ports)) == len(ports) == topo.port_count
    assert min(ports) == topo.base_port and max(ports) == topo.base_port + topo.port_count - 1


def test_configs_render(tmp_path: Path) -> None:
    topo = Topology(shards=2, replicas=3, keepers=3, base_port=20000)
    ch = topo.clickhouse()[4]  # ch-s2-r2
    root = ET.fromstring(clickhouse_server_xml(topo, ch, tmp_path))
    assert root.findtext("listen_host") == "127.0.0.1"
    assert root.findtext("tcp_port") == str(ch.ports["tcp"])
    assert root.findtext("macros/shard") == "2" and root.findtext("macros/replica") == "ch-s2-r2"
    shards = root.findall("remote_servers/lenshouse/shard")
    assert [len(s.findall("replica")) for s in shards] == [3, 3]
    assert all(s.findtext("internal_replication") == "true" for s in shards)
    assert len(root.findall("zookeeper/node")) == 3
    assert root.findtext("path") == f"{tmp_path}/ch-s2-r2/data/"
    ET.fromstring(clickhouse_users_xml())
    cfg = zoo_cfg(topo, topo.keeper()[1], tmp_path)
    assert "clientPortAddress=127.0.0.1" in cfg and "server.3=127.0.0.1:" in cfg
    nats2 = topo.log_servers()[1]
    conf = nats_conf(topo, nats2, tmp_path)
    assert f"listen: 127.0.0.1:{nats2.ports['client']}" in conf and "max_payload: 8MB" in conf
    routes = [f"127.0.0.1:{n.ports['cluster']}" for n in topo.log_servers()]
    assert routes[0] in conf and routes[2] in conf and f"route://{routes[1]}" not in conf


def test_cli_without_cluster(tmp_path: Path) -> None:
    result = CliRunner().invoke(cluster_app, ["status", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no cluster" in result.output


def _count(doc: dict, name: str, table: str) -> int:
    return int(query(node(doc, name), f"SELECT count() FROM {table}"))


def _eventually(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not cluster_available(), reason="run scripts/install-system-deps")
def test_cluster_replicates_survives_kill_and_restarts(tmp_path: Path) -> None:
    with running_cluster(tmp_path, shards=2, replicas=2, keepers=3) as doc:
        assert json.loads((tmp_path / "cluster.json").read_text()) == doc
        assert doc["dir"] == str(tmp_path.resolve()) and doc["url"] is None
        assert shard_replicas(doc) == {1: ["ch-s1-r1", "ch-s1-r2"], 2: ["ch-s2-r1", "ch-s2-r2"]}
        assert len(clickhouse_hosts(doc)) == 4 and len(keeper_hosts(doc)) == 3
        for name in ("ch-s1-r1", "ch-s1-r2", "ch-s2-r1", "ch-s2-r2"):
            sql = "SELECT count() FROM system.clusters WHERE cluster = 'lenshouse'"
            assert query(node(doc, name), sql).strip() == "4"

        first = node(doc, "ch-s1-r1")
        query(
            first,
            "CREATE TABLE t ON CLUSTER lenshouse (x UInt64) ENGINE = ReplicatedMergeTree("
            "'/clickhouse/tables/{shard}/t', '{replica}') ORDER BY x",
            **DDL,
        )
        query(
            first,
            "CREATE TABLE td ON CLUSTER lenshouse AS t "
            "ENGINE = Distributed(lenshouse, default, t, x)",
            **DDL,
        )
        query(first, "INSERT INTO t SELECT number FROM system.numbers LIMIT 100")
        other = node(doc, "ch-s2-r1")
        query(other, "INSERT INTO t SELECT number + 1000 FROM system.numbers LIMIT 50")
        query(node(doc, "ch-s1-r2"), "SYSTEM SYNC REPLICA t")
        assert _count(doc, "ch-s1-r2", "t") == 100
        assert _count(doc, "ch-s2-r2", "td") == 150

        # kill -9 one replica of shard 1: the other answers, Distributed still counts all.
        doc = stop(tmp_path, "ch-s1-r2", kill=True)
        killed = node(doc, "ch-s1-r2")
        assert killed["pid"] is None
        for name in ("ch-s1-r1", "ch-s2-r1", "ch-s2-r2", "ch-s1-r1", "ch-s2-r2"):
            assert _count(doc, name, "td") == 150
        query(first, "INSERT INTO t SELECT number + 100 FROM system.numbers LIMIT 100")
        assert _count(doc, "ch-s2-r1", "td") == 250

        doc = start(tmp_path, "ch-s1-r2")
        assert node(doc, "ch-s1-r2")["ports"] == killed["ports"]
        query(node(doc, "ch-s1-r2"), "SYSTEM SYNC REPLICA t")
        _eventually(lambda: _count(doc, "ch-s1-r2", "t") == 200)

        # A second up on the running cluster changes nothing.
        again = up(tmp_path)
        assert [(n["name"], n["pid"], n["ports"]) for n in again["nodes"]] == [
            (n["name"], n["pid"], n["ports"]) for n in doc["nodes"]
        ]

        # down stops every process; up again reuses ports and data.
        pids = [n["pid"] for n in again["nodes"]]
        stopped = down(tmp_path)
        assert all(not alive({"pid": p}) for p in pids)
        assert all(n["pid"] is None for n in stopped["nodes"])
        doc = up(tmp_path)
        assert [n["ports"] for n in doc["nodes"]] == [n["ports"] for n in again["nodes"]]
        for name in ("ch-s1-r1", "ch-s1-r2"):
            assert _count(doc, name, "t") == 200
        _eventually(lambda: _count(doc, "ch-s2-r2", "td") == 250)
        pids = [n["pid"] for n in doc["nodes"]]
    assert all(not alive({"pid": p}) for p in pids)
    assert all(n["pid"] is None for n in load(tmp_path)["nodes"])
