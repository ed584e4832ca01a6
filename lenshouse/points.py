"""The point batch: the unit that flows from a write request to ClickHouse.

A point is (tenant, sensor, ts, value); (tenant, sensor, ts) identifies it.
A batch holds one tenant and three aligned numpy columns, so every stage
works on whole arrays and never loops over points in Python.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_TENANT = "default"

# 2000-01-01T00:00:00Z in epoch milliseconds: older timestamps are refused.
MIN_TS_MS = 946_684_800_000
# Points may lead the server clock by at most one day.
MAX_FUTURE_MS = 86_400_000
MAX_SENSOR_ID = 2**32 - 1


class BadInput(ValueError):
    """A request the server refuses: malformed (the base kind), or one of the
    kinds below. The API answers each kind with its own status."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Invalid(BadInput):
    """Well-formed, but a value is out of its bounds or inconsistent."""


class TooLarge(BadInput):
    """More than the server takes in one request."""


class Unsupported(BadInput):
    """An encoding or content type the server does not read."""


class NotSupported(BadInput):
    """Something this deployment cannot do (its ClickHouse is too old)."""


@dataclass(frozen=True)
class PointBatch:
    tenant: str
    sensor: np.ndarray  # uint32
    ts: np.ndarray  # int64, epoch milliseconds
    value: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.sensor.shape[0])

    @classmethod
    def from_columns(cls, tenant: str, sensor, ts, value) -> PointBatch:
        """Build a batch from any array-likes, refusing wrong types and shapes."""
        s = _as_column(sensor, "sensor", np.uint32, integral=True)
        t = _as_column(ts, "ts", np.int64, integral=True)
        v = _as_column(value, "value", np.float64, integral=False)
        if not (len(s) == len(t) == len(v)):
            raise BadInput(
                f"columns differ in length: sensor={len(s)}, ts={len(t)}, value={len(v)}"
            )
        return cls(check_tenant(tenant), s, t, v)

    def validate(self, now_ms: int | None = None) -> PointBatch:
        """Check the semantic rules; a failing batch is refused whole (HTTP 422)."""
        if len(self) == 0:
            return self
        bad = ~np.isfinite(self.value)
        if bad.any():
            i = int(np.argmax(bad))
            raise Invalid(
                f"value must be a finite number (NaN and ±inf are refused): "
                f"{int(bad.sum())} point(s), first at row {i} (sensor {int(self.sensor[i])}, "
                f"ts {int(self.ts[i])})"
            )
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        lo, hi = int(self.ts.min()), int(self.ts.max())
        if lo < MIN_TS_MS:
            raise Invalid(
                f"ts must be epoch milliseconds on or after 2000-01-01 ({MIN_TS_MS}); got {lo}"
            )
        if hi > now_ms + MAX_FUTURE_MS:
            raise Invalid(f"ts {hi} is more than one day ahead of the server clock ({now_ms})")
        return self


@dataclass(frozen=True)
class Erasure:
    """A delete in the log: the points of ``sensor`` with ``start <= ts < end``
    that were accepted before it. It travels the same path as point batches
    (log, loader), so it applies in order with them; points accepted after it
    are stored again (a rewrite of the range). Holds no points (``len`` 0)."""

    tenant: str
    sensor: np.ndarray  # uint32, distinct
    start: int
    end: int

    def __len__(self) -> int:
        return 0

    @classmethod
    def of(cls, tenant: str, sensors, start: int, end: int) -> Erasure:
        s = np.unique(_as_column(sensors, "sensor", np.uint32, integral=True))
        if len(s) == 0:
            raise Invalid("a delete names at least one sensor")
        if end <= start:
            raise Invalid(f"end ({end}) must be after start ({start})")
        if start < MIN_TS_MS:
            raise Invalid(f"start must be on or after 2000-01-01 ({MIN_TS_MS}); got {start}")
        return cls(check_tenant(tenant), s, int(start), int(end))


def check_tenant(tenant: str | None) -> str:
    if tenant is None or tenant == "":
        return DEFAULT_TENANT
    if not TENANT_RE.match(tenant):
        raise BadInput("tenant must be 1-64 characters of letters, digits, '_', '.', '-'")
    return tenant


def _as_column(data, name: str, dtype: type, integral: bool) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.dtype == dtype:
        return data
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as e:
        raise BadInput(f"column {name!r}: {e}") from None
    if arr.ndim != 1:
        raise BadInput(f"column {name!r} must be a flat list")
    if arr.size == 0:
        return np.empty(0, dtype=dtype)
    kind = arr.dtype.kind
    if integral:
        if kind == "O" and all(isinstance(x, int) and not isinstance(x, bool) for x in arr):
            raise BadInput(f"column {name!r} is out of range")  # beyond 64 bits
        if kind not in "iu":
            raise BadInput(f"column {name!r} must hold integers, got {_kind_name(arr)}")
        if dtype is np.uint32 and (arr.min() < 0 or arr.max() > MAX_SENSOR_ID):
            raise BadInput(f"column {name!r} must hold ids in 0..{MAX_SENSOR_ID}")
        if kind == "u" and arr.dtype.itemsize == 8 and arr.max() > np.iinfo(np.int64).max:
            raise BadInput(f"column {name!r} is out of range")
    elif kind not in "iuf":
        raise BadInput(f"column {name!r} must hold numbers, got {_kind_name(arr)}")
    return arr.astype(dtype, copy=False)


def _kind_name(arr: np.ndarray) -> str:
    return {"f": "floats", "b": "booleans", "U": "strings", "O": "mixed values"}.get(
        arr.dtype.kind, str(arr.dtype)
    )
