"""The ClickHouse configuration rendered for Kubernetes, run by real servers.

Four ClickHouse servers and three ZooKeeper nodes run in a network namespace
of the test's own, where the pods' DNS names (``ch-s1-0.ch-s1``, ``zk-0.zk``,
…) resolve to addresses on its loopback (``ip netns exec`` reads the
namespace's own ``/etc/netns/NAME/hosts``). Each server takes the prod
overlay's ``cluster.xml`` and ``users.xml`` as they are, in ``config.d`` and
``users.d``, with the environment its pod would get. The cluster must form:
each server's macros are its pod's, ``ON CLUSTER`` DDL reaches all four, a
replicated table written on one replica is fetched by the other through the
interserver host, and a ``Distributed`` read through lenshouse's account sees
both shards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenshouse.cluster import processes, record
from lenshouse.deploy import kubernetes, render
from lenshouse.deploy.spec import CH_PORTS, CH_USER, PASSWORD_ENV, ZK_PORTS

pytestmark = pytest.mark.slow

OVERLAY = Path(__file__).resolve().parents[2] / "deploy/k8s/overlays/prod"
PASSWORD = "s3cret-from-a-secret"

_SRVR = """
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(b"srvr")
        print(s.recv(65536).decode(errors="replace"))
except OSError:
    pass
"""

_SQL = """
import sys, urllib.error, urllib.parse, urllib.request
host, port, user, password, query = sys.argv[1:]
auth = urllib.parse.urlencode({"user": user, "password": password})
try:
    out = urllib.request.urlopen(f"http://{host}:{port}/?{auth}", query.encode(), timeout=30)
    print(out.read().decode(), end="")
except urllib.error.HTTPError as e:
    sys.exit(e.read().decode()[:500])
