"""Per-tenant quotas: points written per second, lens requests per second,
and the number of sensors a tenant may have.

Each is a token bucket per tenant, refilled continuously at the quota's rate
and holding ``BURST_S`` seconds of it. A request that finds too few tokens is
refused with the seconds until there would be enough; a write larger than the
whole bucket passes when the bucket is full and leaves it in debt, so a big
batch is slowed, never refused for good. Quotas are per process: behind N
gateways a tenant may write up to N times its quota.

Ownership: ``_buckets`` is guarded by ``_lock`` (request threads and the
event loop both call ``take``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

BURST_S = 2.0


@dataclass(frozen=True)
class Quotas:
    points_per_s: float = 0.0  # 0: no limit
    lens_per_s: float = 0.0
    sensors: int = 0

    def __post_init__(self) -> None:
        if min(self.points_per_s, self.lens_per_s, self.sensors) < 0:
            raise ValueError("quotas are 0 (no limit) or more")


class Bucket:
    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = rate * BURST_S
        self.tokens = self.capacity
        self.at = now

    def take(self, n: float, now: float) -> float:
        """0 if ``n`` tokens were taken, else the seconds to wait first."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        need = min(n, self.capacity)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


class Limiter:
    """One kind of quota (``rate`` units a second per tenant; 0: unlimited).

    Ownership: request threads call ``take``; ``_lock`` guards ``_buckets`` and
    each bucket's state, and ``refused`` (read by ``/metrics`` as it is)."""

    def __init__(self, rate: float, clock=time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        self.refused = 0

    def take(self, tenant: str, n: float = 1.0) -> int:
        """0 when allowed; else the whole seconds a client should wait (≥ 1)."""
        if self.rate <= 0:
            return 0
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = Bucket(self.rate, now)
            wait = bucket.take(n, now)
            if wait > 0:
                self.refused += 1
        return max(1, math.ceil(wait)) if wait > 0 else 0


class SensorLimit:
    """At most ``limit`` distinct sensors per tenant (0: unlimited). A batch
    that would bring new sensors past it is refused whole. Counted from what
    the store's catalog holds (``known``, read once) and what this process has
    admitted since; behind N gateways, which hold no catalog, a tenant may
    reach N times the limit.

    Ownership: ``_seen`` is guarded by ``_lock``."""

    def __init__(self, limit: int, known: Callable[[], Iterable[tuple[str, int]]] | None = None):
        self.limit = limit
        self.known = known
        self._lock = threading.Lock()
        self._seen: dict[str, set[int]] | None = None
        self.refused = 0

    def admit(self, tenant: str, sensors: np.ndarray) -> int | None:
        """None when allowed (and then counted); else how many sensors the
        tenant would have."""
        if self.limit <= 0:
            return None
        ids = np.unique(sensors)
        with self._lock:
            if self._seen is None:
                self._seen = {}
                for t, s in self.known() if self.known else ():
                    self._seen.setdefault(t, set()).add(int(s))
            have = self._seen.setdefault(tenant, set())
            if len(have) + len(ids) > self.limit:  # only then count the new ones
                new = {int(s) for s in ids} - have
                if len(have) + len(new) > self.limit:
                    self.refused += 1
                    return len(have) + len(new)
            have.update(int(s) for s in ids)
        return None
