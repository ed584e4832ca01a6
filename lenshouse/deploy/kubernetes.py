"""The Kubernetes manifests: a kustomize base and one overlay per topology.

The base holds every workload once: a StatefulSet per ClickHouse shard (shard
1 here; an overlay adds the others), ZooKeeper and NATS as StatefulSets with
headless Services, loaders as a StatefulSet (stable member names; partitions
are leased in the keeper, so any count works), gateways and lens servers as
Deployments with autoscalers, disruption budgets, probes, and network
policies that let only the roles that need them reach ClickHouse, the keeper
and the log. What a topology changes (how many of each, the addresses, the
ClickHouse and NATS configuration, volume sizes) is the overlay's.
"""

from __future__ import annotations

from lenshouse.deploy.clickhouse import cluster_xml, users_xml
from lenshouse.deploy.nats import nats_conf
from lenshouse.deploy.spec import (
    CH_PORTS,
    CH_USER,
    CLUSTER,
    DATABASE,
    NATS_PORTS,
    PASSWORD_ENV,
    ROLE_PORTS,
    ZK_PORTS,
    Addresses,
    Images,
)
from lenshouse.deploy.topology import Topology
from lenshouse.tenancy.client import TOKEN_ENV
from lenshouse.tenancy.registry import ADMIN_TOKEN_ENV

APP = "lenshouse"
COMPONENT = "app.kubernetes.io/component"
SHARD = "lenshouse.io/shard"
SCENARIOS = ("replay", "crash", "late")  # those that run within one container
TOPOLOGY_CM = "lenshouse-topology"  # addresses, as the roles' environment
SECRET = "lenshouse-clickhouse"
AUTH_SECRET = "lenshouse-auth"  # key admin-token: the roles' admin token


def addresses(topo: Topology) -> Addresses:
    return Addresses(
        clickhouse=[
            [f"ch-s{s}-{r}.ch-s{s}" for r in range(topo.replicas)]
            for s in range(1, topo.shards + 1)
        ],
        keepers=[f"zk-{k}.zk" for k in range(topo.keepers)],
        nats=[f"nats-{k}.nats" for k in range(topo.nats)],
    )


def _labels(component: str, **more: str) -> dict:
    return {"app.kubernetes.io/name": APP, COMPONENT: component, **more}


def _meta(name: str, component: str, **more: str) -> dict:
    return {"name": name, "labels": _labels(component, **more)}


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


# Sized from the measured write path: at 1M points/s ClickHouse took ~54 CPU-s
# per minute over four servers, loaders ~22, ZooKeeper ~22, gateways ~9 and NATS
# ~9 (docs/deploy.md); requests leave room for merges and lens bursts.
RESOURCES = {
    "clickhouse": _resources("2", "8Gi", "4", "16Gi"),
    "keeper": _resources("500m", "1Gi", "1", "2Gi"),
    "nats": _resources("1", "2Gi", "2", "4Gi"),
    "gateway": _resources("1", "1Gi", "2", "2Gi"),
    "loader": _resources("1", "2Gi", "2", "4Gi"),
    "lens": _resources("1", "2Gi", "2", "4Gi"),
}


def _headless(name: str, component: str, ports: dict[str, int], **sel: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, component, **sel),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # peers must find each other to form a quorum
            "selector": _labels(component, **sel),
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports.items()],
        },
    }


def _service(name: str, component: str, port: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, component),
        "spec": {
            "selector": _labels(component),
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }


def _pdb(name: str, component: str, **sel: str) -> dict:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, component, **sel),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(component, **sel)}},
    }


def _anti_affinity(component: str, required: bool, **sel: str) -> dict:
    term = {
        "labelSelector": {"matchLabels": _labels(component, **sel)},
        "topologyKey": "kubernetes.io/hostname",
    }
    if required:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


def _claim(size: str) -> dict:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def _http_probes(ready: str, alive: str, port: int, delay: int, failures: int = 3) -> dict:
    return {
        "readinessProbe": {"httpGet": {"path": ready, "port": port}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": alive, "port": port},
            "initialDelaySeconds": delay,
            "periodSeconds": 10,
            "failureThreshold": failures,
        },
    }


def _ports(ports: dict[str, int]) -> list[dict]:
    return [{"name": n, "containerPort": p} for n, p in ports.items()]


