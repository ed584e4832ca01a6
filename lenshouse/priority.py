"""Who waits when ingest, merges and lenses share the cores.

In the embedded store ClickHouse runs inside this process, so its background
merges, the loader's inserts and the lens queries compete for the same two
cores. A person is waiting on a lens; nobody is waiting on a merge. So
ClickHouse's merge and move threads run at a lower OS priority (Linux keeps a
nice value per thread): during a burst they take whatever the lenses and the
inserts leave, and catch up when the burst is over.

Ownership: a :class:`Renicer` is used by one thread at a time (the loader's
store thread, from its ``on_loaded`` callback); its fields are that thread's.
"""

from __future__ import annotations

import os
from pathlib import Path

BACKGROUND_NICE = 10  # CFS gives a nice-10 thread ~1/10 of a nice-0 one's share
# ClickHouse's names for its merge/mutation, move and fetch pools' threads.
BACKGROUND_THREADS = frozenset({"MergeMutate", "Move", "Fetch"})
_TASKS = Path("/proc/self/task")


def lower(native_id: int, nice: int) -> bool:
    """Raise thread ``native_id``'s nice value to ``nice``; False where the
    platform does not allow it (the thread then keeps its priority)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, native_id) < nice:
            os.setpriority(os.PRIO_PROCESS, native_id, nice)
        return True
    except (OSError, AttributeError):
        return False


class Renicer:
    """Lowers the priority of ClickHouse's background threads as they appear.

    Only those: a thread inherits its creator's nice value, so a niced
    loader would hand it to the query threads that ClickHouse's pool starts
    on its behalf, and lenses would then run on them. For the same reason a
    query thread found niced (started by a merge) is put back where the
    platform allows it."""

    def __init__(self, nice: int = BACKGROUND_NICE) -> None:
        self.nice = nice
        self.base = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
        self._seen: set[int] = set()
        self.lowered = 0  # threads lowered so far (for /metrics and tests)
        self.restored = 0  # query threads put back to the base priority

    def sweep(self) -> None:
        """Lower any background thread not seen yet."""
        if self.nice <= 0 or not _TASKS.is_dir():
            return
        for entry in _TASKS.iterdir():
            tid = int(entry.name)
            if tid in self._seen:
                continue
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue  # the thread has just ended
            if name in BACKGROUND_THREADS:
                self._seen.add(tid)
                self.lowered += lower(tid, self.nice)
            elif _nice(tid) > self.base:
                self.restored += _restore(tid, self.base)


def _nice(tid: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return 0


def _restore(tid: int, nice: int) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError:
        return False  # lowering a nice value needs CAP_SYS_NICE or RLIMIT_NICE
