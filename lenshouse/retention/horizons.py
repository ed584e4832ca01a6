"""Horizons: where each tenant's sources stop holding data, and the step
floor that follows for a lens.

Maintenance writes a source's expiry mark before it drops anything below it,
and then waits longer than ``REFRESH_S`` (see :mod:`lenshouse.retention.maintain`),
so every reader knows a mark before the data under it goes. A lens whose
window starts below the raw mark is answered from the tiers that still hold
its start, at a step that is a multiple of the finest of them: each bucket is
then made of whole cells, which sum exactly what the raw points as ingested
would. The answer says which floor applied and why.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lenshouse.points import Invalid
from lenshouse.retention.policy import RAW, SOURCES, resolution_ms, tier_of
from lenshouse.rollup.tiers import Tier
from lenshouse.storage.errors import RetryableError, StorageError
from lenshouse.storage.store import Store

REFRESH_S = 5.0  # marks are read again at most this often
# Not trusted once reading them has failed for this long: longer than the
# one-minute outages a cluster rides through (maintenance waits longer still).
STALE_S = 90.0


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclass(frozen=True)
class Floor:
    """The finest source that holds a lens's start, when raw points do not."""

    source: str
    res_ms: int
    expired: tuple[tuple[str, int], ...]  # finer sources and their marks
    tiers: tuple[Tier, ...]  # the tiers that hold the start (the planner's choice)

    @property
    def reason(self) -> str:
        gone = " and ".join(
            f"{'raw points' if s == RAW else s + ' cells'} before {when(m)}"
            for s, m in self.expired
        )
        if not self.tiers:
            return f"{gone} have expired from every source; those buckets are empty"
        return f"{gone} have expired; the {self.source} tier answers exactly"

    def step(self, step: int, explicit: bool) -> int:
        """``step`` if the floor answers it exactly, else the next multiple of
        the floor's cell; an explicit step it cannot answer is refused."""
        if step % self.res_ms == 0:
            return step
        if explicit:
            raise Invalid(
                f"step {step} ms cannot be answered exactly here: {self.reason};"
                f" use a multiple of {self.res_ms} ms"
            )
        return -(-step // self.res_ms) * self.res_ms

    def to_json(self) -> dict:
        return {"step_ms": self.res_ms, "source": self.source, "reason": self.reason}


class Horizons:
    """Expiry marks per (tenant, source), as the store holds them.

    The first read is made by the caller; later ones by a refresher thread of
    their own, so a lens never waits for a slow read of the marks (a server
    cut off, say). Ownership: ``_marks`` and ``_read_at`` are replaced whole
    under ``_lock`` by whoever reads; ``_refreshing`` is set under it too."""

    def __init__(
        self,
        store: Store,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._marks: dict[str, dict[str, int]] = {}
        self._read_at: float | None = None
        self._tried_at = float("-inf")
        self._refreshing = False
        self.error: str | None = None  # the last failed read's, until one succeeds

    def refresh(self) -> None:
        """Read the marks now. Marks never go down, so what is known is kept
        where a read is older (a background read that began before a newer
        one finished must not undo it)."""
        rows = self.store.expiry_marks().to_pylist()
        with self._lock:
            marks = {t: dict(m) for t, m in self._marks.items()}
            for r in rows:
                mine = marks.setdefault(r["tenant"], {})
                mine[r["source"]] = max(mine.get(r["source"], r["before"]), int(r["before"]))
            self._marks, self._read_at, self.error = marks, self.clock(), None

    def _background(self) -> None:
        try:
            self.refresh()
        except StorageError as e:
            self.error = str(e)
        finally:
            with self._lock:
                self._refreshing = False

    def marks(self, tenant: str) -> dict[str, int]:
        now = self.clock()
        if self._read_at is None or now - self._read_at > STALE_S:
            # Never read, or not for a while: a server nobody asked for a
            # while has old marks without any read having failed. Read them
            # now; only a read that fails refuses the lens (at once while
            # the reads in the background keep failing).
            if self.error is not None and now - self._tried_at < self.refresh_s:
                raise RetryableError(f"expiry marks could not be read: {self.error}")
            self._tried_at = now
            try:
                self.refresh()
            except StorageError as e:
                self.error = str(e)
                raise RetryableError(f"expiry marks could not be read: {e}") from e
        elif now - self._tried_at >= self.refresh_s:
            with self._lock:
                start = not self._refreshing
                self._refreshing = True
                self._tried_at = now
            if start:
                threading.Thread(target=self._background, name="marks", daemon=True).start()
        return self._marks.get(tenant, {})

    def raw_mark(self, tenant: str) -> int | None:
        return self.marks(tenant).get(RAW)

    def floor(self, tenant: str, start: int) -> Floor | None:
        """None while raw points hold ``start``; else the floor the window meets."""
        marks = self.marks(tenant)
        if marks.get(RAW, start) <= start:
            return None
        expired = [(s, marks[s]) for s in SOURCES if marks.get(s, start) > start]
        holding = [s for s in SOURCES if marks.get(s, start) <= start]
        tiers = tuple(t for s in holding if (t := tier_of(s)) is not None)
        source = holding[0] if holding else SOURCES[-1]
        return Floor(source, resolution_ms(source), tuple(expired), tiers)