def _pod_name_env(name: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def _secret_env(name: str, key: str, secret: str = SECRET) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _admin_env(name: str = ADMIN_TOKEN_ENV) -> dict:
    return _secret_env(name, "admin-token", AUTH_SECRET)


def clickhouse_shard(shard: int, replicas: int, image: str, storage: str) -> list[dict]:
    """A shard: its StatefulSet (one pod per replica, never two on a node), its
    headless Service (the pods' DNS names) and its disruption budget."""
    name, sel = f"ch-s{shard}", {SHARD: str(shard)}
    container = {
        "name": "clickhouse",
        "image": image,
        "env": [
            _pod_name_env("POD_NAME"),
            {"name": "CH_SHARD", "value": str(shard)},
            {"name": "CH_REPLICA", "value": "$(POD_NAME)"},
            {"name": "CH_INTERSERVER_HOST", "value": f"$(POD_NAME).{name}"},
            _secret_env(PASSWORD_ENV, "password"),
        ],
        "ports": _ports(CH_PORTS),
        "resources": RESOURCES["clickhouse"],
        **_http_probes("/ping", "/ping", CH_PORTS["http"], delay=30, failures=6),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/clickhouse"},
            {
                "name": "config",
                "mountPath": "/etc/clickhouse-server/config.d/lenshouse.xml",
                "subPath": "cluster.xml",
            },
            {
                "name": "config",
                "mountPath": "/etc/clickhouse-server/users.d/lenshouse.xml",
                "subPath": "users.xml",
            },
        ],
    }
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, "clickhouse", **sel),
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _labels("clickhouse", **sel)},
            "template": {
                "metadata": {"labels": _labels("clickhouse", **sel)},
                "spec": {
                    "affinity": _anti_affinity("clickhouse", True, **sel),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": "clickhouse-config"}}],
                },
            },
            "volumeClaimTemplates": [_claim(storage)],
        },
    }
    return [_headless(name, "clickhouse", CH_PORTS, **sel), sts, _pdb(name, "clickhouse", **sel)]


def keeper(image: str, replicas: int) -> list[dict]:
    # The image reads its id from ZOO_MY_ID: the pod's ordinal + 1.
    start = (
        "export ZOO_MY_ID=$((${HOSTNAME##*-} + 1)) && "
        "exec /docker-entrypoint.sh zkServer.sh start-foreground"
    )
    container = {
        "name": "zookeeper",
        "image": image,
        "command": ["bash", "-c", start],
        "env": [
            {
                "name": "ZOO_SERVERS",
                "valueFrom": {"configMapKeyRef": {"name": TOPOLOGY_CM, "key": "ZOO_SERVERS"}},
            },
            {"name": "ZOO_TICK_TIME", "value": "500"},
            {"name": "ZOO_4LW_COMMANDS_WHITELIST", "value": "ruok,srvr,mntr"},
        ],
        "ports": _ports(ZK_PORTS),
        "resources": RESOURCES["keeper"],
        "readinessProbe": {"exec": {"command": ["zkServer.sh", "status"]}, "periodSeconds": 5},
        "livenessProbe": {
            "tcpSocket": {"port": ZK_PORTS["client"]},
            "initialDelaySeconds": 20,
            "periodSeconds": 10,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return [
        _headless("zk", "keeper", ZK_PORTS),
        _statefulset("zk", "keeper", replicas, container, "10Gi"),
        _pdb("zk", "keeper"),
    ]


def log(image: str, replicas: int) -> list[dict]:
    container = {
        "name": "nats",
        "image": image,
        "args": ["--config", "/etc/nats/nats.conf"],
        "env": [_pod_name_env("NATS_NAME")],
        "ports": _ports(NATS_PORTS),
        "resources": RESOURCES["nats"],
        **_http_probes(
            "/healthz", "/healthz?js-enabled-only=true", NATS_PORTS["monitor"], delay=10
        ),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "config", "mountPath": "/etc/nats"},
        ],
    }
    sts = _statefulset("nats", "nats", replicas, container, "20Gi")
    sts["spec"]["template"]["spec"]["volumes"] = [
        {"name": "config", "configMap": {"name": "nats-config"}}
    ]
    return [_headless("nats", "nats", NATS_PORTS), sts, _pdb("nats", "nats")]


def _statefulset(name: str, component: str, replicas: int, container: dict, size: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, component),
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _labels(component)},
            "template": {
                "metadata": {"labels": _labels(component)},
                "spec": {
                    "affinity": _anti_affinity(component, False),
                    "containers": [container],
                },
            },
            "volumeClaimTemplates": [_claim(size)],
        },
    }


def _role_container(role: str, image: str, args: list[str]) -> dict:
    port = ROLE_PORTS[role]
    env = [
        {"name": "LENSHOUSE_CLICKHOUSE_USER", "value": CH_USER},
        _secret_env(PASSWORD_ENV, "password"),
    ]
    if role == "loader":
        env.append(_pod_name_env("LENSHOUSE_MEMBER"))
    if role == "lens":
        env.append(_admin_env())
    return {
        "name": role,
        "image": image,
        "args": [*args, "--host", "0.0.0.0", "--port", str(port)],
        "envFrom": [{"configMapRef": {"name": TOPOLOGY_CM}}],
        # Gateways never reach ClickHouse: only the admin token for them.
        "env": [_admin_env()] if role == "gateway" else env,
        "ports": [{"name": "http", "containerPort": port}],
        "resources": RESOURCES[role],
        # Ready only with its dependencies; alive as long as it answers at all
        # (a restart would not bring NATS or ClickHouse back sooner).
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 5},
        "livenessProbe": {
            "tcpSocket": {"port": port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
        },
    }


