"""What a lens server may see, read from the keeper: the loads of every loader.

A snapshot reads the load counter and each partition's document: its
pending load and its last completed ones. A partition's loads complete one
at a time, in seq order, and write one shard, so the shard's *floor* (below
the pending load, else the last completed one) says exactly which of its
rows a lens may read (:mod:`lenshouse.storage.replicated.pinned`); the
completed loads on record tell the chunk cache what changed since a chunk
was read. Loads begun after a snapshot (``begun_after``) are read from the
same documents, for ETags and deletes.

Reads go through ``sync`` first, so the keeper server this process talks to
has caught up with the leader: no load whose insert a lens could see is
missing from what it reads next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from lenshouse.coordination import progress
from lenshouse.coordination.zk import Paths, keeper_errors
from lenshouse.lens.visibility import LoadSpan, Snapshot


def floor(doc: progress.PartitionDoc) -> int:
    """The seq up to which every load of the partition is complete: below its
    pending load (its loads run one at a time, in seq order), else its last
    completed one; -1 before its first."""
    if doc.pending:
        return int(doc.pending["seq"]) - 1
    if doc.history:
        return int(doc.history[-1]["seq"])
    return -1


class _Parsed(NamedTuple):
    zxid: int  # the node's last modification: same zxid, same content
    doc: progress.PartitionDoc
    floor: int
    pending: LoadSpan | None
    completed: tuple[LoadSpan, ...]

    @classmethod
    def of(cls, zxid: int, doc: progress.PartitionDoc) -> _Parsed:
        pending = progress.span_of(doc.span) if doc.pending and doc.span else None
        completed = tuple(progress.span_of(h) for h in doc.history or ())
        return cls(zxid, doc, floor(doc), pending, completed)


class ClusterVisibility:
    """Ownership: each call reads the keeper; any request thread may use it.
    ``_parsed`` (each partition's document as last parsed, reused while the
    node is unchanged) is guarded by ``_lock``."""

    can_hold = False  # loads run in other processes and cannot be held back

    def __init__(self, zk: KazooClient, paths: Paths, partitions: int) -> None:
        self.zk = zk
        self.paths = paths
        self.partitions = partitions
        self._lock = threading.Lock()
        self._parsed: dict[int, _Parsed] = {}

    def _read(self) -> tuple[int, list[_Parsed]]:
        with keeper_errors("reading which loads are complete"):
            self.zk.sync(self.paths.root)
            raw, _ = self.zk.get(self.paths.seq)
            docs = [self._partition(p) for p in range(self.partitions)]
        return int(raw), docs

    def _partition(self, p: int) -> _Parsed:
        """Partition ``p``'s document; parsed again only when it changed (a
        lens server reads it for every lens, a loader changes it twice a load)."""
        try:
            raw, stat = self.zk.get(self.paths.partition(p))
        except NoNodeError:
            return _Parsed.of(-1, progress.PartitionDoc())
        with self._lock:
            known = self._parsed.get(p)
        if known is not None and known.zxid == stat.mzxid:
            return known
        parsed = _Parsed.of(stat.mzxid, progress.PartitionDoc.parse(raw))
        with self._lock:
            self._parsed[p] = parsed
        return parsed

    def snapshot(self) -> Snapshot:
        counter, parsed = self._read()
        pending = [x.pending for x in parsed if x.pending is not None]
        return Snapshot(
            committed_seq=counter - 1,
            inflight=tuple(pending),
            started=counter,
            hidden=tuple(s.seq for s in pending),
            watermark=min((s.seq for s in pending), default=counter),
            floors=tuple(x.floor for x in parsed),
            completed=tuple(x.completed for x in parsed),
        )

    def started_since(self, snap: Snapshot) -> list[LoadSpan] | None:
        """Loads allocated since ``snap`` (pending or complete); None if some
        of them are no longer on record."""
        return self.begun_after(snap.started)

    def begun_after(self, started: int) -> list[LoadSpan] | None:
        """Loads of seq ``started`` and later; None if some are no longer on record."""
        counter, parsed = self._read()
        docs = [x.doc for x in parsed]
        if counter == started:
            return []
        found: dict[int, LoadSpan] = {}
        for d in docs:
            if d.pending and d.span and d.span["seq"] >= started:
                found[d.span["seq"]] = progress.span_of(d.span)
            for h in reversed(d.history or []):
                if h["seq"] < started:
                    break
                found[h["seq"]] = progress.span_of(h)
        if len(found) < counter - started:
            return None
        return list(found.values())

    @property
    def committed_seq(self) -> int:
        return self.snapshot().committed_seq

    def on_begin(self, callback: Callable[[LoadSpan], None]) -> None:
        """Not told of loads as they begin: lens servers check their cached
        chunks against the completed loads on record instead (``PinnedCache``)."""

    @contextmanager
    def quiet(self) -> Iterator[Snapshot]:
        raise NotImplementedError("loads of other processes cannot be held back")
        yield  # pragma: no cover
