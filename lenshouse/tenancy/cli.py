"""``lenshouse tenant create | token | revoke | list | admin``: tokens in the
embedded server's data directory (``--data``) or a cluster's keeper
(``--keeper``). A running server sees a change within a second (the file)
or at once (the keeper's watch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lenshouse.node import DEFAULT_DATA_DIR
from lenshouse.storage.errors import RetryableError
from lenshouse.tenancy.registry import ADMIN, FileRegistry, Registry, TenancyError

tenant_app = typer.Typer(help="Tenants and their bearer tokens.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

DATA = typer.Option(DEFAULT_DATA_DIR, help="the embedded server's data directory")
KEEPER = typer.Option(
    None,
    "--keeper",
    envvar="LENSHOUSE_KEEPER",
    help="a cluster's keeper addresses host:port,… (instead of --data)",
)
DATABASE = typer.Option("lenshouse", help="the cluster's database (names its keeper state)")


@contextlib.contextmanager
def _registry(data: Path, keeper: str | None, database: str) -> Iterator[Registry]:
    if keeper is None:
        yield FileRegistry(data)
        return
    from kazoo.handlers.threading import KazooTimeoutError

    from lenshouse.tenancy.keeper import opened

    hosts = [h.strip() for h in keeper.split(",") if h.strip()]
    try:
        with opened(hosts, database, timeout=15) as registry:
            yield registry
    except KazooTimeoutError as e:  # the connection, not the command, failed
        err.print(f"[red]cannot reach the keeper at {keeper}: {e}[/red]")
        raise typer.Exit(3) from None


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except TenancyError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    except RetryableError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(3) from None


def _issue(name: str, data: Path, keeper: str | None, database: str) -> None:
    with _refusals(), _registry(data, keeper, database) as reg:
        token = reg.create(name)
    who = "an admin" if name == ADMIN else f"tenant {name!r}"
    err.print(f"a new token for {who}; it is shown once, keep it:")
    print(token)


@tenant_app.command()
def create(
    name: str, data: Path = DATA, keeper: str | None = KEEPER, database: str = DATABASE
) -> None:
    """Create a tenant and print its first token."""
    with _refusals(), _registry(data, keeper, database) as reg:
        if name in reg.tenants():
            err.print(f"[red]tenant {name!r} exists; lenshouse tenant token {name} adds a token")
            raise typer.Exit(2)
    _issue(name, data, keeper, database)


@tenant_app.command()
def token(
    name: str, data: Path = DATA, keeper: str | None = KEEPER, database: str = DATABASE
) -> None:
    """Print another token for an existing tenant (e.g. to rotate: then revoke the old)."""
    with _refusals(), _registry(data, keeper, database) as reg:
        if name not in reg.tenants():
            err.print(f"[red]no tenant {name!r}; lenshouse tenant create {name} makes it")
            raise typer.Exit(2)
    _issue(name, data, keeper, database)


@tenant_app.command()
def revoke(
    name: str,
    token_id: str = typer.Option(None, "--id", help="one token's id (default: all of them)"),
    data: Path = DATA,
    keeper: str | None = KEEPER,
    database: str = DATABASE,
) -> None:
    """Revoke one token of a tenant, or all of them (its data stays); NAME
    '(admin)' for admin tokens."""
    with _refusals(), _registry(data, keeper, database) as reg:
        n = reg.revoke(ADMIN if name == "(admin)" else name, token_id)
    if n == 0:
        err.print(f"[red]tenant {name!r} has no tokens[/red]")
        raise typer.Exit(2)
    err.print(f"revoked {n} token(s) of {name!r}")


@tenant_app.command("list")
def list_tenants(data: Path = DATA, keeper: str | None = KEEPER, database: str = DATABASE) -> None:
    """Tenants and their tokens' ids (never the tokens)."""
    with _refusals(), _registry(data, keeper, database) as reg:
        tenants = reg.tenants()
    t = Table("tenant", "token id", "created (UTC)")
    import datetime as dt

    for name, records in sorted(tenants.items()):
        for r in records:
            when = dt.datetime.fromtimestamp(r.created, dt.timezone.utc)
            t.add_row("(admin)" if name == ADMIN else name, r.id, f"{when:%Y-%m-%d %H:%M:%S}")
    console.print(t)


@tenant_app.command()
def admin(data: Path = DATA, keeper: str | None = KEEPER, database: str = DATABASE) -> None:
    """Print a new admin token (the admin API, and reading any tenant with X-Tenant)."""
    _issue(ADMIN, data, keeper, database)
