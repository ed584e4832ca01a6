"""What a loader has loaded and what it intends: its durable state, and the
``Progress`` seam that keeps it (``loader.json`` here; the keeper in cluster
mode, :mod:`lenshouse.coordination.progress`) and numbers the loads.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from lenshouse.lens.visibility import LoadSpan


class Fenced(Exception):
    """Another loader took this loader's partition over: it must not go on."""


# A fill of the dedup index before a load's seq is allocated reads every
# stored row: all of them belong to completed loads (see ``Progress``).
UNALLOCATED = 2**62


@dataclass
class Pending:
    seq: int
    first_lsn: int
    last_lsn: int


@dataclass
class LoaderState:
    """Durable progress: every record below ``next_lsn`` is in ClickHouse."""

    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_lsn: int = 0
    next_seq: int = 0
    pending: Pending | None = None

    @classmethod
    def load(cls, path: Path) -> LoaderState:
        if not path.exists():
            state = cls()
            state.save(path)
            return state
        doc = json.loads(path.read_text())
        pending = doc.get("pending")
        return cls(
            epoch=doc["epoch"],
            next_lsn=doc["next_lsn"],
            next_seq=doc["next_seq"],
            pending=Pending(**pending) if pending else None,
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Progress(Protocol):
    """Where a loader's progress is kept, and who numbers its loads.

    ``intent`` records a load before it writes (its records and seq) and
    returns the seq it gets: the given one, or for loaders that share a
    store one allocated for all of them; ``done`` records its completion.
    Both raise :class:`Fenced` when the loader no longer owns its records."""

    def load(self) -> LoaderState: ...
    def intent(self, state: LoaderState, pending: Pending, span: LoadSpan) -> int: ...
    def done(self, state: LoaderState) -> None: ...


class FileProgress:
    """``loader.json`` in the data directory (fsynced): one loader per log."""

    allocates = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> LoaderState:
        return LoaderState.load(self.path)

    def intent(self, state: LoaderState, pending: Pending, span: LoadSpan) -> int:
        state.pending = pending
        state.save(self.path)
        return pending.seq

    def done(self, state: LoaderState) -> None:
        state.save(self.path)
