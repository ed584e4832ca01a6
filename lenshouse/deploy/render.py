"""``lenshouse deploy render``: every deployment file from the topologies, and
the check that the files in a checkout are what the topologies render."""

from __future__ import annotations

from pathlib import Path

import yaml

from lenshouse.deploy import compose, kubernetes
from lenshouse.deploy.clickhouse import cluster_xml, users_xml
from lenshouse.deploy.nats import nats_conf
from lenshouse.deploy.topology import Topology

# The topologies the files are rendered for: compose and the prod overlay run
# what ``lenshouse cluster up`` runs; dev is the smallest whole cluster.
FULL = Topology()
DEV = Topology(shards=1, replicas=1, keepers=1, nats=1, gateways=1, loaders=1, lenses=1)
# A month of 1000 sensors × 1 kHz is ~2.6e12 points, ~19 TB at 7.3 bytes a
# point: ~9.5 TB on each replica of two shards.
PROD_STORAGE, DEV_STORAGE = "12Ti", "20Gi"

HEADER = "# Rendered by `lenshouse deploy render` from the cluster's topology; do not edit.\n"


def _yaml(docs: list[dict] | dict) -> str:
    if isinstance(docs, dict):
        docs = [docs]
    body = "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)
    return HEADER + body


def files() -> dict[str, str]:
    """Relative path → content of every rendered file."""
    out: dict[str, str] = {}
    where = compose.addresses(FULL)
    out["compose/docker-compose.yml"] = _yaml(compose.compose(FULL))
    out["compose/clickhouse/cluster.xml"] = cluster_xml(where)
    out["compose/clickhouse/users.xml"] = users_xml()
    out["compose/nats/nats.conf"] = nats_conf(where)
    base = kubernetes.base()
    for name, docs in base.items():
        out[f"k8s/base/{name}"] = _yaml(docs)
    out["k8s/base/kustomization.yaml"] = _yaml(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": list(base),
        }
    )
    for name, topo, storage in (("dev", DEV, DEV_STORAGE), ("prod", FULL, PROD_STORAGE)):
        o = kubernetes.overlay(topo, f"lenshouse-{name}" if name == "dev" else "lenshouse", storage)
        for fname, docs in o["extra"].items():
            out[f"k8s/overlays/{name}/{fname}"] = _yaml(docs)
        for fname, text in o["files"].items():
            out[f"k8s/overlays/{name}/{fname}"] = text
        out[f"k8s/overlays/{name}/kustomization.yaml"] = _yaml(o["kustomization"])
    out["k8s/jobs/jobs.yaml"] = _yaml(kubernetes.jobs(kubernetes.Images().lenshouse))
    out["k8s/jobs/kustomization.yaml"] = _yaml(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["jobs.yaml"],
        }
    )
    return out


def write(out: Path) -> list[Path]:
    written = []
    for rel, text in files().items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def stale(out: Path) -> list[str]:
    """Rendered files that are missing from ``out`` or differ there."""
    return [
        rel
        for rel, text in files().items()
        if not (out / rel).exists() or (out / rel).read_text() != text
    ]
