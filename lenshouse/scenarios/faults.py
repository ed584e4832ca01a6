"""The faults of the cluster scenarios, each on this machine's own processes.

A fault is injected, held for the scenario's fault window (or instantaneous),
then lifted: whatever it stopped is started again on its data. A network
partition cuts one ClickHouse server off from every other process while it
keeps running. A socket belongs to the cgroup its process was in when the
socket was made, so the cut has two halves: the connections the server
already holds (its keeper session, replication, clients) are dropped both ways
by their local ports, and the process is moved into a cgroup of its own whose
every new outgoing packet is dropped (iptables ``-m cgroup --path``), as is
every packet to its listening ports. Lifting deletes the rules and the cgroup.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from lenshouse.cluster import probes, processes, record
from lenshouse.cluster.record import Doc


def cgroup2_mount(mounts: str) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, from ``/proc/self/mounts``:
    ``/sys/fs/cgroup`` on a pure v2 host, ``/sys/fs/cgroup/unified`` in hybrid
    mode; None without one."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    return None


def cgroup_of(proc_cgroup: str) -> str:
    """A process's cgroup v2 path (``/proc/PID/cgroup``'s ``0::`` line), "/" if none."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return "/"


def _cgroup_root() -> Path | None:
    try:
        return cgroup2_mount(Path("/proc/self/mounts").read_text())
    except OSError:
        return None


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: Callable[[Path], dict]  # returns what lift needs
    lift: Callable[[Path, dict], None]
    instant: bool = False  # nothing to hold: lifted as soon as injected
    needs_iptables: bool = False
    lenses_answer: bool = True  # some lens server still answers while it is on
    # Held at least this long, whatever the run's fault length: see the partition.
    min_s: float = 0.0


def _doc(root: Path) -> Doc:
    return record.load(root)


def _kill(root: Path, names: list[str]) -> dict:
    for n in names:
        processes.stop(root, n, kill=True)
    return {"stopped": names}


def _start(root: Path, state: dict) -> None:
    for n in state.get("stopped", []):
        processes.start(root, n)


def _keeper_leader(root: Path) -> str:
    for n in _doc(root)["nodes"]:
        if n["role"] == "keeper" and record.alive(n) and probes.keeper_mode(n) == "leader":
            return n["name"]
    raise RuntimeError("no ZooKeeper node says it leads")


def _stream_leader(root: Path, partition: int = 0) -> str:
    for _ in range(100):  # bounded: a leader may be in election
        leader = probes.log_streams(_doc(root)).get(f"LH_P{partition}", {}).get("leader")
        if leader:
            return leader
        time.sleep(0.1)
    raise RuntimeError(f"stream LH_P{partition} has no leader")


def _log_follower(root: Path) -> str:
    leader = _stream_leader(root)
    return next(
        n["name"] for n in _doc(root)["nodes"] if n["role"] == "nats" and n["name"] != leader
    )


def _loader_of(root: Path, partition: int = 0) -> str:
    return probes.loader_partitions(_doc(root))[partition]["loader"]


def _names(root: Path, role: str) -> list[str]:
    return [n["name"] for n in _doc(root)["nodes"] if n["role"] == role]