_STORAGE_ARGS = ["--cluster", CLUSTER, "--database", DATABASE]
_ROLE_ARGS = {
    "gateway": ["gateway", "--database", DATABASE],
    "loader": ["loader", *_STORAGE_ARGS],
    "lens": ["lens-server", *_STORAGE_ARGS],
}


def roles(image: str) -> list[dict]:
    out: list[dict] = []
    for role, name in (("gateway", "gateway"), ("lens", "lens")):
        out += [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": _meta(name, role),
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": _labels(role)},
                    "template": {
                        "metadata": {"labels": _labels(role)},
                        "spec": {
                            "affinity": _anti_affinity(role, False),
                            "containers": [_role_container(role, image, _ROLE_ARGS[role])],
                        },
                    },
                },
            },
            _service(name, role, ROLE_PORTS[role]),
            _pdb(name, role),
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": _meta(name, role),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": 2,
                    "maxReplicas": 8,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": 70},
                            },
                        }
                    ],
                },
            },
        ]
    args = _ROLE_ARGS["loader"]
    loader = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta("loader", "loader"),
        "spec": {
            "serviceName": "loader",
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _labels("loader")},
            "template": {
                "metadata": {"labels": _labels("loader")},
                "spec": {
                    "affinity": _anti_affinity("loader", False),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [_role_container("loader", image, args)],
                },
            },
        },
    }
    out += [_headless("loader", "loader", {"http": ROLE_PORTS["loader"]}), loader]
    out.append(_pdb("loader", "loader"))
    return out


def _from(*components: str) -> list[dict]:
    return [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": APP, COMPONENT: c}}}
        for c in components
    ]


def _policy(name: str, component: str, rules: list[tuple[list[str], list[int]]]) -> dict:
    ingress = []
    for sources, ports in rules:
        rule: dict = {"ports": [{"protocol": "TCP", "port": p} for p in ports]}
        if sources:
            rule["from"] = _from(*sources)
        ingress.append(rule)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, component),
        "spec": {
            "podSelector": {"matchLabels": _labels(component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def network_policies() -> list[dict]:
    """Deny by default; then who may reach what (an empty source list: anyone)."""
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny-ingress", "labels": {"app.kubernetes.io/name": APP}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    ch, zk, nats = CH_PORTS, ZK_PORTS, NATS_PORTS
    return [
        deny,
        _policy(
            "clickhouse",
            "clickhouse",
            [
                (["loader", "lens", "maintain", "clickhouse"], [ch["tcp"], ch["http"]]),
                (["clickhouse"], [ch["interserver"]]),
            ],
        ),
        _policy(
            "keeper",
            "keeper",
            [
                (["clickhouse", "loader", "lens", "gateway"], [zk["client"]]),
                (["keeper"], [zk["client"], zk["peer"], zk["election"]]),
            ],
        ),
        _policy(
            "nats",
            "nats",
            [
                (["gateway", "loader", "lens"], [nats["client"]]),
                (["nats"], [nats["client"], nats["cluster"]]),
            ],
        ),
        _policy("gateway", "gateway", [([], [ROLE_PORTS["gateway"]])]),
        _policy("lens", "lens", [([], [ROLE_PORTS["lens"]])]),
        _policy("loader", "loader", [([], [ROLE_PORTS["loader"]])]),
    ]


def jobs(image: str, sensors: int = 100) -> list[dict]:
    """One-shot Jobs: the generator (into the gateways), the lens load, and the
    image's self-contained fault scenarios (each runs a server process of its
    own inside the pod: replay, crash, late)."""

    def job(name: str, component: str, args: list[str]) -> dict:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(name, component),
            "spec": {
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 3600,
                "template": {
                    "metadata": {"labels": _labels(component)},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            # The operator's token: they write and read as any tenant.
                            {
                                "name": name,
                                "image": image,
                                "args": args,
                                "env": [_admin_env(TOKEN_ENV)],
                            }
                        ],
                    },
                },
            },
        }

    gateway = f"http://gateway:{ROLE_PORTS['gateway']}"
    lens = f"http://lens:{ROLE_PORTS['lens']}"
    return [
        job(
            "generator",
            "generator",
            ["generate", "--url", gateway, "--sensors", str(sensors), "--duration", "10m"],
        ),
        job(
            "load",
            "load",
            [
                "load",
                "--url",
                lens,
                "--users",
                "20",
                "--duration",
                "600",
                "--sensors",
                f"1-{sensors}",
            ],
        ),
        *(job(f"scenario-{name}", "scenario", ["scenario", name]) for name in SCENARIOS),
    ]


