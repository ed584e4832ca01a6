"""The deployment files: the checkout holds what the topologies render; the
Kubernetes overlays build with kustomize and pass the Kubernetes schemas
strictly; and their parts refer to each other correctly (selectors, service
names, ports, config keys, shard layout)."""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lenshouse.deploy import compose, kubernetes, render
from lenshouse.deploy.spec import CH_PORTS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# kubectl's own version on this machine, and the newest the schemas know.
K8S_VERSIONS = ("1.32.0", "1.37.0")


def test_the_checkout_holds_what_the_topologies_render() -> None:
    assert render.stale(DEPLOY) == [], "run `lenshouse deploy render`"


def test_render_check_reports_a_hand_edited_file(tmp_path: Path) -> None:
    render.write(tmp_path)
    assert render.stale(tmp_path) == []
    edited = tmp_path / "k8s/base/roles.yaml"
    edited.write_text(edited.read_text().replace("replicas: 2", "replicas: 5", 1))
    assert render.stale(tmp_path) == ["k8s/base/roles.yaml"]


def _kustomize(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=["overlays/dev", "overlays/prod", "jobs"])
def built(request) -> tuple[str, list[dict]]:
    return request.param, _kustomize(request.param)


def test_every_document_passes_the_kubernetes_schemas_strictly(built) -> None:
    import kubernetes_validate

    _, docs = built
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    import kubernetes_validate

    doc = next(d for d in _kustomize("overlays/dev") if d["kind"] == "StatefulSet")
    bad = copy.deepcopy(doc)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _by_name(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _kind(docs, kind)}


def _workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(w: dict) -> dict:
    return w["spec"]["template"]["metadata"]["labels"]


def _containers(w: dict) -> list[dict]:
    return w["spec"]["template"]["spec"]["containers"]


