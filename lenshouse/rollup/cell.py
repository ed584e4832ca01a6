"""What a rollup cell holds: one definition, from which the stores' columns, the
folds in SQL (``lenshouse.storage.cell_sql``) and in numpy are derived.

A cell of a tier holds, per (tenant, sensor, cell start), *states* that fold
exactly: any set of rows of a cell, merged or not, folds to what the cell's raw
points give. Each state names how two of them combine (sum, min or max: the
same function in ClickHouse and as a numpy ufunc), what one raw point
contributes to it, and what a row holding no points contributes (so a column
added to an older store changes nothing until filled).

- ``STATS``: sum, count, lowest and highest value (avg = sum / count);
- ``M4``: the first, last, lowest and highest point as (time, value) pairs,
  see :mod:`lenshouse.rollup.m4`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDS = {"sum": np.add, "min": np.minimum, "max": np.maximum}
_BIG = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class Stat:
    """A state of one number per cell."""

    name: str  # its column, in every tier and in a lens read
    fold: str  # a key of FOLDS
    kind: str  # "Float64" or "UInt64"
    of_point: str  # what a raw point contributes: its "value", or "1" (a count)
    codec: str  # how the stores compress it (the value columns alike)
    empty: float  # what a row without points holds (folds to nothing)

    @property
    def ufunc(self) -> np.ufunc:
        return FOLDS[self.fold]

    @property
    def dtype(self) -> type:
        return np.uint64 if self.kind == "UInt64" else np.float64


@dataclass(frozen=True)
class Pair:
    """An M4 state: a (time, value) pair, or (value, time), folded whole."""

    name: str
    fold: str  # min or max of the tuple
    of_point: tuple[str, str]  # the pair a raw point contributes, of ts and value
    kinds: tuple[str, str]  # each element's type
    empty: tuple[float, float]  # what a row without points holds (folds to nothing)


STATS: tuple[Stat, ...] = (
    Stat("sum", "sum", "Float64", "value", "ZSTD(1)", 0.0),
    Stat("cnt", "sum", "UInt64", "1", "T64, ZSTD(1)", 0),
    Stat("min", "min", "Float64", "value", "ZSTD(1)", float("inf")),
    Stat("max", "max", "Float64", "value", "ZSTD(1)", float("-inf")),
)
STAT_NAMES = tuple(s.name for s in STATS)

M4: tuple[Pair, ...] = (
    Pair("m4_first", "min", ("ts", "value"), ("Int64", "Float64"), (_BIG, float("nan"))),
    Pair("m4_last", "max", ("ts", "value"), ("Int64", "Float64"), (-_BIG - 1, float("nan"))),
    Pair("m4_low", "min", ("value", "ts"), ("Float64", "Int64"), (float("inf"), 0)),
    Pair("m4_high", "max", ("value", "-ts"), ("Float64", "Int64"), (float("-inf"), 0)),
)
M4_NAMES = tuple(p.name for p in M4)


def stats_of_points(starts: np.ndarray, value: np.ndarray) -> dict[str, np.ndarray]:
    """Each stat of each group of points (rows ``starts[i]`` up to the next
    start, ``starts`` non-empty), in its numpy type."""
    out = {}
    for s in STATS:
        if s.of_point == "1":  # a count: the groups' lengths
            out[s.name] = np.diff(np.append(starts, len(value))).astype(s.dtype)
        else:
            out[s.name] = s.ufunc.reduceat(value, starts).astype(s.dtype, copy=False)
    return out


def fold_stats(stats: dict[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """Groups of cells' stats folded into one cell each, as ClickHouse folds them."""
    return {s.name: s.ufunc.reduceat(stats[s.name], starts) for s in STATS}
