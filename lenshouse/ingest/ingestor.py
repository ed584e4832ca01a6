"""The ingest path in one object: validate, append to the log, acknowledge,
and hand the record to the loader."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from lenshouse.ingest.loader import Loader
from lenshouse.ingest.wal import WriteAheadLog
from lenshouse.lens.visibility import Visibility
from lenshouse.points import BadInput, Erasure, PointBatch
from lenshouse.storage.store import Store

MAX_BATCH_IDS = 100_000


class Overloaded(BadInput):
    """The loader is too far behind; the client should retry later."""


class Ingestor:
    """The embedded write path: the log, then the loader.

    Ownership: ``write``/``erase`` run on the server's event loop, the one
    thread that touches ``_batch_ids`` and the ``*_accepted``/``replayed``
    counters (``write_sync``, for tests and data preparation, is used where
    no HTTP writes run). The log's writer thread and the loader's threads own
    their objects (see :class:`WriteAheadLog`, :class:`Loader`); others only
    read the counters."""

    def __init__(
        self,
        data_dir: Path,
        store: Store,
        flush_interval: float = 1.0,
        max_load_rows: int = 4_000_000,
        max_queued_rows: int = 30_000_000,
        fsync: bool = True,
        dedup_pages: int = 65_536,
    ) -> None:
        self.visibility = Visibility()
        self.wal = WriteAheadLog(Path(data_dir) / "wal", fsync=fsync)
        self.loader = Loader(
            self.wal,
            store,
            Path(data_dir) / "loader.json",
            self.visibility,
            flush_interval=flush_interval,
            max_rows=max_load_rows,
            dedup_pages=dedup_pages,
        )
        self.wal.on_durable = self.loader.submit
        self.max_queued_rows = max_queued_rows
        self.points_accepted = 0
        self.batches_accepted = 0
        self.batches_replayed = 0  # acknowledged from the batch-id memory alone
        self._batch_ids: OrderedDict[tuple[str, str], int] = OrderedDict()

    def start(self, after_recovery: Callable[[], None] | None = None) -> None:
        """Finish any load left in doubt, run ``after_recovery`` (nothing loads
        yet), then accept writes and load in the background."""
        self.loader.recover()
        if after_recovery is not None:
            after_recovery()
        # A damaged log may have been cut below what is already in ClickHouse;
        # new records must never reuse positions the loader has passed.
        self.wal.skip_to(self.loader.state.next_lsn)
        self.visibility.end(self.loader.state.next_seq - 1)
        self.wal.start()
        self.loader.start()

    def stop(self) -> None:
        self.wal.close()
        self.loader.stop(drain=True)

    async def write(self, batch: PointBatch, batch_id: str | None = None) -> int:
        """Make ``batch`` durable; returns its log position once it is on disk.

        A ``batch_id`` seen recently is acknowledged at once with its first
        position: a cheap shortcut for client retries. Correctness does not
        depend on it: a repeated batch is also dropped point by point on load.
        """
        if len(batch) == 0:
            return self.wal.next_lsn - 1  # nothing to make durable
        known = self._batch_ids.get((batch.tenant, batch_id)) if batch_id is not None else None
        if known is not None:
            self.batches_replayed += 1
            return known
        if self.loader.stats.queued_rows > self.max_queued_rows:
            raise Overloaded(
                f"ingest is {self.loader.stats.queued_rows} points behind; retry shortly"
            )
        lsn = self._accepted(batch, await asyncio.wrap_future(self.wal.append(batch)))
        if batch_id is not None:
            self._batch_ids[(batch.tenant, batch_id)] = lsn
            if len(self._batch_ids) > MAX_BATCH_IDS:
                self._batch_ids.popitem(last=False)
        return lsn

    async def erase(self, erasure: Erasure, batch_id: str | None = None) -> int:
        """Make a delete durable; its log position. A repeated ``batch_id``
        gets the first one's position (a client's retry must not delete
        points written after it)."""
        key = (erasure.tenant, "erase:" + batch_id) if batch_id is not None else None
        known = self._batch_ids.get(key) if key is not None else None
        if known is not None:
            return known
        lsn = await asyncio.wrap_future(self.wal.append(erasure))
        if key is not None:
            self._batch_ids[key] = lsn
        return lsn

    def erase_sync(self, erasure: Erasure) -> int:
        return self.wal.append(erasure).result()

    def write_sync(self, batch: PointBatch) -> int:
        """Blocking form of ``write`` for in-process writers (tests, data preparation)."""
        return self._accepted(batch, self.wal.append(batch).result())

    def _accepted(self, batch: PointBatch, lsn: int) -> int:
        self.points_accepted += len(batch)
        self.batches_accepted += 1
        return lsn

    def wait_visible(self, lsn: int, timeout: float = 10.0) -> bool:
        return self.loader.wait_loaded(lsn, timeout)
