"""cluster.json, the record of the local cluster's processes: reading and
writing it, its nodes by role, and whether each recorded process still runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lenshouse.deploy.server_config import HOST
from lenshouse.deploy.topology import Topology

DOC_NAME = "cluster.json"
# Children started by this process, so that their exit is reaped (no zombies that
# would look alive) and no ResourceWarning is raised for a dropped Popen.
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

Doc = dict[str, Any]
Node = dict[str, Any]


class ClusterError(RuntimeError):
    """A sentence for the user: what failed, on which node, and why."""


class QueryError(ClusterError):
    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code  # ClickHouse's error code ("Code: 242. …"), if it gave one


def load(root: str | Path) -> Doc:
    path = Path(root) / DOC_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"there is no cluster in {root} (no {DOC_NAME}): run up first") from None


def save(root: Path, doc: Doc) -> None:
    tmp = root / f".{DOC_NAME}.tmp"
    # It may hold the admin token: the owner's alone.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, root / DOC_NAME)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One up/stop/start/down at a time per directory (they rewrite cluster.json)."""
    with open(root / ".cluster.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clickhouse_nodes(doc: Doc) -> list[Node]:
    return [n for n in doc["nodes"] if n["role"] == "clickhouse"]


def clickhouse_hosts(doc: Doc) -> list[str]:
    """Native-protocol addresses of every ClickHouse server, "127.0.0.1:TCP"."""
    return [f"{HOST}:{n['ports']['tcp']}" for n in clickhouse_nodes(doc)]


def keeper_hosts(doc: Doc) -> list[str]:
    """ZooKeeper client addresses, "127.0.0.1:PORT"."""
    return [f"{HOST}:{n['ports']['client']}" for n in doc["nodes"] if n["role"] == "keeper"]


def shard_replicas(doc: Doc) -> dict[int, list[str]]:
    """Shard number → names of its replicas, in replica order."""
    shards: dict[int, list[str]] = {}
    for n in sorted(clickhouse_nodes(doc), key=lambda n: (n["shard"], n["replica"])):
        shards.setdefault(n["shard"], []).append(n["name"])
    return shards


def node(doc: Doc, name: str) -> Node:
    for n in doc["nodes"]:
        if n["name"] == name:
            return n
    names = ", ".join(n["name"] for n in doc["nodes"])
    raise ClusterError(f"the cluster has no node {name!r} (it has {names})")


def topology_of(doc: Doc) -> Topology:
    return Topology(
        doc["name"],
        doc["shards"],
        doc["replicas"],
        doc["keepers"],
        doc["base_port"],
        **doc.get("roles", {}),
    )


def log_urls(doc: Doc) -> list[str]:
    """NATS client URLs of the log's servers."""
    return [f"nats://{HOST}:{n['ports']['client']}" for n in doc["nodes"] if n["role"] == "nats"]


def role_urls(doc: Doc, role: str) -> list[str]:
    """HTTP URLs of every node of ``role`` (gateway, lens, loader)."""
    return [n["url"] for n in doc["nodes"] if n["role"] == role]


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def alive(n: Node) -> bool:
    """Whether the node's recorded process runs, and is still that node's command."""
    pid = n.get("pid")
    if not pid:
        return False
    child = CHILDREN.get(pid)
    if child is not None:
        # Our own child: its exit status is the truth. /proc alone once said a
        # ZooKeeper just started was gone while it went on to join the quorum.
        if child.poll() is None:
            return True
        del CHILDREN[pid]
        n["exit_status"] = child.returncode
        return False
    cmd = cmdline(pid)
    if cmd is None:
        return False
    return "argv" not in n or cmd == n["argv"]
