"""Which shard holds a sensor: the same function the ``Distributed`` tables
shard by, ``bitXor(cityHash64(tenant), intHash64(sensor)) % shards``,
computed here for whole columns so a load goes straight to its shards.

``cityHash64`` is CityHash 1.0.2, which the ``clickhouse-cityhash`` package
(a dependency of clickhouse-driver's compression) implements; ``intHash64``
is the 64-bit murmur finaliser of the value xor a constant. A test checks
both against a real server.
"""

from __future__ import annotations

import functools

import numpy as np
from clickhouse_cityhash.cityhash import CityHash64

_INT_HASH_SEED = np.uint64(0x4CF2D2BAAE6DA887)  # ClickHouse's IntHash64Impl


def int_hash64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) ^ _INT_HASH_SEED
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
    return x


def city_hash64(text: str) -> int:
    return CityHash64(text.encode())


# Sensor ids below this are looked up in a table per tenant instead of hashed
# row by row, when a call has more than LOOKUP_ABOVE rows (a load's rows are
# mostly a few thousand sensors'). Each table spans the ids asked so far
# (a power of two), so it costs what the tenant's sensors need.
TABLE_BELOW = 1 << 20
LOOKUP_ABOVE = 1024


def shard_of(tenant: str, sensors: np.ndarray, shards: int) -> np.ndarray:
    """0-based shard index (in the order of the cluster's definition) per sensor."""
    sensors = np.asarray(sensors)
    if len(sensors) > LOOKUP_ABOVE:
        top = int(sensors.max())
        if top < TABLE_BELOW:
            size = max(4096, 1 << top.bit_length())
            return _table(tenant, shards, size)[sensors].astype(np.int64)
    return _hashed(tenant, sensors, shards)


def _hashed(tenant: str, sensors: np.ndarray, shards: int) -> np.ndarray:
    key = np.uint64(city_hash64(tenant)) ^ int_hash64(sensors)
    return (key % np.uint64(shards)).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _table(tenant: str, shards: int, size: int) -> np.ndarray:
    table = _hashed(tenant, np.arange(size, dtype=np.uint64), shards).astype(np.int8)
    table.flags.writeable = False  # shared by every caller
    return table
