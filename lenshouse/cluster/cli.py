"""``lenshouse cluster …``: a local cluster on 127.0.0.1 (ClickHouse, ZooKeeper, NATS,
loaders, gateways, lens servers)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lenshouse.cluster import processes, record
from lenshouse.cluster.record import ClusterError

cluster_app = typer.Typer(
    help="A local cluster on 127.0.0.1: ClickHouse 18.16 + ZooKeeper (Debian), NATS JetStream,"
    " loaders, gateways and lens servers.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DIR = typer.Option(Path("lenshouse-cluster"), "--dir", help="the cluster's directory")


def _fail(e: ClusterError) -> typer.Exit:
    # No markup: log tails carry brackets ("[myid:1]") that rich would read as tags.
    err_console.print(f"error: {e}", style="red", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(1)


def _print_table(dir: Path) -> None:
    table = Table("node", "role", "pid", "state", "ports")
    for row in processes.status(dir):
        ports = " ".join(f"{k}={v}" for k, v in row["ports"].items())
        pid = str(row["pid"]) if row["pid"] else "-"
        table.add_row(row["name"], row["role"], pid, row["state"], ports)
    console.print(table)


@cluster_app.command()
def up(
    dir: Path = DIR,
    shards: int = typer.Option(2, min=1),
    replicas: int = typer.Option(2, min=1),
    keepers: int = typer.Option(3, min=1),
    roles: bool = typer.Option(
        True,
        "--roles/--storage-only",
        help="also the replicated log (3 NATS servers) and 2 loaders, 2 gateways, 2 lens servers",
    ),
    server: bool = typer.Option(
        False, "--server", help="also one lenshouse server over ClickHouse alone (local log)"
    ),
) -> None:
    """Start the cluster in DIR (created on first use; what already runs is left alone)."""
    t0 = time.monotonic()
    try:
        doc = processes.up(dir, shards, replicas, keepers, server=server, roles=roles)
    except ClusterError as e:
        raise _fail(e) from None
    elapsed = time.monotonic() - t0
    _print_table(dir)
    hosts = ",".join(record.clickhouse_hosts(doc))
    console.print(f"cluster {doc['name']!r} up in {elapsed:.1f} s; ClickHouse {hosts}")
    if doc.get("gateways"):
        console.print(f"write to: {','.join(doc['gateways'])}")
        console.print(f"lenses:   {','.join(doc['lens_servers'])}")
    if doc["url"]:
        console.print(f"server:   {doc['url']}")


@cluster_app.command()
def stop(
    name: str = typer.Argument(..., help="a node: ch-s1-r1, zk2, nats1, gw1, loader1, lens1, …"),
    kill: bool = typer.Option(False, "--kill", help="SIGKILL instead of SIGTERM"),
    dir: Path = DIR,
) -> None:
    """Stop one node (SIGTERM and a bounded wait, or SIGKILL with --kill)."""
    try:
        processes.stop(dir, name, kill=kill)
    except ClusterError as e:
        raise _fail(e) from None
    console.print(f"{name} stopped")


@cluster_app.command()
def start(
    name: str = typer.Argument(..., help="a node: ch-s1-r1, zk2, nats1, gw1, loader1, lens1, …"),
    dir: Path = DIR,
) -> None:
    """Start one stopped node again, on its ports and data, and wait until it answers."""
    try:
        processes.start(dir, name)
    except ClusterError as e:
        raise _fail(e) from None
    console.print(f"{name} running")


@cluster_app.command()
def down(dir: Path = DIR) -> None:
    """Stop every process of the cluster (the data stays in DIR)."""
    try:
        processes.down(dir)
    except ClusterError as e:
        raise _fail(e) from None
    console.print("cluster stopped")


@cluster_app.command()
def status(dir: Path = DIR) -> None:
    """Each node: pid, state (leader/follower, ok, stopped, …) and ports."""
    try:
        _print_table(dir)
    except ClusterError as e:
        raise _fail(e) from None
