"""The brute-force oracle: a lens computed directly from raw points with numpy.

Tests and fault scenarios compare every lens answer with it. It shares no code
with the planner or the SQL, only the definition of a bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Expected:
    t: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    # M4: first and last point, times of the lowest and highest value (earliest on a tie)
    tfirst: np.ndarray | None = None
    first: np.ndarray | None = None
    tlast: np.ndarray | None = None
    last: np.ndarray | None = None
    tmin: np.ndarray | None = None
    tmax: np.ndarray | None = None

    @property
    def avg(self) -> np.ndarray:
        return self.sum / self.count


def brute_force(
    ts: np.ndarray, value: np.ndarray, start: int, end: int, step: int, origin: int = 0
) -> Expected:
    """Buckets [origin + k*step, origin + (k+1)*step) ∩ [start, end) of one
    sensor's raw points."""
    m = (ts >= start) & (ts < end)
    bucket = (ts[m] - origin) // step
    v = value[m]
    keys, inv = np.unique(bucket, return_inverse=True)
    n = len(keys)
    mn = np.full(n, np.inf)
    mx = np.full(n, -np.inf)
    np.minimum.at(mn, inv, v)
    np.maximum.at(mx, inv, v)
    t = ts[m]
    # M4 by sorting each bucket's points: by time for first and last; by value
    # (then time) for the lowest and highest.
    by_time = np.lexsort((t, inv))
    by_low = np.lexsort((t, v, inv))
    by_high = np.lexsort((t, -v, inv))
    heads = np.searchsorted(inv[by_time], np.arange(n))
    tails = np.searchsorted(inv[by_time], np.arange(n), side="right") - 1
    return Expected(
        keys * step + origin,
        np.bincount(inv, weights=v, minlength=n),
        np.bincount(inv, minlength=n),
        mn,
        mx,
        t[by_time][heads],
        v[by_time][heads],
        t[by_time][tails],
        v[by_time][tails],
        t[by_low][heads],
        t[by_high][heads],
    )


def mismatch(series, expected: Expected, rtol: float = 1e-9) -> str | None:
    """None if a lens series equals the oracle; else what differs."""
    if not np.array_equal(series.t, expected.t):
        return f"bucket starts differ ({len(series.t)} vs {len(expected.t)} buckets)"
    if not np.array_equal(series.count, expected.count):
        i = int(np.argmax(series.count != expected.count))
        return f"count differs at t={expected.t[i]}: {series.count[i]} vs {expected.count[i]}"
    if not np.array_equal(series.min, expected.min) or not np.array_equal(series.max, expected.max):
        return "min or max differs"
    m4 = getattr(series, "m4", None)  # the engine's series; a client's has the columns
    if m4 is None and getattr(series, "tfirst", None) is not None:
        m4 = series
    if m4 is not None:
        for name in ("tfirst", "first", "tlast", "last", "tmin", "tmax"):
            got, want = getattr(m4, name), getattr(expected, name)
            if not np.array_equal(got, want):
                i = int(np.argmax(got != want))
                return f"{name} differs at t={expected.t[i]}: {got[i]} vs {want[i]}"
    scale = np.maximum(np.abs(expected.avg), 1e-300)
    bad = np.abs(series.avg - expected.avg) > rtol * scale + 1e-12
    if bad.any():
        i = int(np.argmax(bad))
        return f"avg differs at t={expected.t[i]}: {series.avg[i]!r} vs {expected.avg[i]!r}"
    return None
