"""Lenses yield to loading while a partition catches up.

After an outage, a loader has a backlog to load; until it is loaded, every
lens misses the backlog's points (lenses are exact as of completed loads),
so the sooner loading catches up, the sooner lenses show the present again.
Where lens servers share CPU with the write path (one host, or ClickHouse
itself, which both loads and reads), lenses then take a bounded share of
it, as VictoriaMetrics puts ingestion before queries.

Each loader says how far behind it is in every load it announces
(:mod:`lenshouse.stream.loaded`). A partition ``start_s`` behind starts the
yielding; it lasts until every such partition announces under ``stop_s``
(or is not heard of for ``STALE_S``: a loader that stopped announcing
cannot be helped by lenses waiting). While it lasts, lenses run one at a
time, each followed by a pause that keeps lens work to ``share`` of the
time. Lenses stay exact; they only answer later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

START_S = 10.0  # a partition this far behind starts the yielding (steady state stays under)
STOP_S = 2.0  # ... which lasts until its loads are announced this close behind
SHARE = 0.25  # while yielding, lens work takes at most this share of the time
STALE_S = 30.0  # a partition not heard of for this long no longer counts as behind
MAX_PAUSE_S = 2.0  # the longest pause after one lens


class CatchUp:
    """Ownership: ``note`` runs on the announcements' thread, ``turn`` on
    request threads. ``_lock`` guards ``_behind`` (partition: when it was
    last heard behind); ``_turn`` lets one lens run at a time while yielding.
    ``yielded`` counts the lenses that ran paced (read by anyone)."""

    def __init__(self, start_s: float = START_S, stop_s: float = STOP_S, share: float = SHARE):
        if not 0 < share <= 1 or stop_s > start_s:
            raise ValueError("share must be in (0, 1] and stop_s at most start_s")
        self.start_s, self.stop_s, self.share = start_s, stop_s, share
        self._lock = threading.Lock()
        self._behind: dict[int, float] = {}
        self._turn = threading.Lock()
        self.yielded = 0

    def note(self, partition: int, lag_s: float, now: float | None = None) -> None:
        """A load of ``partition`` announced ``lag_s`` behind."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if lag_s >= self.start_s or (partition in self._behind and lag_s >= self.stop_s):
                self._behind[partition] = now
            else:
                self._behind.pop(partition, None)

    def catching_up(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return any(now - t < STALE_S for t in self._behind.values())

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Around one lens: nothing while no partition is behind; else one
        lens at a time, then a pause of (1/share - 1) times its duration."""
        if not self.catching_up():
            yield
            return
        with self._turn:
            t0 = time.monotonic()
            try:
                yield
            finally:
                self.yielded += 1
                spent = time.monotonic() - t0
                time.sleep(min(MAX_PAUSE_S, spent * (1 / self.share - 1)))
