"""PromQL's subset (:mod:`lenshouse.prometheus.promql`) evaluated with lenses.

A range function at time t covers Prometheus' window ``(t − range, t]``: the
samples with ``t − range < ts <= t``, in whole milliseconds
``[t − range + 1, t + 1)``. For evaluation times ``start + i·step`` every
window's edges lie on one grid: buckets of ``g = gcd(step, range)`` that start
``(start + 1) mod g`` past the epoch's grid. One lens (per ten series) reads
those buckets exactly (rollup cells inside them, raw points only at their
edges: see :mod:`lenshouse.lens.planner`), and each window folds the
``range / g`` buckets it covers. So every answer equals the function computed
on the raw samples, late data included, as of the completed loads; series
with no sample in a window have no point there, as in Prometheus.
``last_over_time`` (and a selector on its own) reads each bucket's last point
(the lens's M4 points) and takes, per window, the last non-empty bucket's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lenshouse.lens.answer import MAX_SENSORS
from lenshouse.lens.engine import LensEngine
from lenshouse.prometheus.promql import Aggregate, Expr, Number, PromQLError, RangeFunction
from lenshouse.storage.catalog import Catalog

MAX_SERIES = 50  # series one query may select (read ten at a time)
MAX_POINTS = 11_000  # evaluation times per query, as Prometheus


@dataclass(frozen=True)
class Times:
    """Evaluation times ``start + i·step``, i < n (ms)."""

    start: int
    step: int
    n: int

    @classmethod
    def range(cls, start: int, end: int, step: int) -> Times:
        if step <= 0:
            raise PromQLError("zero or negative query resolution step widths are not accepted")
        if end < start:
            raise PromQLError("end timestamp must not be before start time")
        n = (end - start) // step + 1
        if n > MAX_POINTS:
            raise PromQLError(
                f"exceeded maximum resolution of {MAX_POINTS:,} points per timeseries;"
                " try decreasing the query resolution (?step=XX)"
            )
        return cls(start, step, n)

    @property
    def ms(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.n, dtype=np.int64)


@dataclass
class Vector:
    """An expression's value per series and evaluation time (NaN: no value)."""

    labels: list[dict[str, str]]
    values: np.ndarray  # (series, times) float64


@dataclass
class Scalar:
    value: float


class Evaluator:
    def __init__(self, catalog: Catalog, lenses: LensEngine) -> None:
        self.catalog = catalog
        self.lenses = lenses

    def evaluate(self, expr: Expr, tenant: str, times: Times) -> Vector | Scalar:
        if isinstance(expr, Number):
            return Scalar(expr.value)
        if isinstance(expr, RangeFunction):
            return self._range_function(expr, tenant, times)
        if isinstance(expr, Aggregate):
            inner = self.evaluate(expr.inner, tenant, times)
            assert isinstance(inner, Vector)  # the parser refuses numbers here
            return aggregate(expr, inner)
        raise PromQLError(f"cannot evaluate {expr!r}")

    def _range_function(self, f: RangeFunction, tenant: str, times: Times) -> Vector:
        series = self.catalog.list(tenant, list(f.selector.matchers))
        if len(series) > MAX_SERIES:
            raise PromQLError(
                f"{f.selector.text} selects {len(series)} series; a query takes at most"
                f" {MAX_SERIES}"
            )
        r = f.range_ms
        g = math.gcd(times.step, r) if times.n > 1 else r
        lo = times.start - r + 1  # the first window's first millisecond
        hi = times.start + (times.n - 1) * times.step + 1
        k = (hi - lo) // g
        first = (times.step // g) * np.arange(times.n)  # each window's first bucket
        width = r // g
        out = np.full((len(series), times.n), np.nan)
        for c in range(0, len(series), MAX_SENSORS):
            chunk = series[c : c + MAX_SENSORS]
            ids = [s["sensor"] for s in chunk]
            m4 = f.name == "last_over_time"
            lens = self.lenses.lens(ids, lo, hi, step=g, tenant=tenant, origin=lo % g, m4=m4)
            for j, s in enumerate(lens.series):
                b = (s.t - lo) // g
                dense = _Dense(k)
                dense.put(b, s.sum, s.count, s.min, s.max)
                if s.m4 is not None:
                    dense.last[b] = s.m4.last
                out[c + j] = dense.windows(f.name, first, width)
        labels = [
            {k: v for k, v in s["labels"].items() if f.keeps_name or k != "__name__"}
            for s in series
        ]
        return Vector(labels, out)


class _Dense:
    """One series' buckets on the query's grid, empty ones included."""

    def __init__(self, k: int) -> None:
        self.sum = np.zeros(k + 1)  # one spare slot: reduceat needs indices < len
        self.cnt = np.zeros(k + 1, np.int64)
        self.min = np.full(k + 1, np.inf)
        self.max = np.full(k + 1, -np.inf)
        self.last = np.full(k + 1, np.nan)  # each bucket's last point (for last_over_time)

    def put(self, b, sm, cnt, mn, mx) -> None:
        self.sum[b], self.cnt[b], self.min[b], self.max[b] = sm, cnt, mn, mx

    def windows(self, name: str, first: np.ndarray, width: int) -> np.ndarray:
        """The function over buckets [first, first + width) of each window."""
        idx = np.empty(2 * len(first), np.int64)
        idx[0::2], idx[1::2] = first, first + width
        cnt = np.add.reduceat(self.cnt, idx)[0::2]
        if name == "count_over_time":
            value = cnt.astype(np.float64)
        elif name == "min_over_time":
            value = np.minimum.reduceat(self.min, idx)[0::2]
        elif name == "max_over_time":
            value = np.maximum.reduceat(self.max, idx)[0::2]
        elif name == "last_over_time":
            # The last non-empty bucket at or before each window's last bucket.
            seen = np.maximum.accumulate(np.where(self.cnt > 0, np.arange(len(self.cnt)), 0))
            value = self.last[seen[first + width - 1]]
        else:
            value = np.add.reduceat(self.sum, idx)[0::2]
            if name == "avg_over_time":
                value = value / np.maximum(cnt, 1)
        return np.where(cnt > 0, value, np.nan)


def aggregate(agg: Aggregate, inner: Vector) -> Vector:
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for i, labels in enumerate(inner.labels):
        groups.setdefault(_group_key(agg, labels), []).append(i)
    out = np.full((len(groups), inner.values.shape[1]), np.nan)
    for g, rows in enumerate(groups.values()):
        v = inner.values[rows]
        present = ~np.isnan(v)
        n = present.sum(axis=0)
        with np.errstate(all="ignore"):
            if agg.op == "count":
                col = n.astype(np.float64)
            elif agg.op == "min":
                col = np.where(present, v, np.inf).min(axis=0)
            elif agg.op == "max":
                col = np.where(present, v, -np.inf).max(axis=0)
            else:
                col = np.where(present, v, 0.0).sum(axis=0)
                if agg.op == "avg":
                    col = col / np.maximum(n, 1)
        out[g] = np.where(n > 0, col, np.nan)
    return Vector([dict(k) for k in groups], out)


def _group_key(agg: Aggregate, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    if agg.by is not None:
        kept: Iterable[tuple[str, str]] = ((k, labels[k]) for k in agg.by if labels.get(k))
    elif agg.without is not None:
        drop = {*agg.without, "__name__"}
        kept = ((k, v) for k, v in labels.items() if k not in drop)
    else:
        kept = ()
    return tuple(sorted(kept))
