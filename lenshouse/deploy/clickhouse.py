"""The ClickHouse configuration a deployment mounts into ``config.d`` and
``users.d``: one file for every server of the cluster. What differs per server
(its shard, its replica name, the host its replicas fetch parts from) comes from
the environment (``from_env``, read by 18.16 and current servers alike)."""

from __future__ import annotations

from lenshouse.deploy.server_config import DDL_PATH, remote_servers_xml, zookeeper_xml
from lenshouse.deploy.spec import CH_PORTS, CH_USER, CLUSTER, PASSWORD_ENV, ZK_PORTS, Addresses

HEADER = "<!-- Rendered by `lenshouse deploy render` from the cluster's topology. -->"


def cluster_xml(where: Addresses) -> str:
    shards = [[(h, CH_PORTS["tcp"]) for h in shard] for shard in where.clickhouse]
    auth = f'<user>{CH_USER}</user><password from_env="{PASSWORD_ENV}"/>'
    keepers = [(h, ZK_PORTS["client"]) for h in where.keepers]
    return f"""<?xml version="1.0"?>
{HEADER}
<yandex>
  <interserver_http_host from_env="CH_INTERSERVER_HOST"/>
  <interserver_http_port>{CH_PORTS["interserver"]}</interserver_http_port>
  {remote_servers_xml(CLUSTER, shards, auth)}
  {zookeeper_xml(keepers)}
  <macros>
    <cluster>{CLUSTER}</cluster>
    <shard from_env="CH_SHARD"/>
    <replica from_env="CH_REPLICA"/>
  </macros>
  <distributed_ddl><path>{DDL_PATH}</path></distributed_ddl>
</yandex>
"""


def users_xml() -> str:
    """lenshouse's own account (its password from a Secret, through the
    environment) with the settings cluster reads need; ``default`` is kept to
    the server's own host."""
    return f"""<?xml version="1.0"?>
{HEADER}
<yandex>
  <profiles>
    <lenshouse>
      <load_balancing>random</load_balancing>
      <connect_timeout_with_failover_ms>200</connect_timeout_with_failover_ms>
      <distributed_ddl_task_timeout>60</distributed_ddl_task_timeout>
      <poll_interval>1</poll_interval>
    </lenshouse>
  </profiles>
  <users>
    <{CH_USER}>
      <password from_env="{PASSWORD_ENV}"/>
      <networks><ip>::/0</ip></networks>
      <profile>lenshouse</profile>
      <quota>default</quota>
    </{CH_USER}>
    <default>
      <networks replace="replace"><ip>::1</ip><ip>127.0.0.1</ip></networks>
    </default>
  </users>
</yandex>
"""
