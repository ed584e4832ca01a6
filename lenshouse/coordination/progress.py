"""A log partition's load progress, kept in the keeper so that any loader on
any host can take the partition over and replay its load in doubt exactly.

The partition's node holds (JSON): ``fence`` (raised by each new owner),
``owner``, ``next_lsn`` (every record below it is stored), the ``pending``
load (seq and records) with its ``span``, and ``history``, the last loads
completed (for lens servers, and to check that no two owners ever loaded
the same records). Every write is conditional on the node's version as this
owner last wrote it: once another loader has taken over, a stale owner's
intent or completion fails (:class:`~lenshouse.ingest.load_state.Fenced`)
before it could insert anything new.

A load's seq is allocated from the shared counter in the same transaction
that records the intent, so every allocated seq is, at any moment, either
pending in exactly one partition or in its history.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace

import numpy as np
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from lenshouse.coordination.zk import Paths, keeper_errors
from lenshouse.ingest.load_state import Fenced, LoaderState, Pending
from lenshouse.lens.visibility import LoadSpan

HISTORY = 256  # completed loads kept per partition
MAX_FOOTPRINT_KEYS = 16_384  # a larger footprint is kept as its time range only


def span_doc(span: LoadSpan) -> dict:
    cells = None
    if span.cells is not None and sum(len(k) for k in span.cells.values()) <= MAX_FOOTPRINT_KEYS:
        cells = {
            t: base64.b64encode(np.ascontiguousarray(k, "<u8").tobytes()).decode()
            for t, k in span.cells.items()
        }
    return {
        "seq": span.seq,
        "tenants": sorted(span.tenants),
        "min_ts": span.min_ts,
        "max_ts": span.max_ts,
        "cells": cells,
        "erases": span.erases,
    }


def span_of(doc: dict) -> LoadSpan:
    cells = doc.get("cells")
    return LoadSpan(
        int(doc["seq"]),
        frozenset(doc["tenants"]),
        int(doc["min_ts"]),
        int(doc["max_ts"]),
        None
        if cells is None
        else {
            t: np.frombuffer(base64.b64decode(b), "<u8").astype(np.uint64) for t, b in cells.items()
        },
        erases=bool(doc.get("erases", False)),
    )


@dataclass
class PartitionDoc:
    """The partition node's content."""

    fence: int = 0
    owner: str = ""
    next_lsn: int = 1  # JetStream numbers a stream's messages from 1
    pending: dict | None = None  # {"seq", "first_lsn", "last_lsn"}
    span: dict | None = None
    history: list | None = None  # [{"seq", "first", "last", "fence", "owner", span …}]

    @classmethod
    def parse(cls, raw: bytes) -> PartitionDoc:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()


def read(zk: KazooClient, paths: Paths, partition: int) -> tuple[PartitionDoc, int]:
    """The partition's document and its node version (-1: no node yet)."""
    try:
        raw, stat = zk.get(paths.partition(partition))
    except NoNodeError:
        return PartitionDoc(), -1
    return PartitionDoc.parse(raw), stat.version


