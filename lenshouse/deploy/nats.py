"""The NATS JetStream configuration every log server of a deployment reads;
its name comes from the environment (``$NATS_NAME``)."""

from __future__ import annotations

from lenshouse.deploy.spec import NATS_PORTS, Addresses


def nats_conf(where: Addresses, store_dir: str = "/data") -> str:
    routes = ", ".join(f"nats-route://{h}:{NATS_PORTS['cluster']}" for h in where.nats)
    cluster = (
        f"cluster {{\n  name: lenshouse-log\n  listen: 0.0.0.0:{NATS_PORTS['cluster']}\n"
        f"  routes: [{routes}]\n}}\n"
        if len(where.nats) > 1
        else ""
    )
    return (
        "# Rendered by `lenshouse deploy render` from the cluster's topology.\n"
        "server_name: $NATS_NAME\n"
        f"listen: 0.0.0.0:{NATS_PORTS['client']}\n"
        f"http: 0.0.0.0:{NATS_PORTS['monitor']}\n"
        "max_payload: 8MB  # the gateways split batches below this\n"
        f'jetstream {{\n  store_dir: "{store_dir}"\n}}\n' + cluster
    )
