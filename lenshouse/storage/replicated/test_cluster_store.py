"""The cluster store on a real 2 shards × 2 replicas ClickHouse 18.16 cluster
with a 3-node ZooKeeper ensemble: the schema on every node, rows on the shard
the server's own sharding key names, replicas that agree, loads that land
once through a replica's kill -9 and a lenshouse crash, lenses read during
ingest, and a 503 naming the shard while no replica of it answers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from clickhouse_driver import Client
from fastapi.testclient import TestClient

from lenshouse.api.app import create_app
from lenshouse.cluster import clickhouse_hosts, start, stop
from lenshouse.conftest import cluster_store, tier_points
from lenshouse.generators.sender import SendStats, batch_client, encode_arrow
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.lens.test_concurrent import check_during_ingest, make_batches
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.rollup.tiers import TIERS
from lenshouse.scenarios.server import ServerProcess
from lenshouse.storage.errors import FatalError, ShardUnavailable
from lenshouse.storage.queries import SHARED_TABLE
from lenshouse.storage.replicated import schema
from lenshouse.storage.replicated.sharding import shard_of

pytestmark = pytest.mark.slow
T0 = 1_700_000_000_000


def nodes(doc: dict, shard: int | None = None) -> list[dict]:
    return [
        n
        for n in doc["nodes"]
        if n["role"] == "clickhouse" and (shard is None or n["shard"] == shard)
    ]


def on(node: dict, sql: str, database: str = "default"):
    c = Client("127.0.0.1", port=node["ports"]["tcp"], database=database, connect_timeout=2)
    try:
        return c.execute(sql)
    finally:
        c.disconnect()


def points(sensors: int, per_sensor: int, seed: int, tenant: str = "default") -> PointBatch:
    rng = np.random.default_rng(seed)
    sensor = np.repeat(np.arange(1, sensors + 1, dtype=np.uint32), per_sensor)
    ts = T0 + np.tile(np.arange(per_sensor, dtype=np.int64) * 3, sensors)
    return PointBatch.from_columns(tenant, sensor, ts, rng.normal(0, 10, len(ts)))


def sync_and_compare(doc: dict, db: str) -> dict[int, int]:
    """Sync every replica, check each shard's replicas hold the same rows in
    every table; returns raw rows per shard."""
    per_shard = {}
    tables = ["raw_local", f"{TIERS[0].table}_local", f"{SHARED_TABLE}_local"]
    for shard in (1, 2):
        digests = []
        for n in nodes(doc, shard):
            for t in tables:
                on(n, f"SYSTEM SYNC REPLICA {db}.{t}")
            digests.append(
                [
                    on(n, f"SELECT count(), sum(sensor), sum(cityHash64(*)) FROM {db}.{t}")[0]
                    for t in tables
                ]
            )
        assert digests[0] == digests[1], f"shard {shard}'s replicas differ: {digests}"
        per_shard[shard] = digests[0][0][0]
    return per_shard


def test_schema_on_every_node_and_rows_on_the_servers_own_shard(cluster: dict) -> None:
    store = cluster_store(cluster)
    db = store.conn.database
    try:
        store.open()
        store.open()  # idempotent, and cheap once the schema is there
        for n in nodes(cluster):
            names = {r[0] for r in on(n, f"SELECT name FROM system.tables WHERE database = '{db}'")}
            assert schema.tables() <= names
        # Rows inserted through the Distributed table land where ClickHouse's
        # own sharding key sends them, which is where the loader sends them.
        sensors = np.arange(0, 2000, dtype=np.uint32)  # past the lookup table's threshold
        store.backend.execute(
            f"INSERT INTO raw SELECT 'acme', toUInt32(number), {T0} + number, 1.0, 0"
            " FROM system.numbers LIMIT 2000",
            {"insert_distributed_sync": 1},
        )
        want = shard_of("acme", sensors, 2)
        for shard in (1, 2):
            replica = nodes(cluster, shard)[0]  # perhaps not the one written: sync it
            on(replica, f"SYSTEM SYNC REPLICA {db}.raw_local")
            got = {r[0] for r in on(replica, f"SELECT sensor FROM {db}.raw_local")}
            assert got == set(sensors[want == shard - 1].tolist()), shard
        # No lightweight deletes on 18.16: the store says so and refuses.
        assert not store.can_erase
        with pytest.raises(FatalError, match="cannot delete"):
            store.erase("acme", [1], T0, T0 + 10, 1)
        # A database made with a table per coarser tier is refused, saying why.
        for n in nodes(cluster):
            on(n, f"CREATE TABLE {db}.rollup_1s_local (x UInt8) ENGINE = Memory")
        old = cluster_store(cluster, db)
        with pytest.raises(FatalError, match="predates rollup_coarse"):
            old.open()
        old.close()
    finally:
        store.close()


def test_loads_land_once_on_their_shard_and_replicas_agree(cluster: dict, tmp_path: Path) -> None:
    store = cluster_store(cluster)
    db = store.conn.database
    with Node(tmp_path / "data", store=store, flush_interval=0.05) as node:
        batch = points(200, 500, seed=1)
        lsn = None
        for _ in range(3):  # a replay, twice: dropped point by point
            lsn = node.ingestor.write_sync(batch)
        assert node.ingestor.wait_visible(lsn, 60)
        per_shard = sync_and_compare(cluster, db)
        assert sum(per_shard.values()) == len(batch) and min(per_shard.values()) > 0
        owners = {}
        for shard in (1, 2):
            for (s,) in on(nodes(cluster, shard)[0], f"SELECT DISTINCT sensor FROM {db}.raw_local"):
                assert s not in owners, f"sensor {s} on shards {owners[s]} and {shard}"
                owners[s] = shard
        for tier in TIERS:
            assert tier_points(store, tier) == len(batch), tier
        lens = node.lenses.lens(list(range(1, 11)), T0, T0 + 1500, step=100)
        for series in lens.series:
            m = batch.sensor == series.sensor
            want = brute_force(batch.ts[m], batch.value[m], lens.start, lens.end, lens.step)
            assert mismatch(series, want) is None
        sensors = node.catalog.list("default")
        assert [s["sensor"] for s in sensors] == list(range(1, 201))


def test_lenses_read_during_ingest_equal_a_prefix_of_the_log(cluster: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    with Node(tmp_path / "data", store=cluster_store(cluster), flush_interval=0.02) as node:

        def window() -> tuple[int, int, int]:
            a = int(rng.integers(T0, T0 + 600_000))
            return a, int(rng.integers(a + 1, T0 + 660_000)), int(rng.integers(50, 2500))

        checked, racing = check_during_ingest(node, make_batches(rng, 30), window)
        assert checked >= 5 and racing >= 1


def test_a_killed_replica_loses_nothing_and_lenses_stay_exact(
    cluster: dict, tmp_path: Path
) -> None:
    store = cluster_store(cluster)
    db = store.conn.database
    victim = nodes(cluster, 1)[1]["name"]
    batches = [points(50, 400, seed=k) for k in range(6)]
    for k, b in enumerate(batches):  # each batch its own time range
        b.ts[:] += k * 10_000
    with Node(tmp_path / "data", store=store, flush_interval=0.05) as node:
        lsn = node.ingestor.write_sync(batches[0])
        assert node.ingestor.wait_visible(lsn, 60)
        stop(Path(cluster["dir"]), victim, kill=True)
        try:
            for b in batches[1:]:  # acknowledged by the log while a replica is gone
                lsn = node.ingestor.write_sync(b)
            time.sleep(3)
        finally:
            start(Path(cluster["dir"]), victim)
        assert node.ingestor.wait_visible(lsn, 120), "loads did not resume after the restart"
        per_shard = sync_and_compare(cluster, db)
        assert sum(per_shard.values()) == sum(len(b) for b in batches)
        sensor = np.concatenate([b.sensor for b in batches])
        ts = np.concatenate([b.ts for b in batches])
        value = np.concatenate([b.value for b in batches])
        lens = node.lenses.lens([1, 2, 3], T0, T0 + 70_000, points=700)
        for series in lens.series:
            m = sensor == series.sensor
            assert (
                mismatch(series, brute_force(ts[m], value[m], lens.start, lens.end, lens.step))
                is None
            )


def test_a_shard_without_live_replicas_answers_503_naming_it(cluster: dict, tmp_path: Path) -> None:
    with Node(tmp_path / "data", store=cluster_store(cluster), flush_interval=0.05) as node:
        batch = points(20, 100, seed=3)
        assert node.ingestor.wait_visible(node.ingestor.write_sync(batch), 60)
        down = [n["name"] for n in nodes(cluster, 2)]
        for name in down:
            stop(Path(cluster["dir"]), name, kill=True)
        try:
            with pytest.raises(ShardUnavailable) as err:
                node.lenses.lens(list(range(1, 11)), T0, T0 + 300, step=10)
            assert "2 (" in str(err.value)
            with TestClient(create_app(node)) as client:
                r = client.get(
                    "/v1/lens",
                    params={"sensors": "1,2,3,4,5", "start": T0 + 1, "end": T0 + 299, "step": 7},
                )
                assert r.status_code == 503 and "shard 2" in r.json()["error"], r.text
        finally:
            for name in down:
                start(Path(cluster["dir"]), name)
        lens = node.lenses.lens([1, 2], T0, T0 + 300, step=10)
        assert sum(int(s.count.sum()) for s in lens.series) == 200


def test_a_server_killed_during_loads_loses_and_doubles_nothing(
    cluster: dict, tmp_path: Path
) -> None:
    probe = cluster_store(cluster)
    server = ServerProcess(
        tmp_path / "data",
        extra_args=(
            "--clickhouse", ",".join(clickhouse_hosts(cluster)),
            "--cluster", cluster["name"], "--database", probe.conn.database,
        ),
    )  # fmt: skip
    batches = [points(100, 1000, seed=k) for k in range(8)]
    for k, b in enumerate(batches):
        b.ts[:] += k * 5_000
    stats = SendStats()

    def send(client, b: PointBatch) -> None:
        client.write_body(encode_arrow(b))

    try:
        server.start()
        with batch_client(server.url, "default", stats, 30.0, timeout=30.0) as client:
            for b in batches[:5]:
                send(client, b)
            time.sleep(0.3)  # loads under way
            server.kill9()
            server.start()  # replays the load in doubt
            for b in batches[3:]:  # the middle layer replays some batches
                send(client, b)
        server.wait_loaded(60)
    finally:
        server.kill9()
    try:
        got = probe.backend.query("SELECT count() AS n, uniqExact(sensor, ts) AS k FROM raw")
        assert got.column("n")[0].as_py() == got.column("k")[0].as_py() == 8 * 100_000
        for tier in TIERS:
            assert tier_points(probe, tier) == 8 * 100_000, tier
    finally:
        probe.close()
