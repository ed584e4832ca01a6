"""A lens server's head: per log partition (the sensors of one shard), the
newest seconds of the loads its loader announced (:mod:`lenshouse.stream.loaded`).

What partition p's head claims: every point at or after its ``lo`` of every
load of p. It holds them tagged by seq, so a lens pinned to floor F (the
loads of p complete at its snapshot) takes exactly the points of loads
<= F from it, and reads ClickHouse only below the head's boundary.

Why that claim holds:
- *Open.* ``base`` is p's last completed load on record, and ``lo`` is past
  the newest point stored by loads <= base (a ClickHouse read pinned to base,
  over the head's span): loads <= base have no point at or after ``lo``.
  Announcements of loads <= base are ignored.
- *Above base*, a load is *accounted* once the head holds all its rows, or
  once the head gave it up: then ``lo`` moves past its newest point (its
  time range is on record in the keeper), so the head claims nothing of it.
  ``accounted`` is the seq up to which every load of p is accounted: an
  announcement whose ``prev`` (p's previous completed load) is ``accounted``
  extends it.
- *A lens settles first.* Every load of p complete at its snapshot must be
  accounted before the head answers for p: a load announced late on the wire
  is waited for, at most ``WAIT_S`` (counted once per load, not per lens),
  then given up. A delete (never announced, it removes rows the head holds),
  or a keeper that no longer lists every load since ``accounted`` (more
  than its history fell behind), drops the partition's head: it is opened
  again, and meanwhile its lenses read ClickHouse only.

Ownership: ``_lock`` (with its condition) guards ``_parts`` and every
``_Part``'s fields; a ``Head`` has its own lock. The feed thread adds loads,
the opener thread opens partitions, request threads settle and read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lenshouse.lens.cache import chunk_span
from lenshouse.lens.head import Head, HeadPart
from lenshouse.lens.visibility import LoadSpan, Snapshot

WAIT_S = 1.0  # how long a lens waits for a completed load's announcement
HISTORY_COMPLETE = 256  # the keeper keeps this many completed loads per partition


@dataclass
class _Part:
    head: Head
    accounted: int  # every load of the partition with seq <= this is accounted
    received: dict[int, int] = field(default_factory=dict)  # seq: prev, off the chain
    waiting_since: dict[int, float] = field(default_factory=dict)  # seq: first waited


class ClusterHead:
    """A head per log partition on a lens server.

    Ownership: the opener thread opens partitions (``open``), the feed thread
    adds announced loads and gives up lost ones, request threads read. ``_lock``
    guards ``_parts`` (which partitions are open, each with its own locked
    ``Head``); ``_changed`` (on the same lock) wakes readers waiting for a load
    to arrive. ``given_up`` and ``reopened`` change under ``_lock``; ``whole``
    is a racy count by request threads; all three are read for ``/healthz``
    as they are."""

    def __init__(
        self,
        partitions: int,
        partition_of: Callable[[str, list[int]], np.ndarray],
        seconds: float = 65.0,
        max_bytes: int = 2 << 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.partitions = partitions
        self.partition_of = partition_of
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._parts: dict[int, _Part] = {}  # open partitions only
        self.given_up = 0  # loads whose range the head stopped claiming
        self.reopened = 0
        self.whole = 0  # lenses the head answered alone (no ClickHouse read)

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    # -- the opener thread --------------------------------------------------
    def closed(self) -> list[int]:
        with self._lock:
            return [p for p in range(self.partitions) if p not in self._parts]

    def since_ms(self) -> int:
        """Where an opening head's claim may start at the earliest."""
        return int(self.clock() * 1000) - int(self.seconds * 1000)

    def open(self, partition: int, base: int, newest_ms: int | None, since_ms: int) -> None:
        """Start claiming partition's loads above ``base``, and points at or
        after ``since_ms`` and past ``newest_ms`` (the newest point of loads
        <= base at or after ``since_ms``, None if none)."""
        head = Head(self.seconds, self.clock, self.max_bytes // self.partitions)
        head.open(max(since_ms - 1, newest_ms if newest_ms is not None else since_ms - 1))
        with self._lock:
            self._parts[partition] = _Part(head, base)
            self._changed.notify_all()

    # -- the feed thread ----------------------------------------------------
    def add(self, partition: int, seq: int, prev: int, rows: pa.Table) -> None:
        with self._lock:
            part = self._parts.get(partition)
            if part is None or seq <= part.accounted or seq in part.received:
                return  # not open, or a load already accounted (a replay)
            head = part.head
        head.add(seq, rows)  # under the head's own lock: requests read meanwhile
        with self._lock:
            if self._parts.get(partition) is not part:
                return  # dropped and opened again meanwhile
            part.received[seq] = prev
            _extend(part)
            self._changed.notify_all()

    # -- request threads ----------------------------------------------------
    def settle(self, snap: Snapshot) -> None:
        """Account for every load complete at ``snap`` in every open partition."""
        if snap.floors is None or snap.completed is None:
            return
        for p, (floor, completed) in enumerate(zip(snap.floors, snap.completed)):
            self._settle(p, floor, completed)

    def _settle(self, p: int, floor: int, completed: tuple[LoadSpan, ...]) -> None:
        with self._lock:
            for _ in range(len(completed) + 2):  # bounded: each round accounts a load or waits
                part = self._parts.get(p)
                if part is None or part.accounted >= floor:
                    return
                if len(completed) >= HISTORY_COMPLETE and completed[0].seq > part.accounted:
                    self._drop(p)  # the loads between ``accounted`` and the record are unknown
                    return
                s = next((s for s in completed if part.accounted < s.seq <= floor), None)
                if s is None:
                    part.accounted = floor  # no load of this partition in between
                    return
                if s.seq in part.received:
                    part.accounted = s.seq
                    _extend(part)
                    continue
                if s.erases:
                    self._drop(p)  # rows removed under the head: open it again
                    return
                now = time.monotonic()
                first = part.waiting_since.setdefault(s.seq, now)
                if now - first >= WAIT_S:
                    self._give_up(part, s)
                    continue
                self._changed.wait(WAIT_S - (now - first))

    def _drop(self, p: int) -> None:
        del self._parts[p]
        self.reopened += 1

    def _give_up(self, part: _Part, span: LoadSpan) -> None:
        part.head.disown_below(span.max_ts + 1)
        part.accounted = span.seq
        self.given_up += 1
        _extend(part)

    def read(
        self,
        tenant: str,
        sensors: list[int],
        start: int,
        end: int,
        snap: Snapshot,
        step: int,
        origin: int,
    ) -> tuple[dict[int, int], dict[int, HeadPart]]:
        """(boundary per sensor, points per sensor): the head answers for
        [boundary, end) with the points of loads up to the snapshot's floor of
        each sensor's partition; a closed partition's sensors get ``end``."""
        assert snap.floors is not None
        owner = self.partition_of(tenant, sensors)
        boundaries: dict[int, int] = {}
        points: dict[int, HeadPart] = {}
        for p in sorted(set(owner.tolist())):
            ids = [s for s, o in zip(sensors, owner) if o == p]
            with self._lock:
                part = self._parts.get(p)
            if part is None or part.accounted < snap.floors[p]:
                boundaries.update((s, end) for s in ids)
                continue
            boundary, got = part.head.read(
                tenant, ids, start, end, snap.floors[p], chunk_span(step), step, origin
            )
            boundaries.update((s, boundary) for s in ids)
            points.update(got)
        if all(b <= start for b in boundaries.values()):
            self.whole += 1  # a racy count, for /healthz only
        return boundaries, points

    def stats(self) -> dict:
        with self._lock:
            parts = dict(self._parts)
        return {
            "open_partitions": sorted(parts),
            "points": sum(p.head.points for p in parts.values()),
            "bytes": sum(p.head.bytes for p in parts.values()),
            "covered_ms": min((p.head.covered_ms() for p in parts.values()), default=0),
            "given_up": self.given_up,
            "reopened": self.reopened,
            "lenses_answered_whole": self.whole,
        }


def _extend(part: _Part) -> None:
    """Move ``accounted`` along received loads: one whose previous load is
    accounted for is the partition's next (its loads complete in seq order),
    so every load up to it is accounted for too."""
    for _ in range(len(part.received) + 1):
        for s in [s for s in part.received if s <= part.accounted]:
            del part.received[s]
        for s in [s for s in part.waiting_since if s <= part.accounted]:
            del part.waiting_since[s]
        nxt = min((s for s, prev in part.received.items() if prev <= part.accounted), default=None)
        if nxt is None:
            return
        part.accounted = nxt
