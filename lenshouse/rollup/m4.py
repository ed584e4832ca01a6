"""M4 aggregates: the first, last, lowest and highest point of a cell.

A line chart drawn from these four points per pixel column is the chart drawn
from every raw point (Jugel et al., "M4", VLDB 2014). Each tier cell keeps
them as four (time, value) pairs that fold with min or max alone, so they
merge exactly like sum/count/min/max: a late point adds a row for its cell,
and any set of rows of a cell folds to the cell's true M4.

- ``m4_first`` = min of (ts, value): the earliest point;
- ``m4_last`` = max of (ts, value): the latest point;
- ``m4_low`` = min of (value, ts): the lowest value, at its earliest time;
- ``m4_high`` = max of (value, −ts): the highest value, at its earliest time.

Timestamps are unique per sensor (first value wins), so first and last are
single points; ties of value pick the earliest time.

Rows that hold no points (``Pair.empty`` in :mod:`lenshouse.rollup.cell`)
change nothing when folded in: a store made before these columns existed gets
them filled from its raw points by rows of that kind (see
:mod:`lenshouse.storage.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lenshouse.rollup.cell import M4 as M4_PAIRS
from lenshouse.rollup.cell import M4_NAMES

# The lens aggregates M4 answers, beside avg/min/max/count.
M4_AGGS = ("first", "last", "tfirst", "tlast", "tmin", "tmax")
COLUMNS = M4_NAMES
# Each pair's element types, in order.
PAIRS = {p.name: p.kinds for p in M4_PAIRS}
_BIG = np.iinfo(np.int64).max


@dataclass
class M4:
    """Per bucket or cell: the four points, as six arrays."""

    tfirst: np.ndarray
    first: np.ndarray
    tlast: np.ndarray
    last: np.ndarray
    tmin: np.ndarray
    tmax: np.ndarray

    @staticmethod
    def empty() -> M4:
        i, v = np.empty(0, np.int64), np.empty(0, np.float64)
        return M4(i, v, i, v, i, i)


M4_FIELDS = ("tfirst", "first", "tlast", "last", "tmin", "tmax")


def fold(
    starts: np.ndarray,
    tf: np.ndarray,
    vf: np.ndarray,
    tl: np.ndarray,
    vl: np.ndarray,
    mn: np.ndarray,
    tmn: np.ndarray,
    mx: np.ndarray,
    tmx: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Fold the rows of each group (rows ``starts[i]`` up to the next start)
    the way the tuples fold in ClickHouse: (tfirst, first, tlast, last, min,
    tmin, max, tmax) per group. Rows need no order. For points, pass ts and
    value for each pair."""
    n = len(tf)
    counts = np.diff(np.append(starts, n))

    def back(per_group: np.ndarray) -> np.ndarray:
        return np.repeat(per_group, counts)

    gtf = np.minimum.reduceat(tf, starts)
    gvf = np.minimum.reduceat(np.where(tf == back(gtf), vf, np.inf), starts)
    gtl = np.maximum.reduceat(tl, starts)
    gvl = np.maximum.reduceat(np.where(tl == back(gtl), vl, -np.inf), starts)
    gmn = np.minimum.reduceat(mn, starts)
    gtmn = np.minimum.reduceat(np.where(mn == back(gmn), tmn, _BIG), starts)
    gmx = np.maximum.reduceat(mx, starts)
    gtmx = np.minimum.reduceat(np.where(mx == back(gmx), tmx, _BIG), starts)
    return gtf, gvf, gtl, gvl, gmn, gtmn, gmx, gtmx


def of_points(starts: np.ndarray, ts: np.ndarray, value: np.ndarray) -> M4:
    """M4 of each group of points (rows ``starts[i]`` up to the next start)."""
    if len(ts) == 0:
        return M4.empty()
    tf, vf, tl, vl, _, tmn, _, tmx = fold(starts, ts, value, ts, value, value, ts, value, ts)
    return M4(tf, vf, tl, vl, tmn, tmx)


def pair_arrays(m: M4, mn: np.ndarray, mx: np.ndarray) -> dict[str, pa.Array]:
    """The four tuple columns of tier rows, as Arrow structs."""

    def pair(a: np.ndarray, b: np.ndarray) -> pa.StructArray:
        return pa.StructArray.from_arrays([pa.array(a), pa.array(b)], names=["1", "2"])

    i64, f64 = np.int64, np.float64
    return {
        "m4_first": pair(m.tfirst.astype(i64), m.first.astype(f64)),
        "m4_last": pair(m.tlast.astype(i64), m.last.astype(f64)),
        "m4_low": pair(np.asarray(mn, f64), m.tmin.astype(i64)),
        "m4_high": pair(np.asarray(mx, f64), -m.tmax.astype(i64)),
    }
