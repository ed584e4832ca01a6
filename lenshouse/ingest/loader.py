"""The loader: turns log records into few, large, idempotent ClickHouse inserts.

Each load takes consecutive log records (about a second's worth; 1M rows go at
once; up to 4M rows while records queue up), writes its intent to
``loader.json`` (fsynced), inserts the rows into raw and their cells into the
first rollup tier, each with a deduplication token derived from the log
positions, then records completion.
After a crash, the load in doubt is replayed with the same records, sequence
number and tokens, so ClickHouse drops whatever part of it already landed, in
raw data and in every rollup; then it is reconciled with what is stored
(:mod:`lenshouse.ingest.reconcile`), as is a load whose insert failed and was
retried: a token ClickHouse kept for rows it lost must not lose them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from lenshouse.ingest.dedup import Duplicates, SeenIndex, count_conflicts
from lenshouse.ingest.load_state import (
    UNALLOCATED,
    Fenced,
    FileProgress,
    Pending,
    Progress,
)
from lenshouse.ingest.reconcile import reconcile
from lenshouse.ingest.wal import Record, WriteAheadLog
from lenshouse.lens.visibility import (
    LoadSpan,
    Visibility,
    erase_footprint,
    footprint_keys,
    footprint_sensors,
)
from lenshouse.points import Erasure, PointBatch
from lenshouse.rollup.cells import cells, footprint_points
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.errors import FatalError, StorageError
from lenshouse.storage.store import Store, erase_bounds

log = logging.getLogger(__name__)
# Loads between trims of the log while loading goes on.
TRIM_EVERY = 16
# Storage is synced at least this often, loading or idle: merged-away parts
# outlive it (lenshouse.storage.schema), so none goes before its merge is on disk.
SYNC_EVERY_S = 5.0
TRIM_RETRY_S = 1.0  # an idle loader tries a failed trim again after this
# The longest wait between attempts of a failed storage call: after an outage,
# loading resumes within this of the storage's return.
RETRY_MAX_S = 2.0
SLOW_LOAD_S = 2.0  # a load slower than this is logged with where its time went


class _Phases:
    """Where one load's time goes, phase by phase (for the slow-load log)."""

    def __init__(self) -> None:
        self.t0 = self._t = time.perf_counter()
        self.spent: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.spent[phase] = self.spent.get(phase, 0.0) + now - self._t
        self._t = now

    def total(self) -> float:
        return time.perf_counter() - self.t0

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.spent.items() if v >= 0.005)


class LoaderStopped(Exception):
    """Raised inside the loader thread when it is stopped mid-retry."""


class Source(Protocol):
    """Where records come from: the local write-ahead log, or a partition of
    the replicated log. ``lsn`` is the source's own position."""

    def read(self, from_lsn: int) -> Iterator[Record]: ...
    def read_range(self, first: int, last: int) -> list[Record]: ...
    def truncate_before(self, lsn: int) -> int | None: ...


@dataclass
class LoaderStats:
    loads: int = 0
    rows_loaded: int = 0
    insert_errors: int = 0
    duplicates: int = 0  # points refused because their key was already stored
    conflicts: int = 0  # of those, points whose value differed from the stored one
    last_insert_seconds: float = 0.0
    queued_rows: int = 0
    reconciled: int = 0  # loads checked against what ClickHouse holds
    expired: int = 0  # points older than their tenant's raw expiry mark, not stored
    repaired: int = 0  # of those, loads that had lost rows and got them back
    erasures: int = 0  # deletes applied
    erased: int = 0  # points they removed
    erasures_refused: int = 0  # deletes this store cannot apply (logged)


