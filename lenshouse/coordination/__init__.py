"""Coordination of cluster mode in ZooKeeper (or ClickHouse Keeper): who owns
which log partition, each partition's load progress, and the numbering of
loads that lens servers read to know what is complete."""
