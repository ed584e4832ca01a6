"""The first tier's cells, computed from a load's rows before they are stored.

The loader stores these next to the raw rows instead of leaving the work to a
view on the raw table: sensor batches arrive as runs of one sensor in time
order, so a cell is a run of consecutive rows and numpy folds it in one pass
(about 6 ms per million rows), where a view would hash every raw row again
(about 30 ms). The coarser tiers are still kept by views, each from the tier
below, and see only cells.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lenshouse.rollup import m4
from lenshouse.rollup.cell import STATS, fold_stats, stats_of_points
from lenshouse.rollup.tiers import TIERS

FIRST = TIERS[0]


def cells(
    codes: np.ndarray,
    tenants: list[str],
    sensor: np.ndarray,
    ts: np.ndarray,
    value: np.ndarray,
    res_ms: int = FIRST.res_ms,
) -> pa.Table:
    """The states of :mod:`lenshouse.rollup.cell` per (tenant, sensor, cell) of
    some points, one row per cell, sorted by key, in the tier table's column order. ``codes``
    index ``tenants`` per point; ``ts`` is positive epoch ms (so ``//`` is
    ClickHouse's ``intDiv``)."""
    cell = ts // res_ms
    if len(ts) == 0:
        none = {s.name: np.empty(0, s.dtype) for s in STATS}
        return _table(codes, tenants, sensor, cell, none, m4.M4.empty(), res_ms)
    # Runs of one key: the generator's and most senders' batches hold few.
    starts = _run_starts(codes, sensor, cell)
    code, sid, c = codes[starts], sensor[starts], cell[starts]
    stats = stats_of_points(starts, value)
    pairs = m4.fold(starts, ts, value, ts, value, value, ts, value, ts)
    # A cell may be split over several runs (records of one load, interleaved
    # sensors, out-of-order points): fold runs of equal key together.
    order = np.lexsort((c, sid, code))
    code, sid, c = code[order], sid[order], c[order]
    starts = _run_starts(code, sid, c)
    stats = fold_stats({k: v[order] for k, v in stats.items()}, starts)
    tf, vf, tl, vl, _, tmn, _, tmx = m4.fold(starts, *(a[order] for a in pairs))
    return _table(code[starts], tenants, sid[starts], c[starts], stats,
                  m4.M4(tf, vf, tl, vl, tmn, tmx), res_ms)  # fmt: skip


def footprint_points(table: pa.Table, res_ms: int = FIRST.res_ms) -> tuple[np.ndarray, ...]:
    """(codes, sensor, ts) at both ends of every cell: the cells' points lie
    between, so any coarser cell they touch is touched by one of these."""
    codes = table.column("tenant").combine_chunks().indices.to_numpy()
    sensor = table.column("sensor").to_numpy()
    t = table.column("t").to_numpy()
    both = np.column_stack((t, t + (res_ms - 1))).ravel()
    return np.repeat(codes, 2), np.repeat(sensor, 2), both


def _run_starts(code: np.ndarray, sensor: np.ndarray, cell: np.ndarray) -> np.ndarray:
    change = (sensor[1:] != sensor[:-1]) | (cell[1:] != cell[:-1]) | (code[1:] != code[:-1])
    return np.concatenate(([0], np.flatnonzero(change) + 1))


def _table(code, tenants, sensor, cell, stats: dict, points: m4.M4, res_ms) -> pa.Table:
    return pa.table(
        {
            "tenant": pa.DictionaryArray.from_arrays(
                pa.array(np.asarray(code, np.int32)), pa.array(tenants, pa.string())
            ),
            "sensor": pa.array(np.asarray(sensor, np.uint32)),
            "t": pa.array(np.asarray(cell, np.int64) * res_ms),
            **{s.name: pa.array(np.asarray(stats[s.name], s.dtype)) for s in STATS},
            **m4.pair_arrays(points, stats["min"], stats["max"]),
        }
    )
