"""The compose stack: the whole topology of ``cluster up`` as containers on an
internal network, only the gateways and lens servers published, on 127.0.0.1."""

from __future__ import annotations

from lenshouse.deploy.spec import (
    CH_USER,
    PASSWORD_ENV,
    ROLE_PORTS,
    Addresses,
    Images,
    role_args,
)
from lenshouse.deploy.topology import Topology
from lenshouse.tenancy.client import TOKEN_ENV
from lenshouse.tenancy.registry import ADMIN_TOKEN_ENV

# Host ports of the published roles: gw1 18080, gw2 18081, …; lens1 18100, …
HOST_PORTS = {"gateway": 18080, "lens": 18100}

# The storage services keep one address on the backend network for good. Docker
# gives a restarted or reconnected container whatever address is free, often the
# one another container held; a ClickHouse server that cached a replica's address
# (18.16 caches names for good; current servers refresh every 15 s) would then
# fetch parts from the wrong server, and a quorum insert waits on it forever.
# Stateless roles take addresses from the upper half of the subnet.
DEFAULT_BACKEND_NET = "172.30.57"  # the first three octets of a /24
BACKEND_NET = f"${{LENSHOUSE_BACKEND_NET:-{DEFAULT_BACKEND_NET}}}"
_HOSTS = {"keeper": range(10, 20), "nats": range(20, 32), "clickhouse": range(32, 128)}
_PREFIX = {"gateway": "gw", "loader": "loader", "lens": "lens"}


def addresses(topo: Topology) -> Addresses:
    return Addresses(
        clickhouse=[
            [f"ch-s{s}-r{r}" for r in range(1, topo.replicas + 1)]
            for s in range(1, topo.shards + 1)
        ],
        keepers=[f"zk{k}" for k in range(1, topo.keepers + 1)],
        nats=[f"nats{k}" for k in range(1, topo.nats + 1)],
    )


def pinned(topo: Topology, net: str = BACKEND_NET) -> dict[str, str]:
    """The backend address of every keeper, NATS server and ClickHouse server
    (``net``: the subnet's first three octets, or the variable that holds them)."""
    where = addresses(topo)
    groups = {
        "keeper": where.keepers,
        "nats": where.nats,
        "clickhouse": [h for shard in where.clickhouse for h in shard],
    }
    out: dict[str, str] = {}
    for kind, names in groups.items():
        hosts = _HOSTS[kind]
        if len(names) > len(hosts):
            raise ValueError(f"{len(names)} {kind} servers do not fit the backend's plan")
        out |= {n: f"{net}.{h}" for n, h in zip(names, hosts)}
    return out


def _backend(address: str) -> dict:
    return {"backend": {"ipv4_address": address}}


def _image(var: str, default: str) -> str:
    return f"${{{var}:-{default}}}"


def _healthy(names: list[str]) -> dict:
    return {n: {"condition": "service_healthy"} for n in names}


def _check(test: list[str], start: str = "10s") -> dict:
    return {"test": test, "interval": "3s", "timeout": "5s", "retries": 40, "start_period": start}


