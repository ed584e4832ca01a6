"""Probes of the local cluster's servers: ZooKeeper's four-letter words,
ClickHouse over HTTP, the log's JetStream reports and the loaders' /healthz."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx

from lenshouse.cluster.record import Doc, Node, QueryError, alive, topology_of
from lenshouse.deploy.server_config import HOST


def four_letter(port: int, command: str, timeout: float = 1.0) -> str:
    """A ZooKeeper four-letter command (srvr, ruok, mntr, …); '' if it does not answer."""
    chunks: list[bytes] = []
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(command.encode())
            for _ in range(256):
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return ""
    return b"".join(chunks).decode(errors="replace")


def keeper_mode(n: Node) -> str | None:
    """leader, follower or standalone once it serves clients; None before (no quorum)."""
    m = re.search(r"^Mode: (\w+)", four_letter(n["ports"]["client"], "srvr"), re.M)
    return m.group(1) if m else None


def query(n: Node, sql: str, *, timeout: float = 30.0, **settings: Any) -> str:
    """Run one query on a ClickHouse node over HTTP; its TSV answer. Settings go as
    URL parameters (18.16 knows no `SETTINGS` clause on INSERT)."""
    url = f"http://{HOST}:{n['ports']['http']}/"
    try:
        r = httpx.post(url, params=settings, content=sql.encode(), timeout=timeout, trust_env=False)
    except httpx.HTTPError as e:
        raise QueryError(f"{n['name']} did not answer ({type(e).__name__}: {e})", None) from e
    if r.status_code != 200:
        m = re.search(r"Code: (\d+)", r.text)
        text = r.text.strip().splitlines()[0] if r.text.strip() else f"HTTP {r.status_code}"
        raise QueryError(f"{n['name']}: {text}", int(m.group(1)) if m else None)
    return r.text


def answers(n: Node, sql: str, expected: str) -> bool:
    try:
        return query(n, sql, timeout=2.0).strip() == expected
    except QueryError:
        return False


def pings(n: Node) -> bool:
    try:
        r = httpx.get(f"http://{HOST}:{n['ports']['http']}/ping", timeout=1.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.text.strip() == "Ok."


def healthy(n: Node) -> bool:
    return get_ok(f"http://{HOST}:{n['ports']['http']}/healthz")


def get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _jsz(doc: Doc, query: str = "") -> Iterator[tuple[Node, dict[str, Any]]]:
    """Each running log server with its JetStream report (monitor ``/jsz``)."""
    for n in doc["nodes"]:
        if n["role"] != "nats" or not alive(n):
            continue
        try:
            url = f"http://{HOST}:{n['ports']['monitor']}/jsz{query}"
            yield n, httpx.get(url, timeout=2.0, trust_env=False).json()
        except (httpx.HTTPError, ValueError):
            continue


def log_leader(doc: Doc) -> bool:
    """Whether the log's servers have elected a JetStream meta leader."""
    for _, info in _jsz(doc):
        if (info.get("meta_cluster") or {}).get("leader") or topology_of(doc).nats == 1:
            return True
    return False


def log_streams(doc: Doc) -> dict[str, dict[str, Any]]:
    """The log's streams as their leaders report them (monitor ``/jsz``): per
    stream its first and last record and its leader's server name. A
    follower may briefly hold entries the leader never committed (after a
    leader was killed): its count is used only while no leader answers."""
    out: dict[str, dict[str, Any]] = {}
    led: set[str] = set()
    for n, info in _jsz(doc, "?streams=true"):
        for account in info.get("account_details") or []:
            for s in account.get("stream_detail") or []:
                state, leader = s["state"], (s.get("cluster") or {}).get("leader")
                seen = out.setdefault(s["name"], {"first": 0, "last": 0, "leader": None})
                seen["leader"] = seen["leader"] or leader
                if leader == n["name"]:
                    seen["first"], seen["last"] = int(state["first_seq"]), int(state["last_seq"])
                    led.add(s["name"])
                elif s["name"] not in led:
                    seen["last"] = max(seen["last"], int(state["last_seq"]))
                    seen["first"] = max(seen["first"], int(state["first_seq"]))
    return out


def loader_partitions(doc: Doc) -> dict[int, dict[str, Any]]:
    """Partition → its row in the /healthz of the loader owning it (with ``loader``)."""
    out: dict[int, dict[str, Any]] = {}
    for n in doc["nodes"]:
        if n["role"] != "loader" or not alive(n):
            continue
        try:
            r = httpx.get(f"{n['url']}/healthz", timeout=5.0, trust_env=False)
            rows = r.json().get("partitions", [])
        except (httpx.HTTPError, ValueError):
            continue
        for row in rows:
            out[row["partition"]] = {**row, "loader": n["name"]}
    return out


def caught_up(doc: Doc, prefix: str = "LH") -> bool:
    """Whether every record the log holds is loaded (each partition's owner
    has loaded past its stream's last record)."""
    streams = log_streams(doc)
    parts = loader_partitions(doc)
    if not streams or len(parts) < len(streams):
        return False
    for p, row in parts.items():
        last = streams.get(f"{prefix}_P{p}", {}).get("last", 0)
        if row["next_lsn"] is None or row["next_lsn"] <= last:
            return False
    return True