# -- the network partition -------------------------------------------------------
def iptables_works() -> bool:
    try:
        subprocess.run(["iptables", "-L", "OUTPUT", "-n"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    root = _cgroup_root()
    return root is not None and (root / "cgroup.procs").exists()


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of every socket the process holds (listening too)."""
    conns = psutil.Process(pid).net_connections("tcp")
    return {c.laddr.port for c in conns if c.laddr}


def _rules(group: str, ports: set[int]) -> list[list[str]]:
    out = [["OUTPUT", "-m", "cgroup", "--path", group, "-j", "DROP"]]
    for p in sorted(ports):
        out.append(["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(p), "-j", "DROP"])
        out.append(["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(p), "-j", "DROP"])
    return out


def _partition(root: Path, name: str = "ch-s1-r1") -> dict:
    node = record.node(_doc(root), name)
    cgroups = _cgroup_root()
    if cgroups is None:
        raise RuntimeError("no cgroup v2 hierarchy is mounted: the partition needs one")
    group = f"lenshouse-cut-{name}"
    home = cgroup_of(Path(f"/proc/{node['pid']}/cgroup").read_text())
    path = cgroups / group
    path.mkdir(exist_ok=True)
    (path / "cgroup.procs").write_text(str(node["pid"]))  # the process, all its threads
    ports = set(node["ports"].values()) | _local_ports(node["pid"])
    added = []
    for rule in _rules(group, ports):
        subprocess.run(["iptables", "-I", *rule], check=True)
        added.append(rule)
    return {"group": group, "rules": added, "pid": node["pid"], "cgroups": str(cgroups),
            "home": home}  # fmt: skip


def _heal(root: Path, state: dict) -> None:
    for rule in state["rules"]:
        subprocess.run(["iptables", "-D", *rule], check=False)
    cgroups = Path(state["cgroups"])
    path = cgroups / state["group"]
    with contextlib.suppress(OSError):
        # Back to the group it came from, then ours can go.
        (cgroups / state["home"].lstrip("/") / "cgroup.procs").write_text(str(state["pid"]))
    with contextlib.suppress(OSError):
        path.rmdir()


# -- rolling restarts ---------------------------------------------------------------
def _rolling(root: Path, role: str, pause: float = 5.0) -> dict:
    for name in _names(root, role):
        processes.stop(root, name)  # SIGTERM, as an upgrade would
        processes.start(root, name)
        time.sleep(pause)
    return {}


def _nothing(root: Path, state: dict) -> None:
    return None


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault(
            "replica-kill",
            "kill -9 of one ClickHouse replica, restarted after the window",
            lambda r: _kill(r, ["ch-s1-r2"]),
            _start,
        ),
        Fault(
            "shard-down",
            "both replicas of one shard killed for the window",
            lambda r: _kill(r, ["ch-s2-r1", "ch-s2-r2"]),
            _start,
        ),
        Fault(
            "keeper-leader",
            "the ZooKeeper leader killed (restarted after the window)",
            lambda r: _kill(r, [_keeper_leader(r)]),
            _start,
        ),
        Fault(
            "keeper-quorum",
            "two of three ZooKeeper nodes killed: no quorum for the window",
            lambda r: _kill(r, [n for n in _names(r, "keeper") if n != _keeper_leader(r)]),
            _start,
        ),
        Fault(
            "log-leader",
            "the NATS stream leader of partition 0 killed (restarted after the window)",
            lambda r: _kill(r, [_stream_leader(r)]),
            _start,
        ),
        Fault(
            "log-follower",
            "a NATS follower of partition 0 down for the window",
            lambda r: _kill(r, [_log_follower(r)]),
            _start,
        ),
        Fault(
            "partition",
            "one ClickHouse server cut off from every other process, its process running",
            _partition,
            _heal,
            needs_iptables=True,
            # A cut server's sockets go silent: a read already on one waits out
            # its timeout (15 s, lenshouse.storage.replicated.connection), and
            # only later reads go to the replicas that answer. Held longer than
            # that, the fault shows lenses answering while it is on.
            min_s=20.0,
        ),
        Fault(
            "gateway-kill",
            "a gateway killed mid-request (restarted after the window)",
            lambda r: _kill(r, [_names(r, "gateway")[0]]),
            _start,
        ),
        Fault(
            "loader-kill",
            "the loader of partition 0 killed mid-insert (restarted after the window)",
            lambda r: _kill(r, [_loader_of(r)]),
            _start,
        ),
        Fault(
            "rolling-restart",
            "every ClickHouse server restarted, one at a time",
            lambda r: _rolling(r, "clickhouse"),
            _nothing,
            instant=True,
        ),
        Fault(
            "lens-restart",
            "every lens server killed, restarted after the window",
            lambda r: _kill(r, _names(r, "lens")),
            _start,
            lenses_answer=False,
        ),
    )
}