class PartitionProgress:
    """The :class:`~lenshouse.ingest.load_state.Progress` of one owned partition.

    Ownership: made by the ownership thread at takeover, then used only by
    that partition's loader threads (intent and completion strictly one after
    another)."""

    allocates = True

    def __init__(self, zk: KazooClient, paths: Paths, partition: int, owner: str) -> None:
        self.zk = zk
        self.paths = paths
        self.partition = partition
        self.owner = owner
        self.doc, self._version = self._take_over()

    def _take_over(self) -> tuple[PartitionDoc, int]:
        """Raise the fence: from now on the previous owner can write nothing."""
        path = self.paths.partition(self.partition)
        with keeper_errors(f"taking partition {self.partition} over"):
            doc, version = read(self.zk, self.paths, self.partition)
            doc.fence += 1
            doc.owner = self.owner
            if version < 0:
                try:
                    self.zk.create(path, doc.dump(), makepath=True)
                except NodeExistsError:
                    raise Fenced(f"partition {self.partition} was created meanwhile") from None
                return doc, 0
            try:
                stat = self.zk.set(path, doc.dump(), version=version)
            except BadVersionError:
                raise Fenced(f"partition {self.partition} changed during takeover") from None
            return doc, stat.version

    @property
    def fence(self) -> int:
        return self.doc.fence

    def load(self) -> LoaderState:
        p = self.doc.pending
        return LoaderState(
            epoch=f"p{self.partition}",  # tokens must be the same whoever replays a load
            next_lsn=self.doc.next_lsn,
            next_seq=0,
            pending=Pending(p["seq"], p["first_lsn"], p["last_lsn"]) if p else None,
        )

    def intent(self, state: LoaderState, pending: Pending, span: LoadSpan) -> int:
        if self.doc.pending is not None:
            # A replay: its seq and records are on record already.
            if self.doc.pending["first_lsn"] != pending.first_lsn:
                raise RuntimeError(f"partition {self.partition}: replay of another load")
            state.pending = Pending(**self.doc.pending)
            return state.pending.seq
        with keeper_errors(f"recording a load of partition {self.partition}"):
            while True:
                raw, stat = self.zk.get(self.paths.seq)
                seq = int(raw)
                doc = PartitionDoc(**{**self.doc.__dict__})
                doc.pending = {
                    "seq": seq,
                    "first_lsn": pending.first_lsn,
                    "last_lsn": pending.last_lsn,
                }
                doc.span = span_doc(replace(span, seq=seq))
                tx = self.zk.transaction()
                tx.set_data(self.paths.seq, str(seq + 1).encode(), version=stat.version)
                tx.set_data(self.paths.partition(self.partition), doc.dump(), version=self._version)
                results = tx.commit()
                if isinstance(results[1], BadVersionError):
                    current = self._resync()  # our own write, applied before a lost answer?
                    if current is not None and current.get("first_lsn") == pending.first_lsn:
                        state.pending = Pending(**current)
                        return state.pending.seq
                    continue
                if isinstance(results[0], Exception):
                    continue  # another loader took this seq: take the next
                self.doc, self._version = doc, results[1].version
                state.pending = Pending(seq, pending.first_lsn, pending.last_lsn)
                return seq

    def last_completed(self) -> int:
        """The seq of the partition's last completed load (-1: none yet)."""
        history = self.doc.history or []
        return int(history[-1]["seq"]) if history else -1

    def done(self, state: LoaderState) -> None:
        done = self.doc.pending
        assert done is not None
        doc = PartitionDoc(**{**self.doc.__dict__})
        entry = {
            "first": done["first_lsn"],
            "last": done["last_lsn"],
            "fence": doc.fence,
            "owner": doc.owner,
            **{k: v for k, v in (doc.span or {}).items() if k != "cells"},
        }
        doc.history = [*(doc.history or [])[-(HISTORY - 1) :], entry]
        doc.pending, doc.span, doc.next_lsn = None, None, state.next_lsn
        with keeper_errors(f"recording the completion of a load of partition {self.partition}"):
            try:
                stat = self.zk.set(
                    self.paths.partition(self.partition), doc.dump(), version=self._version
                )
            except BadVersionError:
                self._resync()
                if self.doc.pending is None and self.doc.next_lsn == state.next_lsn:
                    return  # our own write, applied before its answer was lost
                raise Fenced(f"partition {self.partition}: completion out of step") from None
        self.doc, self._version = doc, stat.version

    def _resync(self) -> dict | None:
        """After a conditional write failed: if no other loader has taken over
        (same fence), the node changed by our own write whose answer was lost;
        adopt it and return its pending load. Else raise :class:`Fenced`."""
        doc, version = read(self.zk, self.paths, self.partition)
        if doc.fence != self.doc.fence or doc.owner != self.owner:
            raise Fenced(f"partition {self.partition} has another owner ({doc.owner})")
        self.doc, self._version = doc, version
        return doc.pending