def _http_check(port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/healthz"
    code = f"import urllib.request; urllib.request.urlopen('{url}', timeout=3)"
    return ["CMD", "python", "-c", code]


def compose(topo: Topology, images: Images = Images()) -> dict:
    where = addresses(topo)
    at = pinned(topo)
    password = {PASSWORD_ENV: f"${{{PASSWORD_ENV}:-lenshouse}}"}
    # No default: the roles' admin token is a secret (scripts/compose-local makes one).
    admin_token = f"${{{ADMIN_TOKEN_ENV}:?set {ADMIN_TOKEN_ENV} to a long random token}}"
    admin = {ADMIN_TOKEN_ENV: admin_token}
    operator = {TOKEN_ENV: admin_token}  # the one-shot jobs write and read as any tenant
    services: dict[str, dict] = {}
    for k, name in enumerate(where.keepers, 1):
        services[name] = {
            "image": _image("ZOOKEEPER_IMAGE", images.keeper),
            "hostname": name,
            "environment": {
                "ZOO_MY_ID": str(k),
                "ZOO_SERVERS": where.zoo_servers(),
                "ZOO_TICK_TIME": "500",
                "ZOO_4LW_COMMANDS_WHITELIST": "ruok,srvr,mntr",
            },
            "volumes": [f"{name}-data:/data", f"{name}-log:/datalog"],
            "networks": _backend(at[name]),
            "healthcheck": _check(["CMD", "zkServer.sh", "status"]),
        }
    for s, shard in enumerate(where.clickhouse, 1):
        for name in shard:
            services[name] = {
                "image": _image("CLICKHOUSE_IMAGE", images.clickhouse),
                "hostname": name,
                "environment": {
                    "CH_SHARD": str(s),
                    "CH_REPLICA": name,
                    "CH_INTERSERVER_HOST": name,
                    **password,
                },
                "volumes": [
                    "./clickhouse/cluster.xml:/etc/clickhouse-server/config.d/lenshouse.xml:ro",
                    "./clickhouse/users.xml:/etc/clickhouse-server/users.d/lenshouse.xml:ro",
                    f"{name}-data:/var/lib/clickhouse",
                ],
                "networks": _backend(at[name]),
                "depends_on": _healthy(where.keepers),
                "healthcheck": _check(["CMD", "clickhouse-client", "--query", "SELECT 1"]),
            }
    for name in where.nats:
        services[name] = {
            "image": _image("NATS_IMAGE", images.nats),
            "hostname": name,
            "command": ["--config", "/etc/nats/nats.conf"],
            "environment": {"NATS_NAME": name},
            "volumes": ["./nats/nats.conf:/etc/nats/nats.conf:ro", f"{name}-data:/data"],
            "networks": _backend(at[name]),
            "healthcheck": _check(
                ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8222/healthz"], "5s"
            ),
        }
    lenshouse = _image("LENSHOUSE_IMAGE", images.lenshouse)
    storage = [*where.keepers, *(h for shard in where.clickhouse for h in shard), *where.nats]
    for role, count in (
        ("loader", topo.loaders),
        ("gateway", topo.gateways),
        ("lens", topo.lenses),
    ):
        for k in range(1, count + 1):
            name = f"{_PREFIX[role]}{k}"
            svc = {
                "image": lenshouse,
                "hostname": name,
                "command": role_args(role, topo, where, member=name),
                # Gateways never reach ClickHouse: no credentials for them.
                "environment": {
                    "gateway": admin,
                    "lens": {"LENSHOUSE_CLICKHOUSE_USER": CH_USER, **password, **admin},
                    "loader": {"LENSHOUSE_CLICKHOUSE_USER": CH_USER, **password},
                }[role],
                "networks": ["backend"],
                # Loaders make the tables and the log's streams: the rest wait for one.
                "depends_on": _healthy(storage if role == "loader" else [*storage, "loader1"]),
                "healthcheck": _check(_http_check(ROLE_PORTS[role])),
                "restart": "unless-stopped",
            }
            if role in HOST_PORTS:
                svc["networks"] = ["backend", "edge"]
                svc["ports"] = [f"127.0.0.1:{HOST_PORTS[role] + k - 1}:{ROLE_PORTS[role]}"]
            services[name] = svc
    gateways = ",".join(
        f"http://gw{k}:{ROLE_PORTS['gateway']}" for k in range(1, topo.gateways + 1)
    )
    ready = [f"gw{k}" for k in range(1, topo.gateways + 1)] + [
        f"lens{k}" for k in range(1, topo.lenses + 1)
    ]
    services["generator"] = {
        "image": lenshouse,
        "profiles": ["jobs"],
        "command": [
            "generate",
            "--url",
            gateways,
            "--sensors",
            "${GENERATOR_SENSORS:-100}",
            "--duration",
            "${GENERATOR_DURATION:-60s}",
        ],
        "environment": operator,
        "networks": ["backend"],
        "depends_on": _healthy(ready),
    }
    services["scenario"] = {
        "image": lenshouse,
        "profiles": ["jobs"],
        # replay, crash or late: each runs a server process of its own in the container.
        "command": ["scenario", "${SCENARIO:-replay}"],
        "networks": ["backend"],
    }
    services["load"] = {
        "image": lenshouse,
        "profiles": ["jobs"],
        "command": [
            "load",
            "--url",
            f"http://lens1:{ROLE_PORTS['lens']}",
            "--users",
            "${LOAD_USERS:-20}",
            "--duration",
            "${LOAD_DURATION:-60}",
            "--sensors",
            "1-${GENERATOR_SENSORS:-100}",
        ],
        "environment": operator,
        "networks": ["backend"],
        "depends_on": _healthy(ready),
    }
    volumes = {}
    for name in services:
        for v in services[name].get("volumes", []):
            if not v.startswith("./"):
                volumes[v.split(":")[0]] = {}
    return {
        "services": services,
        # Nothing inside reaches out; only the edge network carries the published ports.
        "networks": {
            "backend": {
                "internal": True,
                "ipam": {
                    "config": [
                        {"subnet": f"{BACKEND_NET}.0/24", "ip_range": f"{BACKEND_NET}.128/25"}
                    ]
                },
            },
            "edge": {},
        },
        "volumes": volumes,
    }
