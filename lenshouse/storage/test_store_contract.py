"""The ``Store`` contract, the same tests on both stores: chDB (embedded) and
the 2 × 2 ClickHouse 18.16 cluster. What ingest, deduplication, reconciling,
exports and the catalog rely on, asked through the protocol alone and checked
against what was inserted (numpy), not against the store's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lenshouse.conftest import STORES, cluster_store, tier_points
from lenshouse.rollup.cells import FIRST, cells
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.embedded import EmbeddedBackend
from lenshouse.storage.store import EmbeddedStore

TENANT = "contract"
T0 = 1_699_999_200_000  # ms, on an hour's edge
HOUR = 3_600_000
UNIT = 60_000  # the (sensor, page) pairs' page width for the key reads


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    if request.param == "chdb":
        s = EmbeddedStore(EmbeddedBackend(tmp_path / "clickhouse"))
    else:
        s = cluster_store(request.getfixturevalue("cluster"))
    s.open()
    try:
        yield s
    finally:
        s.close()


class Load:
    """One load's points, as the loader writes them: raw rows, then the first
    tier's cells, each under its own token."""

    def __init__(self, seq: int, sensor, ts, value) -> None:
        order = np.lexsort((ts, sensor))
        self.seq = seq
        self.sensor = np.asarray(sensor, np.uint32)[order]
        self.ts = np.asarray(ts, np.int64)[order]
        self.value = np.asarray(value, np.float64)[order]

    def rows(self) -> pa.Table:
        n = len(self.ts)
        return pa.table({
            "tenant": pa.array([TENANT] * n), "sensor": self.sensor, "ts": self.ts,
            "value": self.value, "seq": pa.array(np.full(n, self.seq, np.uint64)),
        })  # fmt: skip

    def into(self, store, token: str | None = None) -> None:
        token = token or f"contract-{self.seq}"
        store.insert_raw(self.rows(), token)
        codes = np.zeros(len(self.ts), np.int64)
        cell_rows = cells(codes, [TENANT], self.sensor, self.ts, self.value)
        store.insert_cells(cell_rows, self.seq, token + "-cells")

    def key_set(self) -> set[tuple[int, int]]:
        return set(zip(self.sensor.tolist(), self.ts.tolist()))

    def pairs(self) -> set[tuple[int, int]]:
        return {(s, t // UNIT) for s, t in self.key_set()}


def _random_load(seq: int, rng: np.random.Generator, lo: int, n: int = 400) -> Load:
    sensor = rng.integers(1, 6, n)
    ts = lo + rng.choice(5 * UNIT, n, replace=False)  # unique per load, five pages
    return Load(seq, sensor, ts, rng.normal(size=n))


def _keys(table: pa.Table) -> set[tuple[int, int]]:
    return set(zip(table.column("sensor").to_pylist(), table.column("ts").to_pylist()))


def _export_all(store, sensors, max_seq, hidden=(), limit=10_000, after=None) -> pa.Table:
    return store.export_rows(TENANT, sensors, T0 - HOUR, T0 + 2 * HOUR, max_seq, limit,
                             hidden, after)  # fmt: skip


def test_a_retried_insert_under_its_token_is_stored_once(store) -> None:
    """The loader's replay of a load in doubt sends the same rows under the same
    tokens: raw rows and cells are each stored once (the deduplication window)."""
    load = _random_load(0, np.random.default_rng(1), T0)
    load.into(store)
    load.into(store)
    got = _export_all(store, list(range(1, 6)), max_seq=0)
    assert got.num_rows == len(load.ts) and _keys(got) == load.key_set()
    assert tier_points(store, FIRST) == len(load.ts)
    assert tier_points(store, TIERS[-1]) == len(load.ts)  # the coarsest tier too
    assert store.newest_ts() == int(load.ts.max())


def test_key_reads_tell_loads_apart(store) -> None:
    """Deduplication reads the keys of earlier loads (``seen_keys``, below a
    seq), reconciling those of one load (``load_keys``), and first-value-wins
    the values up to a seq (``stored_values``): each sees exactly its loads."""
    rng = np.random.default_rng(2)
    a = _random_load(0, rng, T0)
    b = _random_load(1, rng, T0 + 2 * UNIT)  # overlapping pages, other keys
    taken = a.key_set()
    fresh = np.array([k not in taken for k in zip(b.sensor.tolist(), b.ts.tolist())])
    b = Load(1, b.sensor[fresh], b.ts[fresh], b.value[fresh])
    a.into(store)
    b.into(store)
    pairs = sorted(a.pairs() | b.pairs())
    assert _keys(store.seen_keys(TENANT, pairs, UNIT, below_seq=0)) == set()
    assert _keys(store.seen_keys(TENANT, pairs, UNIT, below_seq=1)) == a.key_set()
    assert _keys(store.seen_keys(TENANT, pairs, UNIT, below_seq=2)) == a.key_set() | b.key_set()
    assert _keys(store.load_keys(TENANT, 1, pairs, UNIT)) == b.key_set()
    some = sorted(b.pairs())[:2]  # only the pairs asked
    assert _keys(store.load_keys(TENANT, 1, some, UNIT)) == {
        k for k in b.key_set() if (k[0], k[1] // UNIT) in set(some)
    }
    values = store.stored_values(TENANT, pairs, UNIT, max_seq=0)
    expected = dict(zip(zip(a.sensor.tolist(), a.ts.tolist()), a.value.tolist()))
    got = dict(zip(_keys_list(values), values.column("value").to_pylist()))
    assert got == expected


def _keys_list(table: pa.Table) -> list[tuple[int, int]]:
    return list(zip(table.column("sensor").to_pylist(), table.column("ts").to_pylist()))


def test_an_export_pages_in_key_order_and_sees_only_its_loads(store) -> None:
    rng = np.random.default_rng(3)
    a, b, c = (_random_load(i, rng, T0 + i * 7 * UNIT, n=150) for i in range(3))
    for load in (a, b, c):
        load.into(store)
    sensors = [1, 2, 3, 4, 5]
    whole = _export_all(store, sensors, max_seq=2)
    assert _keys_list(whole) == sorted(a.key_set() | b.key_set() | c.key_set())
    pages, after = [], None
    for _ in range(100):  # bounded: 450 rows in pages of 37
        page = _export_all(store, sensors, max_seq=2, limit=37, after=after)
        if not page.num_rows:
            break
        pages += _keys_list(page)
        after = pages[-1]
    assert pages == _keys_list(whole)
    assert _keys(_export_all(store, sensors, max_seq=1)) == a.key_set() | b.key_set()
    assert _keys(_export_all(store, sensors, max_seq=2, hidden=(1,))) == a.key_set() | c.key_set()
    assert _keys(_export_all(store, [2], max_seq=2)) == {
        k for k in a.key_set() | b.key_set() | c.key_set() if k[0] == 2
    }


def test_extents_cover_what_is_stored_and_points_about_counts_it(store) -> None:
    rng = np.random.default_rng(4)
    a = _random_load(0, rng, T0 + 10 * UNIT)
    b = _random_load(1, rng, T0 + HOUR + 20 * UNIT)
    a.into(store)
    b.into(store)
    ext = store.extents()
    for s in range(1, 6):
        mine = [t for load in (a, b) for x, t in load.key_set() if x == s]
        (row,) = [
            r for r in ext.to_pylist() if r["tenant"] == TENANT and r["sensor"] == s
        ]  # fmt: skip
        assert row["lo"] <= min(mine) and max(mine) <= row["hi"] + HOUR - 1
    assert store.points_about(TENANT, [1, 2, 3, 4, 5], T0, T0 + 2 * HOUR) == 800
    n3 = int((a.sensor == 3).sum() + (b.sensor == 3).sum())
    assert store.points_about(TENANT, [3], T0, T0 + 2 * HOUR) == n3
    assert store.points_about(TENANT, [1, 2, 3, 4, 5], T0 + HOUR, T0 + 2 * HOUR) == len(b.ts)


def test_the_catalog_keeps_each_sensors_newest_labels(store) -> None:
    def rows(sensor: list[int], labels: list[str], version: list[int]) -> pa.Table:
        return pa.table({
            "tenant": pa.array([TENANT] * len(sensor)), "sensor": pa.array(sensor, pa.uint32()),
            "labels": pa.array(labels), "version": pa.array(version, pa.int64()),
        })  # fmt: skip

    store.insert_sensors(rows([1, 2], ["{}", "{}"], [0, 0]), "contract-sensors")
    store.insert_sensors(rows([1, 2], ["{}", "{}"], [0, 0]), "contract-sensors")  # a replay
    store.put_sensors(rows([1], ['{"kind":"a"}'], [5]))
    store.put_sensors(rows([1], ['{"kind":"b"}'], [3]))  # older: loses
    got = store.sensors_of(TENANT).to_pylist()
    assert [(r["sensor"], r["labels"]) for r in got] == [(1, '{"kind":"a"}'), (2, "{}")]
    assert {(TENANT, 1), (TENANT, 2)} <= store.known_sensors()
    assert store.sensors_of("nobody").num_rows == 0
