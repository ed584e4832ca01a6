"""Reconciling a load in doubt with what ClickHouse holds.

A load in doubt is replayed with its original deduplication tokens, so that
ClickHouse drops whatever part of it already landed. That relies on a token
being kept only with its rows. A non-replicated MergeTree keeps tokens in a log
file written just before the part is committed, and a process killed between
the two leaves a token whose rows are gone: the replay is then dropped as well
(seen after SIGKILL about once in ten crash runs). An insert that failed late
and was retried can end the same way.

So after such a load the loader compares, table by table, what the load meant
to store with what is there, and adds only what is missing:

- raw: the load's rows (by their ``seq``) against the rows it prepared;
- each tier, finest first: over the cells the load touched, the tier's count
  per cell against its source's (raw, or the tier below). A short cell gets one
  row for the difference: sum and count the difference, min, max and the M4
  points the source's, which is what folding the missing rows in gives.

Rows are added without feeding views (``Store.attach``):
the tables downstream are checked in their turn. Every decision is taken
from what is stored, so a crash during a repair is repaired by the next
recovery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lenshouse.ingest.dedup import PAGE_BITS, PAGE_MS, key_lookup, pair_groups
from lenshouse.rollup import m4, tiers
from lenshouse.storage.queries import M4_FLAT
from lenshouse.storage.store import Store

log = logging.getLogger(__name__)


@dataclass
class Repair:
    """What a reconciliation added, and what it found in excess."""

    raw_rows: int = 0
    cells: dict[str, int] = field(default_factory=dict)  # tier table -> cells topped up
    surplus: dict[str, int] = field(default_factory=dict)  # tier table -> cells over source

    def __bool__(self) -> bool:
        return bool(self.raw_rows or self.cells)


def reconcile(store: Store, seq: int, rows: pa.Table, cell_rows: pa.Table) -> Repair:
    """Make load ``seq`` whole in raw and in every tier. ``rows`` are the raw
    rows it prepared, ``cell_rows`` their first-tier cells."""
    repair = Repair()
    missing = missing_raw(store, seq, rows)
    if missing.num_rows:
        store.attach(None, missing)
        repair.raw_rows = missing.num_rows
    present = store.tiers_present()
    for tier in present:
        short, surplus = tier_shortfall(store, tier, cell_rows, _source(tier, present))
        if short.num_rows:
            store.attach(tier, short)
            repair.cells[tier.table] = short.num_rows
        if surplus:
            repair.surplus[tier.table] = surplus
    if repair.surplus:
        log.warning("load %d: cells holding more than their source: %s", seq, repair.surplus)
    return repair


def missing_raw(store: Store, seq: int, rows: pa.Table) -> pa.Table:
    """The rows of load ``seq`` that raw lacks."""
    missing = np.zeros(rows.num_rows, bool)
    all_sensors = rows.column("sensor").to_numpy().astype(np.int64)
    all_ts = rows.column("ts").to_numpy()
    for tenant, where in _by_tenant(rows):
        sensor, ts = all_sensors[where], all_ts[where]
        pairs = pair_groups(sensor, ts >> PAGE_BITS)[0]
        got = store.load_keys(tenant, seq, pairs, PAGE_MS)
        _, stored = key_lookup(
            got.column("sensor").to_numpy().astype(np.int64),
            got.column("ts").to_numpy(),
            sensor,
            ts,
        )
        missing[where] = ~stored
    return rows.filter(pa.array(missing))


def _source(tier: tiers.Tier, present: list[tiers.Tier]) -> tiers.Tier | None:
    """The nearest finer tier the store has, or None for raw: any finer tier
    holds the same points, and an older store may lack the one in between
    (it gets new tiers, filled from their source, only after its load in
    doubt is replayed)."""
    source = tiers.tier_source(tier)
    while source is not None and source not in present:
        source = tiers.tier_source(source)
    return source


def tier_shortfall(
    store: Store, tier: tiers.Tier, cell_rows: pa.Table, source: tiers.Tier | None
) -> tuple[pa.Table, int]:
    """Rows that make ``tier`` agree with ``source`` (a finer tier, or raw for
    None) over the cells that ``cell_rows`` (first-tier cells) touch, and how
    many of those cells hold more than the source (left as they are)."""
    r = tier.res_ms
    out: list[pa.Table] = []
    surplus = 0
    all_sensors = cell_rows.column("sensor").to_numpy().astype(np.int64)
    all_cells = cell_rows.column("t").to_numpy() // r
    for tenant, where in _by_tenant(cell_rows):
        sensor, cell = all_sensors[where], all_cells[where]
        pairs = pair_groups(sensor, cell)[0]
        want = _folded(store, source, tenant, r, pairs)
        have = _folded(store, tier, tenant, r, pairs)
        _, touched = key_lookup(sensor, cell * r, want["sensor"], want["t"])
        want = {k: v[touched] for k, v in want.items()}
        pos, found = key_lookup(have["sensor"], have["t"], want["sensor"], want["t"])
        have_cnt = np.zeros(len(found), np.int64)
        have_sum = np.zeros(len(found), np.float64)
        have_cnt[found] = have["cnt"][pos[found]]
        have_sum[found] = have["sum"][pos[found]]
        surplus += int(np.count_nonzero(have_cnt > want["cnt"]))
        short = have_cnt < want["cnt"]
        if not short.any():
            continue
        n = int(short.sum())
        out.append(
            pa.table(
                {
                    "tenant": pa.array([tenant] * n, pa.string()).dictionary_encode(),
                    "sensor": pa.array(want["sensor"][short].astype(np.uint32)),
                    "t": pa.array(want["t"][short]),
                    "sum": pa.array(want["sum"][short] - have_sum[short]),
                    "cnt": pa.array((want["cnt"][short] - have_cnt[short]).astype(np.uint64)),
                    "min": pa.array(want["min"][short]),
                    "max": pa.array(want["max"][short]),
                    **m4.pair_arrays(
                        m4.M4(*(want[f][short] for f in M4_FLAT)),
                        want["min"][short],
                        want["max"][short],
                    ),
                }
            )
        )
    if not out:
        return cell_rows.slice(0, 0), surplus
    return pa.concat_tables(out), surplus


def _folded(
    store: Store, table: tiers.Tier | None, tenant: str, r: int, pairs: list[tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Per (sensor, cell of ``r`` ms) of ``pairs``: sum, count, min and max
    folded from raw (``table`` None) or from a tier's rows."""
    got = store.folded(table, tenant, r, pairs)
    return {
        "sensor": got.column("sensor").to_numpy().astype(np.int64),
        "t": got.column("c").to_numpy().astype(np.int64),
        "sum": got.column("sum").to_numpy().astype(np.float64),
        "cnt": got.column("cnt").to_numpy().astype(np.int64),
        "min": got.column("min").to_numpy().astype(np.float64),
        "max": got.column("max").to_numpy().astype(np.float64),
        **{f: got.column(f).to_numpy() for f in M4_FLAT},
    }


def _by_tenant(table: pa.Table) -> list[tuple[str, np.ndarray]]:
    """(tenant, row mask) for each tenant of a table with a tenant column."""
    col = table.column("tenant").combine_chunks()
    if not isinstance(col, pa.DictionaryArray):
        col = pc.dictionary_encode(col)
    codes = col.indices.to_numpy(zero_copy_only=False)
    return [
        (name, codes == i)
        for i, name in enumerate(col.dictionary.to_pylist())
        if np.any(codes == i)
    ]
