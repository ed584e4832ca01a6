"""Configuration files for each node: ClickHouse 18.16 server XML and users XML,
ZooKeeper zoo.cfg, myid and log4j.properties."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from lenshouse.deploy.topology import NodeSpec, Topology

HOST = "127.0.0.1"
MiB = 1 << 20
# Four servers plus ZooKeeper and lenshouse share 24 GiB with the rest of the machine:
# caches are allocated on demand, and one query / all queries of a server are capped.
MARK_CACHE = 256 * MiB
UNCOMPRESSED_CACHE = 1024 * MiB
MAX_QUERY_MEMORY = 3 * 1024 * MiB
MAX_SERVER_QUERIES_MEMORY = 4 * 1024 * MiB
# ZooKeeper session: a killed server's ephemeral nodes go within seconds; a restarted
# one removes its own stale is_active node itself (same interserver host:port).
ZK_SESSION_MS = 6000
ZK_TICK_MS = 500
DDL_PATH = "/clickhouse/task_queue/ddl"


def remote_servers_xml(name: str, shards: list[list[tuple[str, int]]], auth: str = "") -> str:
    """The cluster in ``remote_servers``: each shard's replicas (host, native
    port); ``auth`` (user and password elements) is how servers reach each other."""
    out = []
    for replicas in shards:
        rs = "".join(
            f"<replica><host>{h}</host><port>{p}</port>{auth}</replica>" for h, p in replicas
        )
        out.append(f"<shard><internal_replication>true</internal_replication>{rs}</shard>")
    return f"<remote_servers><{escape(name)}>{''.join(out)}</{escape(name)}></remote_servers>"


def zookeeper_xml(keepers: list[tuple[str, int]]) -> str:
    nodes = "".join(
        f'<node index="{k}"><host>{h}</host><port>{p}</port></node>'
        for k, (h, p) in enumerate(keepers, 1)
    )
    return (
        f"<zookeeper>{nodes}<session_timeout_ms>{ZK_SESSION_MS}</session_timeout_ms>"
        "<operation_timeout_ms>5000</operation_timeout_ms></zookeeper>"
    )


def clickhouse_server_xml(topo: Topology, node: NodeSpec, root: Path) -> str:
    d = root / node.name
    shards = [
        [(HOST, n.ports["tcp"]) for n in topo.clickhouse() if n.shard == s]
        for s in range(1, topo.shards + 1)
    ]
    keepers = [(HOST, k.ports["client"]) for k in topo.keeper()]
    return f"""<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>{d}/log/clickhouse-server.log</log>
    <errorlog>{d}/log/clickhouse-server.err.log</errorlog>
    <size>100M</size>
    <count>3</count>
    <console>0</console>
  </logger>
  <listen_host>{HOST}</listen_host>
  <tcp_port>{node.ports["tcp"]}</tcp_port>
  <http_port>{node.ports["http"]}</http_port>
  <interserver_http_port>{node.ports["interserver"]}</interserver_http_port>
  <interserver_http_host>{HOST}</interserver_http_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>10</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>{MARK_CACHE}</mark_cache_size>
  <uncompressed_cache_size>{UNCOMPRESSED_CACHE}</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
  {remote_servers_xml(topo.name, shards)}
  {zookeeper_xml(keepers)}
  <macros>
    <cluster>{escape(topo.name)}</cluster>
    <shard>{node.shard}</shard>
    <replica>{node.name}</replica>
  </macros>
  <distributed_ddl>
    <path>{DDL_PATH}</path>
  </distributed_ddl>
  <query_log>
    <database>system</database>
    <table>query_log</table>
    <partition_by>toYYYYMM(event_date)</partition_by>
    <flush_interval_milliseconds>7500</flush_interval_milliseconds>
  </query_log>
  <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
  <max_session_timeout>3600</max_session_timeout>
  <default_session_timeout>60</default_session_timeout>