"""


def _needs() -> list[str]:
    try:
        ch, zk = processes._clickhouse_server(), processes._zookeeper_java()
    except record.ClusterError as e:
        pytest.skip(str(e))
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    return ch, zk


class Pods:
    """A network namespace per pod, joined by a bridge in a namespace of its own
    (as a node's pod network joins pods): each server has an address of its own,
    so it knows which host of the cluster it is, as in Kubernetes."""

    def __init__(self, tag: str, names: list[str]) -> None:
        self.hub = f"lh-{tag}-hub"
        self.ns = {n: f"lh-{tag}-{k}" for k, n in enumerate(names)}
        self.ip = {n: f"10.77.0.{k + 2}" for k, n in enumerate(names)}
        self.procs: list[subprocess.Popen] = []
        hosts = ["127.0.0.1 localhost", *(f"{ip} {n}" for n, ip in self.ip.items())]
        self._ip(["netns", "add", self.hub])
        self._ip(["-n", self.hub, "link", "add", "br0", "type", "bridge"])
        self._ip(["-n", self.hub, "link", "set", "br0", "up"])
        for k, (name, ns) in enumerate(self.ns.items()):
            self._ip(["netns", "add", ns])
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(hosts) + "\n")
            self._ip(["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{k}",
                      "netns", self.hub])  # fmt: skip
            self._ip(["-n", self.hub, "link", "set", f"p{k}", "master", "br0", "up"])
            self._ip(["-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", "eth0"])
            self._ip(["-n", ns, "link", "set", "eth0", "up"])
            self._ip(["-n", ns, "link", "set", "lo", "up"])

    @staticmethod
    def _ip(args: list[str]) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def run(self, name: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns[name], *argv], **kw)

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        with log.open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", self.ns[name], *argv],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},
                )
            )

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(30)
        for ns in [*self.ns.values(), self.hub]:
            subprocess.run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def _zoo_cfg(d: Path, keepers: list[str]) -> str:
    servers = [
        f"server.{k}={h}:{ZK_PORTS['peer']}:{ZK_PORTS['election']}"
        for k, h in enumerate(keepers, 1)
    ]
    return "\n".join([
        "tickTime=500", "initLimit=20", "syncLimit=4", f"dataDir={d}/data",
        f"clientPort={ZK_PORTS['client']}",
        "admin.enableServer=false", "4lw.commands.whitelist=srvr", *servers,
    ]) + "\n"  # fmt: skip


def _clickhouse_base(d: Path) -> str:
    """What an image's own config.xml holds (paths, ports); the cluster comes
    from the rendered config.d file."""
    return f"""<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><log>{d}/server.log</log><errorlog>{d}/err.log</errorlog>
    <console>0</console></logger>
  <listen_host>0.0.0.0</listen_host>
  <tcp_port>{CH_PORTS["tcp"]}</tcp_port>
  <http_port>{CH_PORTS["http"]}</http_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
"""


USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><poll_interval>1</poll_interval></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def _wait_quorum(ns: Pods, keepers: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for host in keepers:
        while True:
            r = ns.run(host, [sys.executable, "-c", _SRVR, str(ZK_PORTS["client"])],
                       capture_output=True, text=True)  # fmt: skip
            if "Mode: " in r.stdout:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host} did not join a ZooKeeper quorum in {timeout:.0f} s")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ch_argv, zk_argv = _needs()
    where = kubernetes.addresses(render.FULL)
    pods = [(s, h) for s, shard in enumerate(where.clickhouse, 1) for h in shard]
    root = tmp_path_factory.mktemp("k8s-config")
    ns = Pods(f"c{os.getpid()}", [*where.keepers, *(h for _, h in pods)])
    try:
        for k, host in enumerate(where.keepers, 1):
            d = root / host
            (d / "data").mkdir(parents=True)
            (d / "data" / "myid").write_text(f"{k}\n")
            (d / "zoo.cfg").write_text(_zoo_cfg(d, where.keepers))
            argv = [
                *zk_argv,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(d / "zoo.cfg"),
            ]
            ns.spawn(host, argv, d / "stdout.log", {})
        # ClickHouse 18.16's DDL worker dereferences a null session (and the server
        # dies) if it starts before ZooKeeper has a quorum, as a cold JVM may take.
        _wait_quorum(ns, where.keepers, timeout=120)
        for shard, host in pods:
            d = root / host
            for sub in ("config.d", "users.d", "data", "tmp"):
                (d / sub).mkdir(parents=True)
            (d / "config.xml").write_text(_clickhouse_base(d))
            (d / "users.xml").write_text(USERS)
            shutil.copy(OVERLAY / "cluster.xml", d / "config.d" / "lenshouse.xml")
            shutil.copy(OVERLAY / "users.xml", d / "users.d" / "lenshouse.xml")
            pod = host.split(".")[0]
            env = {"CH_SHARD": str(shard), "CH_REPLICA": pod, "CH_INTERSERVER_HOST": host,
                   PASSWORD_ENV: PASSWORD}  # fmt: skip
            ns.spawn(host, [*ch_argv, f"--config-file={d / 'config.xml'}"], d / "stdout.log", env)

        def query(host: str, q: str, user: str = CH_USER, password: str = PASSWORD) -> str:
            port = str(CH_PORTS["http"])
            r = ns.run(host, [sys.executable, "-c", _SQL, "127.0.0.1", port, user, password, q],
                       capture_output=True, text=True)  # fmt: skip
            if r.returncode:
                raise RuntimeError(f"{host}: {r.stderr.strip()[:300]}")
            return r.stdout

        deadline = time.monotonic() + 60
        for _, host in pods:
            while True:
                try:
                    query(host, "SELECT 1")
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        yield query, pods
    finally:
        ns.close()


def test_each_server_is_its_pod(cluster) -> None:
    query, pods = cluster
    for shard, host in pods:
        macros = dict(
            line.split("\t")
            for line in query(host, "SELECT * FROM system.macros").split("\n")
            if line
        )
        assert macros == {
            "cluster": "lenshouse",
            "shard": str(shard),
            "replica": host.split(".")[0],
        }
        clusters = query(
            host, "SELECT shard_num, host_name FROM system.clusters WHERE cluster = 'lenshouse'"
        )
        assert [line.split("\t")[1] for line in clusters.split("\n") if line] == [
            h for _, h in pods
        ]


def test_the_rendered_cluster_replicates_and_shards(cluster) -> None:
    query, pods = cluster
    (_, s1a), (_, s1b), (_, s2a), (_, s2b) = pods
    deadline = time.monotonic() + 60
    while True:  # the keepers elect a leader within seconds; DDL waits for them
        try:
            query(s1a, "CREATE TABLE IF NOT EXISTS t ON CLUSTER lenshouse (k UInt64) ENGINE = "
                       "ReplicatedMergeTree('/clickhouse/tables/{shard}/t', '{replica}')"
                       " ORDER BY k")  # fmt: skip
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    query(s1a, "CREATE TABLE IF NOT EXISTS td ON CLUSTER lenshouse AS t"
               " ENGINE = Distributed(lenshouse, default, t, k)")  # fmt: skip
    query(s1a, "INSERT INTO t VALUES (1), (2)")
    query(s2b, "INSERT INTO t VALUES (3)")
    query(s1b, "SYSTEM SYNC REPLICA t")  # fetched from s1a through its interserver host
    query(s2a, "SYSTEM SYNC REPLICA t")
    assert query(s1b, "SELECT count() FROM t").strip() == "2"
    assert query(s2a, "SELECT count() FROM t").strip() == "1"
    for _, host in pods:  # every replica of every shard, through lenshouse's account
        assert query(host, "SELECT sum(k) FROM td").strip() == "6"
    with pytest.raises(RuntimeError, match=r"password|Authentication"):
        query(s1a, "SELECT 1", password="wrong")
