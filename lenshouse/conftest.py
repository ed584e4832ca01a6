"""Shared test fixtures: a node on a temporary directory, an HTTP client, a
real server on a free loopback port."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from lenshouse.api.app import create_app
from lenshouse.api.auth import Auth
from lenshouse.node import Node

# The only tests a run may skip, and why. With LENSHOUSE_NO_SKIPS=1 (CI sets
# it) any other skip fails the run: a test that silently stopped running
# proves nothing.
ALLOWED_SKIPS: dict[str, str] = {
    "lenshouse/ingest/test_wal.py::test_direct_writes_leave_the_bytes_of_plain_appends": (
        "the filesystem of the temporary directory has no O_DIRECT (tmpfs)"
    ),
}
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.nodeid.split("[")[0] not in ALLOWED_SKIPS:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not (os.environ.get("LENSHOUSE_NO_SKIPS") and _skipped and exitstatus == 0):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"{len(_skipped)} tests skipped outside lenshouse/conftest.py's ALLOWED_SKIPS"
            f" (run scripts/install-system-deps?): {', '.join(_skipped[:10])}",
            red=True,
        )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "data", flush_interval=0.05).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def client(node: Node) -> Iterator[TestClient]:
    with TestClient(create_app(node)) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, node: Node, auth: Auth | None = None) -> None:
        self.node = node
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(node, auth), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server(node: Node) -> Iterator[LiveServer]:
    with LiveServer(node) as s:
        yield s


# -- the cluster store ----------------------------------------------------------
@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One real 2 shards × 2 replicas ClickHouse cluster with 3 ZooKeeper nodes
    for the whole run (Debian's clickhouse-server and zookeeper, on loopback);
    each test that uses it works in a database of its own."""
    import json
    import os

    given = os.environ.get("LENSHOUSE_TEST_CLUSTER")
    if given:  # the cluster.json of a cluster already running: tests use it as it is
        doc = json.loads(Path(given).read_text())
        doc.setdefault("dir", str(Path(given).parent))
        yield doc
        return
    from lenshouse.cluster.testing import running_cluster

    root = tmp_path_factory.mktemp("cluster")
    with running_cluster(root, shards=2, replicas=2, keepers=3) as doc:
        doc.setdefault("dir", str(root))
        yield doc


def cluster_store(doc: dict, database: str | None = None):
    """A store on the test cluster, in a new database unless one is named."""
    import uuid

    from lenshouse.storage.replicated.store import ClusterStore

    database = database or f"t_{uuid.uuid4().hex[:12]}"
    hosts = [f"127.0.0.1:{n['ports']['tcp']}" for n in doc["nodes"] if n["role"] == "clickhouse"]
    return ClusterStore.connect(hosts, doc["name"], database)


STORES = ["chdb", "cluster"]


def tier_points(store, tier, where: str = "1") -> int:
    """The points a tier's cells count in ``store`` (rows ``where`` holds),
    wherever the store keeps that tier."""
    at = store.tier_tables
    sql = f"SELECT sum(cnt) AS n FROM {at.table(tier)} WHERE {at.where(tier, where)}"
    return int(store.backend.query(sql).column("n")[0].as_py() or 0)


def store_node(kind: str, data_dir: Path, request: pytest.FixtureRequest, **kw) -> Node:
    """A node on the embedded engine or on the test cluster (not started)."""
    if kind == "chdb":
        return Node(data_dir, **kw)
    doc = request.getfixturevalue("cluster")
    return Node(data_dir, store=cluster_store(doc), **kw)


@pytest.fixture(scope="module")
def topology(cluster: dict) -> Iterator[dict]:
    """The whole cluster-mode topology over the test cluster: 3 NATS servers,
    2 loaders, 2 gateways, 2 lens servers, each its own process; stopped at
    the end of the module (later tests use the storage alone)."""
    from lenshouse.cluster import processes, record

    root = Path(cluster["dir"])
    doc = processes.up(root, cluster["shards"], cluster["replicas"], cluster["keepers"], roles=True)
    try:
        yield doc
    finally:
        for n in reversed(record.load(root)["nodes"]):
            if n["role"] in ("gateway", "lens", "loader", "nats"):
                processes.stop(root, n["name"])
