"""The cluster store: lenshouse's tables on a sharded, replicated ClickHouse
cluster (``ReplicatedMergeTree`` shards behind ``Distributed`` tables, a
ZooKeeper or ClickHouse Keeper ensemble), reached over the native protocol."""
