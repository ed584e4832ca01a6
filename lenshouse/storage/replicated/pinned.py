"""Lens reads pinned to a set of completed loads, on one shard.

A lens server does not load: loads of other processes run while it reads,
one after another, and a read must not see half of one. Every row lenshouse
writes carries the ``seq`` of its load, and one log partition (so one
shard) completes its loads in seq order, one at a time. So on a shard, the
loads completed at a moment are exactly those with ``seq <= floor``, the
shard's *floor* (:mod:`lenshouse.lens.cluster_visibility`), and a read that
takes only their rows is exact as of that moment, whatever loads run
meanwhile: no re-read, no waiting.

- **Raw rows** are never folded: ``seq <= floor`` selects them exactly.
- **Tier rows** may have been folded by merges (``AggregatingMergeTree`` on
  current servers keeps the ``max`` of the folded rows' seqs; 18.16 never
  folds them). A tier *cell* whose rows all have ``seq <= floor`` holds only
  completed loads, and all of them (each completed load is in every
  replica's parts before its completion is recorded): it is *clean*. A
  cell with a newer row (a load in flight, or one that completed after the
  floor was read) may hold completed data folded into that row: it is
  *dirty*, and is read again from finer data: a coarser tier's dirty cells
  from the first tier (100 ms), the first tier's dirty cells from raw rows.

A cell is judged clean or dirty, and its rows folded, in one query, which
reads one set of parts of its table: a merge cannot move rows between the
judgement and the sum. Each level reads exactly the cells the level above
found dirty, so the cells of the three levels are disjoint and cover the
window. Dirty cells are the few that loads after the floor touched: the
newest cell of each tier for each sensor, and the cells of late points. At
most three queries per shard, whatever loads do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from lenshouse.lens.planner import Segment
from lenshouse.rollup import m4 as m4fold
from lenshouse.rollup.cell import M4_NAMES as M4_COLUMNS
from lenshouse.rollup.cell import STAT_NAMES, fold_stats
from lenshouse.rollup.cells import FIRST
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.cell_sql import M4_FOLD, M4_OF_RAW, stat_folds
from lenshouse.storage.queries import (
    FLOAT_COLUMNS,
    M4_FLAT,
    OWN_TABLES,
    TierTables,
    bucket_of,
    identifier,
    m4_flat,
    segments_where,
)

RAW_SOURCE = 255  # the ``src`` of rows read from raw points
Groups = Sequence[tuple[Sequence[int], Sequence[Segment]]]


# The dirty cells' times as text (an array column costs the native client a
# slow path per query): usually empty, a few numbers otherwise.
_DIRTY = "arrayStringConcat(arrayMap(x -> toString(x), groupArrayIf(t, NOT ok)), ' ')"


def query(
    tenant: str,
    step: int,
    groups: Groups,
    floor: int,
    origin: int = 0,
    m4: bool = False,
    suffix: str = "_local",
    at: TierTables = OWN_TABLES,
) -> str | None:
    """One query over the groups' segments on one shard's tables (``suffix``
    names them): per (sensor, bucket) the fold of raw rows and clean tier
    cells of loads up to ``floor``, with the dirty cells of each tier listed
    (``dirty``: their times, as text; ``src``: the tier's index, RAW_SOURCE for raw).
    Rows of one bucket may come from several sources; None if no segment."""
    floor = int(floor)

    def bucket(col: str) -> str:
        return bucket_of(col, step, origin)

    selects = []
    raw = segments_where(tenant, "ts", groups, lambda s: s.tier is None)
    if raw:
        edges = any(s.within for _, segs in groups for s in segs if s.tier is None)
        m4_cols = f", {m4_flat(M4_OF_RAW)}" if m4 else ""
        selects.append(
            f"SELECT sensor, {bucket('ts')} AS b, {stat_folds(raw=True)}{m4_cols}, '' AS dirty,"
            f" toUInt8({RAW_SOURCE}) AS src FROM raw{suffix}"
            f" {'PREWHERE' if edges else 'WHERE'} {raw} AND seq <= {floor}"
            " GROUP BY sensor, b"
        )
    tiers = dict.fromkeys(s.tier for _, segs in groups for s in segs if s.tier is not None)
    for tier in tiers:
        cond = segments_where(tenant, "t", groups, lambda s, tier=tier: s.tier == tier)
        inner_m4 = "".join(f", {M4_FOLD[c]}({c}) AS p_{c}" for c in M4_COLUMNS) if m4 else ""
        outer_m4 = f", {m4_flat({c: f'p_{c}' for c in M4_COLUMNS}, 'ok')}" if m4 else ""
        selects.append(
            f"SELECT sensor, b, {stat_folds(raw=False, of='p_', cond='ok')}{outer_m4},"
            f" {_DIRTY} AS dirty, toUInt8({TIERS.index(tier)}) AS src FROM ("
            f"SELECT sensor, t, {bucket('t')} AS b, {stat_folds(raw=False, into='p_')}"
            f"{inner_m4}, max(seq) <= {floor} AS ok"
            f" FROM {at.table(tier, suffix)} WHERE {at.where(tier, cond)} GROUP BY sensor, t"
            ") GROUP BY sensor, b"
        )
    return " UNION ALL ".join(selects) if selects else None


def finer(rows: pa.Table) -> tuple[list, list]:
    """The dirty cells in ``rows`` as groups to read again, a group per sensor
    (``Segment.within`` unused): (from the first tier, from raw rows)."""
    first: list[tuple[int, Segment]] = []
    raw: list[tuple[int, Segment]] = []
    if rows.num_rows == 0:
        return [], []
    sensors = rows.column("sensor").to_numpy()
    srcs = rows.column("src").to_numpy()
    dirty = rows.column("dirty").to_pylist()
    for sensor, src, text in zip(sensors, srcs, dirty):
        if not text:
            continue
        cells = text.split()
        tier = TIERS[int(src)]
        into, source = (raw, None) if tier == FIRST else (first, FIRST)
        for t in cells:
            into.append((int(sensor), Segment(source, int(t), int(t) + tier.res_ms)))
    return _tagged(first), _tagged(raw)


def _tagged(cells: list[tuple[int, Segment]]) -> list:
    """(sensor, segment) pairs as groups of one sensor, neighbours merged."""
    by_sensor: dict[int, list[Segment]] = {}
    for sensor, seg in sorted(cells, key=lambda x: (x[0], x[1].lo)):
        segs = by_sensor.setdefault(sensor, [])
        if segs and segs[-1].hi == seg.lo:
            segs[-1] = Segment(seg.tier, segs[-1].lo, seg.hi)
        else:
            segs.append(seg)
    return [([s], segs) for s, segs in by_sensor.items()]


def read(
    run: Callable[[str], pa.Table],
    tenant: str,
    step: int,
    groups: Groups,
    floor: int,
    origin: int = 0,
    m4: bool = False,
    at: TierTables = OWN_TABLES,
    suffix: str = "_local",
) -> pa.Table:
    """A lens's buckets on one shard as of ``floor``: the query above, then the
    dirty cells again from finer data (at most two more queries), folded per
    (sensor, b) into the columns of a lens read (sensor, b, sum, cnt, min,
    max and, with ``m4``, ``M4_FLAT``), ordered by sensor and bucket."""
    parts: list[pa.Table] = []

    def level(gs: Groups) -> tuple[list, list]:
        sql = query(tenant, step, gs, floor, origin, m4, suffix, at)
        if sql is None:
            return [], []
        rows = run(sql)
        parts.append(rows)
        return finer(rows)

    to_first, to_raw = level(groups)
    if to_first:
        again, more_raw = level(to_first)
        assert not again, "first-tier cells are read again from raw rows, not from a tier"
        to_raw += more_raw
    if to_raw:
        left = level(to_raw)
        assert left == ([], []), "raw rows are never dirty"
    return fold(parts, m4)


def fold(parts: list[pa.Table], m4: bool) -> pa.Table:
    """Rows of the same (sensor, b) folded into one; rows holding no point dropped."""
    names = ("sensor", "b", *STAT_NAMES) + (M4_FLAT if m4 else ())
    cols = {
        n: np.concatenate(
            [p.column(n).to_numpy() for p in parts if p.num_rows]
            or [np.empty(0, np.float64 if n in FLOAT_COLUMNS else np.int64)]
        )
        for n in names
    }
    for n in names:
        kind = np.float64 if n in FLOAT_COLUMNS else np.int64
        cols[n] = cols[n].astype(kind, copy=False)
    keep = cols["cnt"] > 0
    cols = {n: v[keep] for n, v in cols.items()}
    order = np.lexsort((cols["b"], cols["sensor"]))
    cols = {n: v[order] for n, v in cols.items()}
    n = len(order)
    if n:
        new = np.concatenate(([True], (np.diff(cols["sensor"]) != 0) | (np.diff(cols["b"]) != 0)))
        if not new.all():
            cols = _reduce(cols, np.flatnonzero(new), m4)
    out = {n: pa.array(v) for n, v in cols.items()}
    out["sensor"] = pa.array(cols["sensor"].astype(np.uint32))
    return pa.table(out)


def _reduce(cols: dict[str, np.ndarray], starts: np.ndarray, m4: bool) -> dict[str, np.ndarray]:
    out = {
        "sensor": cols["sensor"][starts],
        "b": cols["b"][starts],
        **fold_stats(cols, starts),
    }
    if m4:
        tf, vf, tl, vl, _, tmn, _, tmx = m4fold.fold(
            starts,
            cols["m4_tf"],
            cols["m4_vf"],
            cols["m4_tl"],
            cols["m4_vl"],
            cols["min"],
            cols["m4_tmin"],
            cols["max"],
            cols["m4_tmax"],
        )
        out |= {"m4_tf": tf, "m4_vf": vf, "m4_tl": tl, "m4_vl": vl, "m4_tmin": tmn, "m4_tmax": tmx}
    return out


def newest_sql(database: str, floor: int, since: int) -> str:
    """The newest point at or after ``since`` of the loads up to ``floor`` on
    one shard, and how many there are (``max`` of nothing is 0 on 18.16)."""
    return (
        f"SELECT max(ts) AS newest, count() AS n FROM {identifier(database)}.raw_local"
        f" WHERE ts >= {int(since)} AND seq <= {int(floor)}"
    )