def test_selectors_services_and_references_agree(built) -> None:
    _, docs = built
    workloads = _workloads(docs)
    for w in workloads:
        if w["kind"] != "Job":
            assert _matches(w["spec"]["selector"]["matchLabels"], _pod_labels(w)), w["metadata"]
    services = _by_name(docs, "Service")
    for svc in services.values():
        targets = [w for w in workloads if _matches(svc["spec"]["selector"], _pod_labels(w))]
        assert targets, f"service {svc['metadata']['name']} selects no pods"
        ports = {p["containerPort"] for w in targets for c in _containers(w) for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)
    for sts in _kind(docs, "StatefulSet"):
        svc = services[sts["spec"]["serviceName"]]
        assert svc["spec"]["clusterIP"] == "None"
        assert _matches(svc["spec"]["selector"], _pod_labels(sts))
    configmaps = {n: d.get("data", {}) for n, d in _by_name(docs, "ConfigMap").items()}
    secrets = {n: d.get("data", {}) for n, d in _by_name(docs, "Secret").items()}
    if not secrets:  # the Jobs are applied beside an overlay and use its fixed-name Secret
        prod = _by_name(_kustomize("overlays/prod"), "Secret")
        secrets = {n: d.get("data", {}) for n, d in prod.items() if n == kubernetes.AUTH_SECRET}
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, v
        for c in spec["containers"]:
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps, ref
            for env in c.get("env", []):
                src = env.get("valueFrom", {})
                if "configMapKeyRef" in src:
                    assert (
                        src["configMapKeyRef"]["key"] in configmaps[src["configMapKeyRef"]["name"]]
                    )
                if "secretKeyRef" in src:
                    assert src["secretKeyRef"]["key"] in secrets[src["secretKeyRef"]["name"]]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in _kind(docs, kind):
            sel = d["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]
            sel = sel.get("matchLabels", {})
            assert not sel or any(_matches(sel, _pod_labels(w)) for w in workloads), d["metadata"]
    for hpa in _kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in _by_name(docs, "Deployment")


def _replicas(docs: list[dict], component: str) -> int:
    return sum(
        w["spec"]["replicas"]
        for w in _kind(docs, "StatefulSet")
        if _pod_labels(w)["app.kubernetes.io/component"] == component
    )


@pytest.mark.parametrize(
    "overlay, shards, replicas, keepers, nats",
    [("overlays/prod", 2, 2, 3, 3), ("overlays/dev", 1, 1, 1, 1)],
)
def test_the_overlay_runs_its_topology(overlay, shards, replicas, keepers, nats) -> None:
    docs = _kustomize(overlay)
    ch = [w for w in _kind(docs, "StatefulSet") if w["metadata"]["name"].startswith("ch-s")]
    assert len(ch) == shards and all(w["spec"]["replicas"] == replicas for w in ch)
    assert _replicas(docs, "keeper") == keepers and _replicas(docs, "nats") == nats
    topology = next(d for d in _kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(
        "lenshouse-topology"))["data"]  # fmt: skip
    # Every ClickHouse address the roles are given is a pod of its shard's StatefulSet,
    # and the cluster's remote_servers list exactly those, shard by shard.
    hosts = [a.rsplit(":", 1)[0] for a in topology["LENSHOUSE_CLICKHOUSE"].split(",")]
    pods = [f"{w['metadata']['name']}-{k}.{w['spec']['serviceName']}"
            for w in ch for k in range(w["spec"]["replicas"])]  # fmt: skip
    assert sorted(hosts) == sorted(pods)
    xml = next(d for d in _kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(
        "clickhouse-config"))["data"]["cluster.xml"]  # fmt: skip
    servers = xml.split("<zookeeper>")[0]
    shard_hosts = [re.findall(r"<host>([^<]+)</host>", s) for s in servers.split("<shard>")[1:]]
    assert shard_hosts == [[p for p in pods if p.startswith(f"ch-s{s}-")]
                           for s in range(1, shards + 1)]  # fmt: skip
    for w in ch:
        shard = w["metadata"]["labels"]["lenshouse.io/shard"]
        env = {e["name"]: e for e in _containers(w)[0]["env"]}
        assert env["CH_SHARD"]["value"] == shard
        anti = w["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        term = anti["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["labelSelector"]["matchLabels"]["lenshouse.io/shard"] == shard
        assert term["topologyKey"] == "kubernetes.io/hostname"
    zk = topology["ZOO_SERVERS"].split()
    assert [s.split("=")[0] for s in zk] == [f"server.{k}" for k in range(1, keepers + 1)]
    assert len(topology["LENSHOUSE_NATS"].split(",")) == nats
    assert int(topology["LENSHOUSE_LOG_REPLICAS"]) == min(3, nats)


def test_maintenance_runs_daily_one_at_a_time_against_the_cluster() -> None:
    (cron,) = _by_name(_kustomize("overlays/prod"), "CronJob").values()
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "maintain"
    (source,) = container["envFrom"]  # the cluster's addresses (kustomize adds a hash)
    assert source["configMapRef"]["name"].startswith("lenshouse-topology")


def test_only_the_roles_that_need_them_reach_clickhouse_keeper_and_log() -> None:
    docs = _kustomize("overlays/prod")
    policies = _by_name(docs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}

    def sources(policy: str, port: int) -> set[str]:
        out = set()
        for rule in policies[policy]["spec"]["ingress"]:
            if any(p["port"] == port for p in rule["ports"]):
                for f in rule.get("from", [{"podSelector": {"matchLabels": {"*": "*"}}}]):
                    out.add(f["podSelector"]["matchLabels"].get("app.kubernetes.io/component", "*"))
        return out

    # The maintenance CronJob drops expired partitions.
    assert sources("clickhouse", CH_PORTS["tcp"]) == {"loader", "lens", "maintain", "clickhouse"}
    assert sources("clickhouse", CH_PORTS["interserver"]) == {"clickhouse"}
    # Gateways read the tenants' tokens from the keeper.
    assert sources("keeper", 2181) == {"clickhouse", "loader", "lens", "gateway", "keeper"}
    # Lens servers subscribe to the loads' announcements (their heads).
    assert sources("nats", 4222) == {"gateway", "loader", "lens", "nats"}
    assert "gateway" not in sources("clickhouse", CH_PORTS["tcp"])


def test_compose_publishes_only_on_loopback_and_keeps_storage_internal() -> None:
    doc = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())
    backend = doc["networks"]["backend"]
    assert backend["internal"] is True
    (pool,) = backend["ipam"]["config"]
    net = compose.DEFAULT_BACKEND_NET
    subnet = ipaddress.ip_network(pool["subnet"].replace(compose.BACKEND_NET, net))
    dynamic = ipaddress.ip_network(pool["ip_range"].replace(compose.BACKEND_NET, net))
    pinned = []
    for name, svc in doc["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for dep in svc.get("depends_on", {}):
            assert dep in doc["services"], (name, dep)
        if name.startswith(("ch-", "zk", "nats")):
            # Storage keeps one address for good, outside the range others draw from.
            assert list(svc["networks"]) == ["backend"] and "ports" not in svc
            at = svc["networks"]["backend"]["ipv4_address"].replace(compose.BACKEND_NET, net)
            address = ipaddress.ip_address(at)
            assert address in subnet and address not in dynamic, (name, address)
            pinned.append(address)
    assert len(set(pinned)) == len(pinned) == 4 + 3 + 3
    ch = [n for n in doc["services"] if n.startswith("ch-")]
    xml = (DEPLOY / "compose/clickhouse/cluster.xml").read_text().split("<zookeeper>")[0]
    assert sorted(re.findall(r"<host>([^<]+)</host>", xml)) == sorted(ch) and len(ch) == 4