def maintenance(image: str, schedule: str = "17 3 * * *") -> list[dict]:
    """The daily retention run (``lenshouse maintain``) as a CronJob: one at a
    time, a missed run made up within the hour."""
    container = {
        "name": "maintain",
        "image": image,
        "args": ["maintain", *_STORAGE_ARGS],
        "envFrom": [{"configMapRef": {"name": TOPOLOGY_CM}}],
        "env": [
            {"name": "LENSHOUSE_CLICKHOUSE_USER", "value": CH_USER},
            _secret_env(PASSWORD_ENV, "password"),
        ],
        "resources": _resources("100m", "256Mi", "1", "512Mi"),
    }
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": _meta("maintain", "maintain"),
            "spec": {
                "schedule": schedule,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 3,
                        "template": {
                            "metadata": {"labels": _labels("maintain")},
                            "spec": {"restartPolicy": "OnFailure", "containers": [container]},
                        },
                    }
                },
            },
        }
    ]


def topology_env(topo: Topology) -> dict[str, str]:
    where = addresses(topo)
    return {
        "LENSHOUSE_CLICKHOUSE": where.clickhouse_native(),
        "LENSHOUSE_KEEPER": where.keeper_clients(),
        "LENSHOUSE_NATS": where.nats_urls(),
        "LENSHOUSE_LOG_REPLICAS": str(min(3, topo.nats)),
        "ZOO_SERVERS": where.zoo_servers(),
    }


def base(images: Images = Images()) -> dict[str, list[dict]]:
    """The base's files: name → documents (shard 1 of ClickHouse, three of
    each quorum, two of each role; overlays change the counts)."""
    return {
        "clickhouse.yaml": clickhouse_shard(1, 2, images.clickhouse, "100Gi"),
        "keeper.yaml": keeper(images.keeper, 3),
        "nats.yaml": log(images.nats, 3),
        "roles.yaml": roles(images.lenshouse),
        "maintenance.yaml": maintenance(images.lenshouse),
        "network-policies.yaml": network_policies(),
    }


def overlay(topo: Topology, namespace: str, storage: str, images: Images = Images()) -> dict:
    """An overlay for ``topo``: the files it adds and its kustomization."""
    extra: dict[str, list[dict]] = {
        "namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        ]
    }
    for s in range(2, topo.shards + 1):
        extra[f"clickhouse-s{s}.yaml"] = clickhouse_shard(
            s, topo.replicas, images.clickhouse, storage
        )
    replicas = [
        {"name": "ch-s1", "count": topo.replicas},
        {"name": "zk", "count": topo.keepers},
        {"name": "nats", "count": topo.nats},
        {"name": "loader", "count": topo.loaders},
        {"name": "gateway", "count": topo.gateways},
        {"name": "lens", "count": topo.lenses},
    ]
    where = addresses(topo)
    patches = [
        {
            "target": {"kind": "StatefulSet", "name": "ch-s1"},
            "patch": "- op: replace\n  path: /spec/volumeClaimTemplates/0/spec/resources/"
            f"requests/storage\n  value: {storage}\n",
        },
    ]
    for role, count in (("gateway", topo.gateways), ("lens", topo.lenses)):
        patches.append(
            {
                "target": {"kind": "HorizontalPodAutoscaler", "name": role},
                "patch": f"- op: replace\n  path: /spec/minReplicas\n  value: {count}\n",
            }
        )
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": ["../../base", *extra],
        "replicas": replicas,
        "configMapGenerator": [
            {"name": TOPOLOGY_CM, "literals": [f"{k}={v}" for k, v in topology_env(topo).items()]},
            {"name": "clickhouse-config", "files": ["cluster.xml", "users.xml"]},
            {"name": "nats-config", "files": ["nats.conf"]},
        ],
        # Replace before use: kubectl create secret generic lenshouse-clickhouse
        # --from-literal=password=… (docs/deploy.md).
        "secretGenerator": [
            {"name": SECRET, "literals": ["password=change-me"]},
            # A fixed name: the Jobs (applied on their own) refer to it. The
            # roles refuse a token this short: set a real one (docs/deploy.md).
            {
                "name": AUTH_SECRET,
                "literals": ["admin-token=change-me"],
                "options": {"disableNameSuffixHash": True},
            },
        ],
        "patches": patches,
    }
    files = {
        "cluster.xml": cluster_xml(where),
        "users.xml": users_xml(),
        "nats.conf": nats_conf(where),
    }
    return {"extra": extra, "files": files, "kustomization": kustomization}
