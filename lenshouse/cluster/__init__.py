"""A real local ClickHouse cluster (Debian's ClickHouse 18.16 + a ZooKeeper ensemble)
on 127.0.0.1, for tests and the replicated backend: ``up``, ``stop``, ``start``,
``down``, ``status`` over one directory, described by its ``cluster.json``."""

from lenshouse.cluster.probes import query
from lenshouse.cluster.processes import down, start, status, stop, up
from lenshouse.cluster.record import (
    ClusterError,
    QueryError,
    alive,
    clickhouse_hosts,
    keeper_hosts,
    load,
    node,
    shard_replicas,
)
from lenshouse.deploy.topology import Topology

__all__ = [
    "ClusterError",
    "QueryError",
    "Topology",
    "alive",
    "clickhouse_hosts",
    "down",
    "keeper_hosts",
    "load",
    "node",
    "query",
    "shard_replicas",
    "start",
    "status",
    "stop",
    "up",
]
