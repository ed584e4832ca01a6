"""What a lens may see: loads that completed, and the ones under way.

A load inserts raw rows and, through materialized views, rollup rows; the two
become visible at slightly different moments. Lenses therefore read raw rows
only up to the last completed load (``raw.seq``), keep rollup reads clear of
any load in flight, and re-run in the rare case that a load started while they
read rollups it touches.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadSpan:
    """The rows one load adds: its sequence number, tenants and time range."""

    seq: int
    tenants: frozenset[str]
    min_ts: int
    max_ts: int

    def touches(self, tenant: str, lo: int, hi: int) -> bool:
        return tenant in self.tenants and self.min_ts < hi and self.max_ts >= lo


@dataclass(frozen=True)
class Snapshot:
    committed_seq: int  # raw rows with seq <= this are complete in every table
    inflight: tuple[LoadSpan, ...]
    started: int  # loads begun so far


class Visibility:
    def __init__(self, committed_seq: int = -1, history: int = 256) -> None:
        self._cond = threading.Condition()
        self._committed = committed_seq
        self._inflight: dict[int, LoadSpan] = {}
        self._started = 0
        self._recent: deque[tuple[int, LoadSpan]] = deque(maxlen=history)

    def begin(self, span: LoadSpan) -> None:
        with self._cond:
            self._started += 1
            self._inflight[span.seq] = span
            self._recent.append((self._started, span))

    def end(self, seq: int) -> None:
        with self._cond:
            self._inflight.pop(seq, None)
            self._committed = max(self._committed, seq)
            self._cond.notify_all()

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(self._committed, tuple(self._inflight.values()), self._started)

    def started_since(self, snap: Snapshot) -> list[LoadSpan] | None:
        """Loads begun after ``snap``; None if too many to tell."""
        with self._cond:
            if self._started == snap.started:
                return []
            newer = [span for n, span in self._recent if n > snap.started]
            if len(newer) < self._started - snap.started:
                return None
            return newer

    @property
    def committed_seq(self) -> int:
        with self._cond:
            return self._committed

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no load is in flight."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._inflight, timeout)
