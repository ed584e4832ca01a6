"""``lenshouse gateway | loader | lens-server``: each role of cluster mode as
its own process, against given NATS, keeper and ClickHouse addresses."""

from __future__ import annotations

import logging
import time

import typer
import uvicorn

HOST = typer.Option("127.0.0.1", help="address to listen on")
# Addresses may come from the environment (a ConfigMap in Kubernetes).
NATS = typer.Option(
    ...,
    "--nats",
    envvar="LENSHOUSE_NATS",
    help="NATS servers, comma-separated (nats://host:port,…)",
)
KEEPER = typer.Option(
    ...,
    "--keeper",
    envvar="LENSHOUSE_KEEPER",
    help="ZooKeeper / ClickHouse Keeper client addresses, host:port,…",
)
CLICKHOUSE = typer.Option(
    ..., "--clickhouse", envvar="LENSHOUSE_CLICKHOUSE", help="native-protocol addresses host:port,…"
)
CLUSTER = typer.Option("lenshouse", help="the cluster's name in remote_servers")
DATABASE = typer.Option("lenshouse", help="ClickHouse database (also names the keeper state)")
PREFIX = typer.Option("LH", "--log", help="the log's stream prefix")
WAIT = typer.Option(120, help="seconds to wait for ClickHouse at start")
# Credentials come from the environment too, so a Secret can hold them.
CH_USER = typer.Option("default", envvar="LENSHOUSE_CLICKHOUSE_USER", help="ClickHouse user")
CH_PASSWORD = typer.Option(
    "", envvar="LENSHOUSE_CLICKHOUSE_PASSWORD", show_default=False, help="ClickHouse password"
)


def cluster_store(
    addresses: str,
    cluster: str,
    database: str,
    quorum: int | None,
    wait: float,
    user: str = "default",
    password: str = "",
):
    """A store over an existing cluster; waits up to ``wait`` seconds for it."""
    from lenshouse.storage.errors import FatalError, StorageError
    from lenshouse.storage.replicated.connection import parse_address
    from lenshouse.storage.replicated.store import ClusterStore

    seeds = [a for a in addresses.split(",") if a.strip()]
    try:
        for a in seeds:
            parse_address(a)
    except ValueError as e:
        raise typer.Exit(_fail(str(e))) from None
    deadline = time.monotonic() + wait
    while True:
        try:
            return ClusterStore.connect(
                seeds, cluster, database, insert_quorum=quorum, user=user, password=password
            )
        except FatalError as e:
            raise typer.Exit(_fail(f"cluster {cluster!r} at {addresses}: {e}")) from None
        except StorageError as e:
            if time.monotonic() > deadline:
                raise typer.Exit(
                    _fail(f"no ClickHouse server of {addresses} answered in {wait:.0f} s: {e}")
                ) from None
            time.sleep(1.0)


def _fail(message: str) -> int:
    typer.secho(f"error: {message}", err=True, fg="red")
    return 1


def _split(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def _run(app, host: str, port: int) -> None:
    from lenshouse.api.app import KEEP_ALIVE_S

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)


def gateway(
    nats: str = NATS,
    keeper: str = KEEPER,
    database: str = DATABASE,
    log: str = PREFIX,
    host: str = HOST,
    port: int = typer.Option(8080),
    name: str = typer.Option("gateway", help="this gateway's name (in NATS connections)"),
    quota_points_per_s: float = typer.Option(
        0, help="each tenant's writes through this gateway, points a second (0: none)"
    ),
    quota_sensors: int = typer.Option(
        0, min=0, help="sensors each tenant may write through this gateway (0: any number)"
    ),
) -> None:
    """Validate writes, publish them to the replicated log, acknowledge (stateless)."""
    from lenshouse.roles.gateway import Gateway, create_gateway_app
    from lenshouse.tenancy.quotas import Quotas

    zk, auth = _keeper_auth(keeper, database)
    app = create_gateway_app(
        Gateway(_split(nats), log, name, zk, database),
        auth,
        Quotas(points_per_s=quota_points_per_s, sensors=quota_sensors),
    )
    _run(app, host, port)


def _keeper_auth(keeper: str, database: str):
    """The keeper client and the tokens it holds (cluster mode: auth is always on)."""
    from lenshouse.api.auth import Auth
    from lenshouse.coordination.zk import Paths
    from lenshouse.coordination.zk import connect as zk_connect
    from lenshouse.tenancy.keeper import KeeperRegistry

    zk = zk_connect(_split(keeper))
    return zk, Auth(KeeperRegistry(zk, Paths(database)))