</yandex>
"""


def clickhouse_users_xml() -> str:
    return f"""<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <readonly>0</readonly>
      <max_memory_usage>{MAX_QUERY_MEMORY}</max_memory_usage>
      <max_memory_usage_for_all_queries>{MAX_SERVER_QUERIES_MEMORY}</max_memory_usage_for_all_queries>
      <load_balancing>random</load_balancing>
      <connect_timeout_with_failover_ms>200</connect_timeout_with_failover_ms>
      <distributed_ddl_task_timeout>60</distributed_ddl_task_timeout>
      <background_pool_size>8</background_pool_size>
      <!-- Idle connections (Distributed pools) notice a shutdown within this many
           seconds; the default 10 makes SIGTERM take ~10 s. -->
      <poll_interval>1</poll_interval>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>{HOST}</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""


def zoo_cfg(topo: Topology, node: NodeSpec, root: Path) -> str:
    lines = [
        f"tickTime={ZK_TICK_MS}",
        "initLimit=20",
        "syncLimit=4",
        f"dataDir={root / node.name / 'data'}",
        f"clientPort={node.ports['client']}",
        f"clientPortAddress={HOST}",
        "maxClientCnxns=200",
        "admin.enableServer=false",
        "4lw.commands.whitelist=*",
        # A restart after kill -9 may find a log without a snapshot; that is fine here.
        "snapshot.trust.empty=true",
        "autopurge.snapRetainCount=3",
        "autopurge.purgeInterval=1",
        "preAllocSize=4096",
    ]
    if topo.keepers > 1:
        lines += [
            f"server.{k.index}={HOST}:{k.ports['peer']}:{k.ports['election']}"
            for k in topo.keeper()
        ]
    return "\n".join(lines) + "\n"


def log4j_properties(node_dir: Path) -> str:
    return f"""log4j.rootLogger=INFO, FILE
log4j.appender.FILE=org.apache.log4j.RollingFileAppender
log4j.appender.FILE.File={node_dir}/log/zookeeper.log
log4j.appender.FILE.MaxFileSize=20MB
log4j.appender.FILE.MaxBackupIndex=2
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} [myid:%X{{myid}}] %-5p [%t] %c{{1}}: %m%n
"""


def nats_conf(topo: Topology, node: NodeSpec, root: Path) -> str:
    """A JetStream server of the log's cluster; payloads up to 8 MiB (the
    gateways split batches below that)."""
    routes = ", ".join(
        f"nats-route://{HOST}:{n.ports['cluster']}" for n in topo.log_servers() if n != node
    )
    d = root / node.name
    return (
        f"server_name: {node.name}\n"
        f"listen: {HOST}:{node.ports['client']}\n"
        f"http: {HOST}:{node.ports['monitor']}\n"
        "max_payload: 8MB\n"
        f'jetstream {{ store_dir: "{d / "data"}" }}\n'
        + (
            f"cluster {{ name: {topo.name}-log, listen: {HOST}:{node.ports['cluster']},"
            f" routes: [{routes}] }}\n"
            if topo.nats > 1
            else ""
        )
    )


def _write(path: Path, text: str) -> None:
    # Only on change: a running ClickHouse reloads its config when the file is touched.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_node_files(topo: Topology, node: NodeSpec, root: Path) -> Path:
    """Write the node's configuration under root/<node>/ (creating its directories);
    returns its main config file."""
    d = root / node.name
    for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if node.role == "nats":
        _write(d / "nats.conf", nats_conf(topo, node, root))
        return d / "nats.conf"
    if node.role == "keeper":
        _write(d / "data" / "myid", f"{node.index}\n")
        _write(d / "log4j.properties", log4j_properties(d))
        _write(d / "zoo.cfg", zoo_cfg(topo, node, root))
        return d / "zoo.cfg"
    _write(d / "users.xml", clickhouse_users_xml())
    _write(d / "config.xml", clickhouse_server_xml(topo, node, root))
    return d / "config.xml"
