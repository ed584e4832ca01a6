"""Who is in the cluster and on which ports."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, replace
from pathlib import Path

PORTS_PER_NODE = 3
# Below Linux's default ephemeral range (32768+), so outgoing connections made
# between our own servers never grab a port that a node will later listen on.
_PORT_LOW, _PORT_HIGH = 10_000, 32_000


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: str  # clickhouse, keeper, nats, gateway, loader, lens (or lenshouse: one server)
    ports: dict[str, int]
    shard: int | None = None
    replica: int | None = None
    index: int | None = None  # keeper id (ZooKeeper's myid)


@dataclass(frozen=True)
class Topology:
    name: str = "lenshouse"
    shards: int = 2
    replicas: int = 2
    keepers: int = 3
    base_port: int = 0  # 0: not chosen yet, see with_free_ports()
    # The replicated log and the roles over it (cluster mode II).
    nats: int = 3
    gateways: int = 2
    loaders: int = 2
    lenses: int = 2

    def __post_init__(self) -> None:
        if min(self.shards, self.replicas, self.keepers) < 1:
            raise ValueError("shards, replicas and keepers must each be at least 1")
        if min(self.nats, self.gateways, self.loaders, self.lenses) < 1:
            raise ValueError("NATS servers, gateways, loaders and lens servers: at least 1 each")

    @property
    def _storage_ports(self) -> int:
        return PORTS_PER_NODE * (self.shards * self.replicas + self.keepers)

    @property
    def port_count(self) -> int:
        """Ports of all nodes: storage, one lenshouse server, the log, the roles."""
        roles = self.gateways + self.loaders + self.lenses
        return self._storage_ports + 1 + PORTS_PER_NODE * self.nats + roles

    @property
    def server_port(self) -> int:
        return self.base_port + self._storage_ports

    def log_servers(self) -> list[NodeSpec]:
        ports = ("client", "cluster", "monitor")
        return _numbered("nats", "nats", self.server_port + 1, self.nats, ports)

    def roles(self) -> list[NodeSpec]:
        """Loaders, gateways and lens servers, in the order they start."""
        port = self.server_port + 1 + PORTS_PER_NODE * self.nats
        nodes = []
        for role, prefix, count in (
            ("loader", "loader", self.loaders),
            ("gateway", "gw", self.gateways),
            ("lens", "lens", self.lenses),
        ):
            for k in range(1, count + 1):
                nodes.append(NodeSpec(f"{prefix}{k}", role, {"http": port}, index=k))
                port += 1
        return nodes

    def clickhouse(self) -> list[NodeSpec]:
        nodes = []
        for s in range(1, self.shards + 1):
            for r in range(1, self.replicas + 1):
                p = self.base_port + PORTS_PER_NODE * len(nodes)
                ports = {"tcp": p, "http": p + 1, "interserver": p + 2}
                nodes.append(NodeSpec(f"ch-s{s}-r{r}", "clickhouse", ports, shard=s, replica=r))
        return nodes

    def keeper(self) -> list[NodeSpec]:
        first = self.base_port + PORTS_PER_NODE * self.shards * self.replicas
        return _numbered("zk", "keeper", first, self.keepers, ("client", "peer", "election"))

    def nodes(self) -> list[NodeSpec]:
        return [*self.keeper(), *self.clickhouse()]

    def with_free_ports(self, attempts: int = 200) -> Topology:
        """A copy on a random range of ports that are all free now. Random, so that
        clusters started at the same time (parallel tests) rarely pick the same range."""
        rng = random.Random()
        for _ in range(attempts):
            base = rng.randrange(_PORT_LOW, _PORT_HIGH - self.port_count)
            if all(port_free(p) for p in range(base, base + self.port_count)):
                return replace(self, base_port=base)
        raise RuntimeError(f"found no {self.port_count} free consecutive ports on 127.0.0.1")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def node_dir(root: Path, name: str) -> Path:
    return root / name


def _numbered(
    prefix: str, role: str, first: int, count: int, names: tuple[str, ...]
) -> list[NodeSpec]:
    """``count`` nodes of ``role`` (``prefix``1, 2, …), each with its
    PORTS_PER_NODE consecutive ports from ``first`` on, named ``names``."""
    return [
        NodeSpec(
            f"{prefix}{k}",
            role,
            {n: first + PORTS_PER_NODE * (k - 1) + i for i, n in enumerate(names)},
            index=k,
        )
        for k in range(1, count + 1)
    ]
