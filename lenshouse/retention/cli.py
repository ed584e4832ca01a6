"""``lenshouse maintain`` and ``lenshouse retention show|set``.

Each works on one of: a running embedded server (``--url``: it acts itself,
so its engine sees new marks at once), a data directory no server has open
(``--data``), or a cluster's ClickHouse servers (``--clickhouse``; the
Kubernetes CronJob's way)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from lenshouse.points import BadInput
from lenshouse.retention import maintain
from lenshouse.retention.horizons import when
from lenshouse.retention.policy import SOURCES
from lenshouse.storage.errors import StorageError
from lenshouse.storage.store import Store
from lenshouse.tenancy.registry import ADMIN_TOKEN_ENV

T = TypeVar("T")
retention_app = typer.Typer(help="Per-tenant retention of raw points and tiers.")
console = Console()
err_console = Console(stderr=True)

URL = typer.Option(None, help="a running embedded server (it runs the work itself)")
DATA = typer.Option(None, help="a data directory that no server has open")
CLICKHOUSE = typer.Option(
    None, envvar="LENSHOUSE_CLICKHOUSE", help="a cluster's native-protocol addresses host:port,…"
)
CLUSTER = typer.Option("lenshouse", help="the cluster's name in remote_servers")
DATABASE = typer.Option("lenshouse", help="ClickHouse database of lenshouse's tables")
CH_USER = typer.Option("default", envvar="LENSHOUSE_CLICKHOUSE_USER", help="ClickHouse user")
CH_PASSWORD = typer.Option(
    "", envvar="LENSHOUSE_CLICKHOUSE_PASSWORD", show_default=False, help="ClickHouse password"
)
TOKEN = typer.Option(
    None, envvar=ADMIN_TOKEN_ENV, show_default=False, help="admin token (with --url and auth on)"
)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _one(url: str | None, data: Path | None, clickhouse: str | None) -> None:
    if sum(x is not None for x in (url, data, clickhouse)) != 1:
        raise _fail("name exactly one of --url, --data or --clickhouse")


def _store(
    data: Path | None,
    clickhouse: str | None,
    cluster: str,
    database: str,
    user: str = "default",
    password: str = "",
):
    if clickhouse:
        from lenshouse.storage.replicated.store import ClusterStore

        seeds = [a.strip() for a in clickhouse.split(",") if a.strip()]
        store = ClusterStore.connect(seeds, cluster, database, user=user, password=password)
    else:
        from lenshouse.storage.embedded import EmbeddedBackend
        from lenshouse.storage.store import EmbeddedStore

        assert data is not None
        if not (data / "clickhouse").is_dir():
            raise _fail(f"{data} is not a lenshouse data directory")
        store = EmbeddedStore(EmbeddedBackend(data / "clickhouse"))
    store.open()
    return store


def _on_store(
    work: Callable[[Store], T],
    data: Path | None,
    clickhouse: str | None,
    cluster: str,
    database: str,
    user: str = "default",
    password: str = "",
) -> T:
    """``work(store)`` on the named store, closed after; its refusals as exit 1."""
    try:
        store = _store(data, clickhouse, cluster, database, user, password)
        try:
            return work(store)
        finally:
            store.close()
    except (StorageError, BadInput) as e:
        raise _fail(str(e)) from None


def _http(url: str, token: str | None, method: str, path: str, **kw) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=600, **kw)
    except httpx.HTTPError as e:
        raise _fail(f"{url} did not answer: {e}") from None
    if r.status_code != 200:
        raise _fail(f"{url} answered {r.status_code}: {r.text[:300]}")
    return r.json()


def _print_report(doc: dict) -> None:
    table = Table("action", "source", "partition", "from (UTC)", "tenants", "bytes", "done")
    for a in doc["actions"]:
        where = (a["kind"], a["source"], str(a["partition"]), when(a["from"]))
        done = "yes" if a["done"] else "queued"
        table.add_row(*where, ",".join(a["tenants"]), f"{a['bytes']:,}", done)
    if doc["actions"]:
        console.print(table)
    what = "would write" if doc["dry_run"] else "wrote"
    console.print(
        f"maintenance: {what} {len(doc['marks'])} expiry marks, {len(doc['actions'])} actions,"
        f" {doc['dropped_bytes']:,} bytes in dropped partitions, {doc['seconds']:.1f} s"
    )


def maintain_command(
    url: str | None = URL,
    data: Path | None = DATA,
    clickhouse: str | None = CLICKHOUSE,
    cluster: str = CLUSTER,
    database: str = DATABASE,
    user: str = CH_USER,
    password: str = CH_PASSWORD,
    token: str | None = TOKEN,
    dry_run: bool = typer.Option(False, help="report what would go; change nothing"),
    settle: float = typer.Option(
        None, help="seconds between writing marks and dropping (default: enough for every reader)"
    ),
) -> None:
    """Expire what each tenant's retention no longer keeps (run it daily)."""
    _one(url, data, clickhouse)
    if url:
        params = {"dry_run": "true" if dry_run else "false"}
        _print_report(_http(url, token, "POST", "/v1/admin/maintain", params=params))
        return
    wait = settle if settle is not None else (0.0 if data else maintain.SETTLE_S)
    report = _on_store(
        lambda store: maintain.run(store, settle_s=wait, dry_run=dry_run, say=console.print),
        data, clickhouse, cluster, database, user, password,
    )  # fmt: skip
    _print_report(report.to_json())


@retention_app.command("show")
def show(
    url: str | None = URL,
    data: Path | None = DATA,
    clickhouse: str | None = CLICKHOUSE,
    cluster: str = CLUSTER,
    database: str = DATABASE,
    token: str | None = TOKEN,
) -> None:
    """Every policy: * (every tenant without its own) and each tenant's."""
    _one(url, data, clickhouse)
    if url:
        policies = _http(url, token, "GET", "/v1/admin/retention")["policies"]
    else:
        policies = _on_store(
            lambda store: {t: p.to_json() for t, p in maintain.policies(store).items()},
            data, clickhouse, cluster, database,
        )  # fmt: skip
    table = Table("tenant", *SOURCES)
    for tenant, keep in policies.items():
        table.add_row(tenant, *(keep[s] for s in SOURCES))
    console.print(table)


@retention_app.command("set")
def set_keep(
    tenant: str = typer.Argument(..., help="a tenant, or * for every tenant without its own"),
    keep: list[str] = typer.Argument(..., help="SOURCE=DURATION, e.g. raw=30d 100ms=90d 1s=1y"),
    url: str | None = URL,
    data: Path | None = DATA,
    clickhouse: str | None = CLICKHOUSE,
    cluster: str = CLUSTER,
    database: str = DATABASE,
    token: str | None = TOKEN,
) -> None:
    """Set how long a tenant keeps some sources (the rest stay as they are)."""
    _one(url, data, clickhouse)
    pairs = {}
    for item in keep:
        source, sep, duration = item.partition("=")
        if not sep:
            raise _fail(f"{item!r}: give SOURCE=DURATION, e.g. raw=30d")
        pairs[source.strip()] = duration.strip()
    if url:
        doc = _http(url, token, "PUT", f"/v1/admin/retention/{tenant}", json=pairs)
        console.print(f"{tenant}: {doc['keep']}")
        return
    policy = _on_store(
        lambda store: maintain.set_policy(store, tenant, pairs), data, clickhouse, cluster, database
    )
    console.print(f"{tenant}: {policy.to_json()}")