def loader(
    nats: str = NATS,
    keeper: str = KEEPER,
    clickhouse: str = CLICKHOUSE,
    cluster: str = CLUSTER,
    database: str = DATABASE,
    log: str = PREFIX,
    log_replicas: int = typer.Option(
        3, envvar="LENSHOUSE_LOG_REPLICAS", help="replicas of each partition stream"
    ),
    log_budget_gb: float = typer.Option(
        6.0, help="bytes the log may hold (all partitions), GiB; then writes get 503"
    ),
    insert_quorum: int = typer.Option(None, help="replicas each insert waits for (default: all)"),
    member: str = typer.Option(
        None, envvar="LENSHOUSE_MEMBER", help="this loader's name (default: random)"
    ),
    host: str = HOST,
    port: int = typer.Option(8090, help="port of /healthz and /metrics"),
    connect_wait: float = WAIT,
    clickhouse_user: str = CH_USER,
    clickhouse_password: str = CH_PASSWORD,
) -> None:
    """Own log partitions (leases in the keeper) and load them into ClickHouse."""
    from contextlib import asynccontextmanager

    from lenshouse.roles.loader import LoaderRole, create_loader_app

    store = cluster_store(clickhouse, cluster, database, insert_quorum, connect_wait,
                           clickhouse_user, clickhouse_password)  # fmt: skip
    role = LoaderRole(
        _split(nats),
        _split(keeper),
        store,
        prefix=log,
        log_replicas=log_replicas,
        log_budget=int(log_budget_gb * 2**30),
        member=member,
    ).start()
    app = create_loader_app(role)

    @asynccontextmanager
    async def lifespan(_):
        yield
        role.stop()

    app.router.lifespan_context = lifespan
    _run(app, host, port)


def lens_server(
    keeper: str = KEEPER,
    clickhouse: str = CLICKHOUSE,
    cluster: str = CLUSTER,
    database: str = DATABASE,
    host: str = HOST,
    port: int = typer.Option(8100),
    connect_wait: float = WAIT,
    clickhouse_user: str = CH_USER,
    clickhouse_password: str = CH_PASSWORD,
    quota_lens_per_s: float = typer.Option(
        0, help="each tenant's lens and export requests to this server a second (0: none)"
    ),
    lens_cache_mb: float = typer.Option(
        256, help="memory for cached lens chunks (0 turns the cache off)"
    ),
    nats: str = typer.Option(
        "",
        "--nats",
        envvar="LENSHOUSE_NATS",
        help="NATS servers, comma-separated: the loaders announce their loads there for the head"
        " (none: no head, the newest seconds are read from ClickHouse)",
    ),
    log: str = PREFIX,
    head_seconds: float = typer.Option(
        65.0, help="seconds of the newest points kept in memory per shard (0: no head)"
    ),
    head_mb: float = typer.Option(
        2048, help="memory for the head (20 bytes a point); past it, it keeps fewer seconds"
    ),
    catch_up_share: float = typer.Option(
        0.25,
        help="while a loader catches up (announced 10 s behind, until 2 s), lenses run one at"
        " a time and take at most this share of the time (0: lenses never yield)",
    ),
) -> None:
    """Answer lenses, export and the catalog from the cluster, exact as of completed loads."""
    from lenshouse.lens.catch_up import CatchUp
    from lenshouse.roles.lens_server import LensServer, create_lens_app
    from lenshouse.tenancy.quotas import Quotas

    store = cluster_store(clickhouse, cluster, database, None, connect_wait,
                           clickhouse_user, clickhouse_password)  # fmt: skip
    server = LensServer(
        _split(keeper),
        store,
        cache_bytes=int(lens_cache_mb * 2**20),
        nats=_split(nats),
        log_prefix=log,
        head_seconds=head_seconds,
        head_bytes=int(head_mb * 2**20),
        catch_up=CatchUp(share=catch_up_share) if catch_up_share > 0 else None,
    )
    _run(create_lens_app(server, Quotas(lens_per_s=quota_lens_per_s)), host, port)


def register(app: typer.Typer) -> None:
    app.command(help=gateway.__doc__)(gateway)
    app.command(help=loader.__doc__)(loader)
    app.command("lens-server", help=lens_server.__doc__)(lens_server)