class Loader:
    """Ownership: the loader thread (and its one store thread, strictly after
    it) owns ``state``, ``index``, ``_known_sensors`` and ``store_cells``;
    ``stats`` counters are written only by them and read by anyone (single
    ints, no lock). ``_queued_lock`` guards ``_acked`` and
    ``stats.queued_rows``, which the log's writer thread feeds; ``_loaded``
    guards the completion of ``state.next_lsn`` for waiters. ``failure`` is set
    once, by the loader thread, when a fatal storage error stops it."""

    def __init__(
        self,
        wal: WriteAheadLog | Source,
        store: Store,
        state_path: Path | None,
        visibility: Visibility,
        flush_interval: float = 1.0,
        max_rows: int = 4_000_000,
        dedup_pages: int = 65_536,
        ready_rows: int = 1_000_000,
        store_cells: bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.wal = wal
        self.store = store
        self.failure: str | None = None
        self.fenced = False  # set once, by the loader thread, if another loader took over
        if progress is None:
            assert state_path is not None
            progress = FileProgress(state_path)
        self.progress = progress
        self.state = progress.load()
        self.visibility = visibility
        self.flush_interval = flush_interval
        # A load waits up to flush_interval for more records, and grows up to
        # max_rows while records queue up (fewer, larger inserts when behind);
        # past ready_rows it goes as soon as the queue is empty (no wait).
        self.max_rows = max_rows
        self.ready_rows = ready_rows
        # False only while replaying a load of a store whose first tier is
        # still fed by a view on raw (made by an older version).
        self.store_cells = store_cells
        self.stats = LoaderStats()
        self._queue: queue.Queue[tuple[Record, float]] = queue.Queue()
        self._queued_lock = threading.Lock()
        self._acked: deque[tuple[int, float]] = deque()  # (lsn, ack time) not yet loaded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._known_sensors: set[tuple[str, int]] = set()
        # The log is trimmed by the store thread (every TRIM_EVERY loads) and by
        # the loader thread when idle; the lock keeps one trim at a time.
        self._trim_lock = threading.Lock()
        self._trimmed_lsn = 0  # records below it are trimmed (guarded by _trim_lock)
        self._synced_at = time.monotonic()  # guarded by _trim_lock
        self._trim_after = 0.0  # an idle trim that failed waits until then (_trim_lock)
        self.index = SeenIndex(store, capacity_pages=dedup_pages)
        # A filter's reads of raw wait for the load being stored: it must
        # see every earlier load, as a replay after a crash would.
        self._storing: Future | None = None
        self.index.before_read = self._wait_stored
        self._loaded = threading.Condition()
        # Records below this are read from the source itself; later ones are submitted.
        self.backlog_end = getattr(wal, "next_lsn", 0)
        # Called with (seq, rows) once a load is stored, before lenses may see it.
        self.on_loaded: list[Callable[[int, pa.Table], None]] = []
        # Called with (seq, rows) once a load's intent is on record, before its
        # inserts: its seq and rows are final (a replay repeats both).
        self.on_intent: list[Callable[[int, pa.Table], None]] = []
        # Each tenant's raw expiry mark (lenshouse.retention.horizons), if any.
        self.raw_mark: Callable[[str], int | None] | None = None
        # Called with (tenant, sensors, start, end) once a delete is applied,
        # before lenses may see it.
        self.on_erased: list[Callable[[str, list[int], int, int], None]] = []
        # A delete that ended a group of records, to start the next one.
        self._carry: Record | None = None
        # Points each recent delete removed, by its log position (for whoever
        # waits for it); guarded by ``_loaded``.
        self.erased_by_lsn: OrderedDict[int, int] = OrderedDict()

    # -- feeding --------------------------------------------------------------
    def submit(self, rec: Record, stored_at: float | None = None) -> None:
        """Called by the log once ``rec`` is durable; ``stored_at`` (epoch
        seconds) when that was earlier than now (a replicated log's message)."""
        now = time.monotonic()
        if stored_at is not None:
            now -= max(0.0, time.time() - stored_at)
        with self._queued_lock:
            self.stats.queued_rows += len(rec.batch)
            self._acked.append((rec.lsn, now))
        self._queue.put((rec, now))

    def lag_seconds(self) -> float:
        """How long the oldest acknowledged, not yet loaded record has waited."""
        with self._queued_lock:
            return time.monotonic() - self._acked[0][1] if self._acked else 0.0

    @property
    def loaded_lsn(self) -> int:
        """Records below this LSN are visible to lenses."""
        return self.state.next_lsn

    @property
    def running(self) -> bool:
        """Whether the loader thread runs (it ends when stopped, fenced or failed)."""
        return self._thread is not None and self._thread.is_alive()

    def wait_loaded(self, lsn: int, timeout: float) -> bool:
        with self._loaded:
            return self._loaded.wait_for(lambda: self.state.next_lsn > lsn, timeout)

    # -- running --------------------------------------------------------------
    def recover(self) -> None:
        """Finish the load in doubt, exactly as it was first attempted."""
        self._known_sensors = self.store.known_sensors()
        p = self.state.pending
        if p is not None:
            records = self.wal.read_range(p.first_lsn, p.last_lsn)
            if len(records) != p.last_lsn - p.first_lsn + 1:
                raise RuntimeError(f"log lacks records {p.first_lsn}..{p.last_lsn} of load {p.seq}")
            if _is_erasure(records):
                self._erase(records[0], p.seq)  # idempotent: done again from the start
            else:
                self._store(records, p.seq, self._prepared(records, p.seq), in_doubt=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loader", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = True) -> None:
        """Stop; with ``drain``, load everything queued first."""
        if drain:
            deadline = time.monotonic() + 60
            while (
                self._thread and self._thread.is_alive() and self.state.next_lsn < self.wal.next_lsn
            ):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        """Load groups in order; the next group is filtered and folded while
        the one before it is being stored (ClickHouse's insert runs outside
        the GIL), and stores stay strictly one after another."""
        with ThreadPoolExecutor(1, thread_name_prefix="loader-store") as pool:
            try:
                allocates = getattr(self.progress, "allocates", False)
                seq: int | None = None if allocates else self.state.next_seq
                for group in self._groups():
                    if _is_erasure(group):
                        # In order with the loads around it: after the one
                        # being stored, before the next is filtered.
                        self._wait_stored()
                        self._erase(group[0], seq)
                        if seq is not None:
                            seq += 1
                        continue
                    prepared = self._prepared(group, seq)
                    self._wait_stored()
                    self._storing = pool.submit(self._store, group, seq, prepared)
                    if seq is not None:
                        seq += 1
                self._wait_stored()
            except LoaderStopped:
                log.info("loader stopped with a load in doubt; it is replayed on restart")
            except Fenced as e:
                self.fenced = True
                log.warning("loader stopped: %s", e)
            except FatalError as e:
                # Retrying a statement the server refuses cannot help: stop, say
                # why (/healthz too); the load in doubt is replayed on restart.
                self.failure = f"storage refused a load: {e}"
                log.error("loader stopped: %s", self.failure)
            except Exception as e:  # pragma: no cover - surfaced through /healthz
                self.failure = f"loader failed: {e!r}"
                log.exception("loader stopped")
                raise

    def _wait_stored(self) -> None:
        """Wait until the load being stored, if any, is complete (or raise
        what stopped it)."""
        storing, self._storing = self._storing, None
        if storing is not None:
            storing.result()

    def _groups(self) -> Iterator[list[Record]]:
        """Consecutive records, ~flush_interval or max_rows at a time."""
        group: list[Record] = []
        rows = 0
        backlog = (
            self.wal.read(self.state.next_lsn) if self.backlog_end > self.state.next_lsn else ()
        )
        for rec in backlog:
            if rec.lsn >= self.backlog_end:
                break
            if isinstance(rec.batch, Erasure):
                if group:
                    yield group
                    group, rows = [], 0
                yield [rec]
                continue
            group.append(rec)
            rows += len(rec.batch)
            if rows >= self.max_rows:
                yield group
                group, rows = [], 0
        if group:
            yield group
        while not self._stop.is_set():
            group = self._gather()
            if group:
                yield group

    def _gather(self) -> list[Record]:
        """The next group: consecutive point records, or one delete alone."""
        if self._carry is not None:
            carry, self._carry = self._carry, None
            return [carry]
        group: list[Record] = []
        rows = 0
        deadline = None
        while not self._stop.is_set():
            if self._storing is not None and self._storing.done():
                self._wait_stored()  # raises what stopped it, without waiting for records
            timeout = 0.1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                rec, acked = self._queue.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if deadline is None:
                    self._trim_idle()
                continue
            if rec.lsn < self.state.next_lsn:
                continue  # loaded from disk during recovery
            if isinstance(rec.batch, Erasure):
                if not group:
                    return [rec]
                self._carry = rec
                break
            if deadline is None:
                deadline = acked + self.flush_interval
            group.append(rec)
            rows += len(rec.batch)
            if rows >= self.max_rows:
                break
            if rows >= self.ready_rows and self._queue.empty():
                break  # big enough for ClickHouse, and nothing else is waiting
        return group

    # -- one load -------------------------------------------------------------
    def _prepared(
        self, records: list[Record], seq: int | None
    ) -> tuple[pa.Table, pa.Table, LoadSpan, Duplicates]:
        t0 = time.perf_counter()
        prepared = self._retry(lambda: self._prepare(records, seq), self.index.forget)
        if (spent := time.perf_counter() - t0) > SLOW_LOAD_S:
            log.info("%d records (%d rows) prepared in %.1f s", len(records),
                     prepared[0].num_rows, spent)  # fmt: skip
        return prepared

    def _store(
        self,
        records: list[Record],
        seq: int | None,
        prepared: tuple[pa.Table, pa.Table, LoadSpan, Duplicates],
        in_doubt: bool = False,
    ) -> None:
        """Store a prepared load: intent, inserts, completion. A load replayed
        after a crash (``in_doubt``) or retried is checked against what is
        stored before it completes. A load prepared before its seq was
        allocated (``seq`` None) gets it with its intent."""
        first, last = records[0].lsn, records[-1].lsn
        table, cell_rows, span, dups = prepared
        given = -1 if seq is None else seq
        phases = _Phases()
        seq = self._retry(
            lambda: self.progress.intent(self.state, Pending(given, first, last), span)
        )
        phases.mark("intent")
        if seq != given:
            table = table.set_column(
                table.schema.get_field_index("seq"),
                "seq",
                pa.array(np.full(table.num_rows, seq, np.uint64)),
            )
            span = replace(span, seq=seq)
        for callback in self.on_intent:
            callback(seq, table)
        t0 = time.perf_counter()
        self.visibility.begin(span)
        token = f"lh-{self.state.epoch}-{seq}-{first}-{last}"
        errors = self.stats.insert_errors
        phases.mark("announce")
        if table.num_rows:
            self._retry(lambda: self.store.insert_raw(table, token))
            phases.mark("raw")
            if self.store_cells:
                # Its views fill the coarser tiers; a replay after a crash
                # between the two inserts stores only what is missing.
                self._retry(lambda: self.store.insert_cells(cell_rows, seq, token + "-cells"))
                phases.mark("cells")
        self._register_sensors(span, token)
        phases.mark("sensors")
        doubt = in_doubt or self.stats.insert_errors > errors
        if doubt and not self.store.atomic_dedup:
            self._retry(lambda: self._reconcile(seq, table, cell_rows, span))
            phases.mark("reconcile")
        if len(dups):  # counted before completion so that readers see final counts
            self.stats.conflicts += self._retry(lambda: count_conflicts(self.store, dups, seq))
            self.stats.duplicates += len(dups)
            phases.mark("duplicates")
        self.stats.last_insert_seconds = time.perf_counter() - t0
        for callback in self.on_loaded:
            callback(seq, table)
        # Visible to lenses before it counts as loaded (``wait_loaded``,
        # /healthz), so whoever waits for a load then sees it in every lens.
        self.visibility.end(seq)
        with self._loaded:
            self.state.next_lsn = last + 1
            self.state.next_seq = seq + 1
            self.state.pending = None
            self._retry(lambda: self.progress.done(self.state))
            self._loaded.notify_all()
        phases.mark("complete")
        self.stats.loads += 1
        self.stats.rows_loaded += table.num_rows
        self._dequeue(last, sum(len(r.batch) for r in records))
        if phases.total() > SLOW_LOAD_S:
            log.info("load %d: %d rows in %.1f s (%s)", seq, table.num_rows, phases.total(), phases)

        if self.stats.loads % TRIM_EVERY == 0 or self._sync_due():
            self._trim()

    def _sync_due(self) -> bool:
        return time.monotonic() - self._synced_at > SYNC_EVERY_S

    def _trim(self) -> None:
        """Make what is stored durable, then drop the log's segments that
        only loaded records hold."""
        with self._trim_lock:
            lsn = self.state.next_lsn
            if lsn <= self._trimmed_lsn and not self._sync_due():
                return
            self.store.sync()
            self._synced_at = time.monotonic()
            if lsn > self._trimmed_lsn:
                try:
                    self.wal.truncate_before(lsn)
                except Exception as e:  # the log keeps more for a while: harmless
                    log.warning("log not trimmed below record %d yet: %s", lsn, e)
                    self._trim_after = time.monotonic() + TRIM_RETRY_S
                    return
                self._trimmed_lsn = lsn

    def _trim_idle(self) -> None:
        """Trim once nothing arrives: a log whose every record is loaded keeps
        no segment but an empty one (the data directory is then the store's
        files and little else)."""
        if self._storing is not None or time.monotonic() < self._trim_after:
            return
        try:
            if self.state.next_lsn > self._trimmed_lsn or self._sync_due():
                self._trim()  # or just a sync: parts that merges wrote since
        except Exception as e:  # trimming again later is harmless
            log.debug("log not trimmed yet: %s", e)

    def _erase(self, rec: Record, seq: int | None) -> None:
        """Apply a delete as a load of its own: registered in flight (lenses
        of its sensors wait, caches drop its cells), applied, then complete.
        A crash part way replays it whole on restart."""
        e = rec.batch
        assert isinstance(e, Erasure)
        sensors = [int(s) for s in e.sensor]
        start = self._erase_start(e)
        lo, hi = erase_bounds(start, e.end)
        span = LoadSpan(
            -1 if seq is None else seq,
            frozenset([e.tenant]),
            lo,
            hi - 1,
            erase_footprint(e.tenant, sensors, lo, hi),
            erases=True,
        )
        given = span.seq
        seq = self._retry(
            lambda: self.progress.intent(self.state, Pending(given, rec.lsn, rec.lsn), span)
        )
        span = replace(span, seq=seq)
        self.visibility.begin(span)
        n = 0
        if start >= e.end:
            pass  # the whole range lies where raw points have expired
        elif not self.store.can_erase:
            self.stats.erasures_refused += 1
            log.error("delete at %d not applied: this storage cannot delete", rec.lsn)
        else:
            n = self._retry(lambda: self.store.erase_count(e.tenant, sensors, start, e.end))
            self._retry(lambda: self.store.erase(e.tenant, sensors, start, e.end, seq))
        self.index.forget_sensors(e.tenant, set(sensors))
        for callback in self.on_erased:
            callback(e.tenant, sensors, start, e.end)
        self.stats.erasures += 1
        self.stats.erased += n
        self.visibility.end(seq)
        with self._loaded:
            self.erased_by_lsn[rec.lsn] = n
            while len(self.erased_by_lsn) > 1024:
                self.erased_by_lsn.popitem(last=False)
            self.state.next_lsn = rec.lsn + 1
            self.state.next_seq = seq + 1
            self.state.pending = None
            self._retry(lambda: self.progress.done(self.state))
            self._loaded.notify_all()
        self._dequeue(rec.lsn, 0)

    def _erase_start(self, e: Erasure) -> int:
        """Where a delete can begin: its cells are rebuilt from raw points, so
        it starts no earlier than the first whole coarse cell above the raw
        mark (requests are refused below it; the mark may have moved since)."""
        mark = self.raw_mark(e.tenant) if self.raw_mark is not None else None
        if mark is None or erase_bounds(e.start, e.end)[0] >= mark:
            return e.start
        w = TIERS[-1].res_ms
        start = min(e.end, max(e.start, -(-mark // w) * w))
        log.warning(
            "delete of [%d, %d) starts at %d: raw points below expired", e.start, e.end, start
        )
        return start

    def _dequeue(self, last_lsn: int, rows: int) -> None:
        with self._queued_lock:
            self.stats.queued_rows = max(0, self.stats.queued_rows - rows)
            while self._acked and self._acked[0][0] <= last_lsn:
                self._acked.popleft()

    def _reconcile(self, seq: int, table: pa.Table, cell_rows: pa.Table, span: LoadSpan) -> None:
        """Add whatever of load ``seq`` ClickHouse lost, sensors included."""
        repair = reconcile(self.store, seq, table, cell_rows) if table.num_rows else None
        self._known_sensors = self.store.known_sensors()
        sensors = self._register_sensors(span, f"lh-repair-{uuid.uuid4().hex}")
        self.stats.reconciled += 1
        if repair or sensors:
            self.stats.repaired += 1
            log.warning("load %d had lost rows, added again: %s; sensors %d", seq, repair, sensors)

    def _retry(self, action, on_error=None):
        """Run ``action`` until it succeeds; storage errors back off and
        retry, except a :class:`FatalError`, which stops the loader."""
        delay = 0.05
        while True:
            try:
                return action()
            except FatalError:
                raise
            except StorageError as e:
                self.stats.insert_errors += 1
                log.warning("storage call failed, retrying in %.2fs: %s", delay, e)
                if on_error is not None:
                    on_error()
                if self._stop.wait(delay):
                    raise LoaderStopped from e
                delay = min(delay * 2, RETRY_MAX_S)

    def _prepare(
        self, records: list[Record], seq: int | None
    ) -> tuple[pa.Table, pa.Table, LoadSpan, Duplicates]:
        """The rows this load stores (each record's points not seen before),
        their first-tier cells, its span and the duplicates."""
        self.index.begin_load(UNALLOCATED if seq is None else seq)
        dups = Duplicates()
        kept = []
        for r in records:
            old = self._expired(r.batch)
            if old is None:
                keep = self.index.new_points(r.batch)
                dups.add(r.batch, ~keep)
            else:
                # Below the mark raw points are gone: a duplicate there would
                # pass for new and count twice in the tiers that remain.
                live = ~old
                keep = np.zeros(len(r.batch), bool)
                keep[live] = self.index.new_points(_masked(r.batch, live))
                dups.add(r.batch, ~keep & live)
                self.stats.expired += int(old.sum())
            kept.append(keep if not keep.all() else None)
        # Unallocated: 0 until the intent gives the load its seq (see ``_store``).
        return (*_to_arrow(records, kept, 0 if seq is None else seq), dups)

    def _expired(self, batch: PointBatch) -> np.ndarray | None:
        """Mask of the batch's points below its tenant's raw mark; None if none."""
        mark = self.raw_mark(batch.tenant) if self.raw_mark is not None else None
        if mark is None or not len(batch) or batch.ts.min() >= mark:
            return None
        return batch.ts < mark

    # -- the sensor catalog -----------------------------------------------------
    def _register_sensors(self, span: LoadSpan, token: str) -> int:
        """Sensors seen for the first time enter the catalog with no labels. The
        load's footprint names every sensor it stores; a sensor whose points
        were all duplicates was registered by the load that stored them.
        Returns how many were new."""
        new: set[tuple[str, int]] = set()
        for tenant, keys in (span.cells or {}).items():
            for s in footprint_sensors(keys).tolist():
                key = (tenant, s)
                if key not in self._known_sensors:
                    new.add(key)
        if not new:
            return 0
        keys = sorted(new)
        table = pa.table(
            {
                "tenant": [k[0] for k in keys],
                "sensor": pa.array([k[1] for k in keys], pa.uint32()),
                "labels": ["{}"] * len(keys),
                "version": pa.array([0] * len(keys), pa.int64()),
            }
        )
        self._retry(lambda: self.store.insert_sensors(table, token + "-sensors"))
        self._known_sensors |= new
        return len(new)


def _is_erasure(records: list[Record]) -> bool:
    return len(records) == 1 and isinstance(records[0].batch, Erasure)


def _masked(batch: PointBatch, mask: np.ndarray) -> PointBatch:
    return PointBatch(batch.tenant, batch.sensor[mask], batch.ts[mask], batch.value[mask])


def _to_arrow(
    records: list[Record], kept: list[np.ndarray | None], seq: int
) -> tuple[pa.Table, pa.Table, LoadSpan]:
    def col(name: str) -> np.ndarray:
        parts = [
            getattr(r.batch, name) if k is None else getattr(r.batch, name)[k]
            for r, k in zip(records, kept)
        ]
        return np.concatenate(parts)

    tenants = sorted({r.batch.tenant for r in records})
    code = {t: i for i, t in enumerate(tenants)}
    sizes = [len(r.batch) if k is None else int(k.sum()) for r, k in zip(records, kept)]
    idx = np.repeat(np.array([code[r.batch.tenant] for r in records], dtype=np.int32), sizes)
    ts = col("ts")
    table = pa.table(
        {
            "tenant": pa.DictionaryArray.from_arrays(idx, pa.array(tenants)),
            "sensor": col("sensor"),
            "ts": ts,
            "value": col("value"),
            "seq": np.full(len(ts), seq, dtype=np.uint64),
        }
    )
    lo, hi = (int(ts.min()), int(ts.max())) if len(ts) else (0, -1)
    sensor = table.column("sensor").to_numpy()
    cell_rows = cells(idx, tenants, sensor, ts, table.column("value").to_numpy())
    # The footprint from the cells' ends: a hundredth of the points to sort.
    fcode, fsensor, fts = footprint_points(cell_rows)
    if len(tenants) == 1:
        foot = {tenants[0]: footprint_keys(fsensor, fts)}
    else:
        foot = {t: footprint_keys(fsensor[fcode == i], fts[fcode == i]) for t, i in code.items()}
    return table, cell_rows, LoadSpan(seq, frozenset(tenants), lo, hi, foot)
