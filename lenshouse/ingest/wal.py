"""The write-ahead log: every accepted batch is appended and fsynced here before
the HTTP request is acknowledged.

Records are numbered by a log sequence number (LSN) and stored in segment files
named after the first LSN they hold. Appends from concurrent requests are
group-committed: one writer thread writes whatever is queued, calls fdatasync
once, then acknowledges all of them, so fsyncs stay few under load.

Record layout (little endian)::

    magic "LHW1" | crc32 u32 | payload_len u32 | lsn u64 | tenant_len u16 | count u32
    payload = tenant bytes | sensor u32[count] | ts i64[count] | value f64[count]

A delete (:class:`~lenshouse.points.Erasure`) has magic "LHX1" and payload
``tenant bytes | sensor u32[count] | start i64 | end i64``.

The crc covers everything after itself. A torn record at the tail of the last
segment (a crash mid-append) is cut off on recovery: it was never acknowledged.

Where the filesystem allows it, segments are written with O_DIRECT (see
:class:`SegmentFile`): a buffered write of a 20 MB group cost 4-47 ms of CPU
here, mostly the kernel's copy into the page cache and reclaiming pages for
it, against under 1 ms direct; the log is read back only on recovery.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenshouse.points import Erasure, PointBatch

MAGIC = b"LHW1"
ERASE_MAGIC = b"LHX1"
HEADER = struct.Struct("<4sIIQHI")
_CRC_FROM = 8  # crc covers the header from payload_len on, then the payload
SEGMENT_SUFFIX = ".wal"
# Queued instead of a batch: the writer starts a new segment (see truncate_before).
ROLL = object()
POINT_BYTES = 20
ALIGN = 4096  # O_DIRECT writes whole blocks from aligned memory
_IOV_MAX = 1024  # buffers per writev (Linux's limit)


class CorruptLog(RuntimeError):
    pass


@dataclass(frozen=True)
class Record:
    lsn: int
    batch: PointBatch | Erasure


def encode(lsn: int, batch: PointBatch | Erasure) -> list[bytes | memoryview]:
    tenant = batch.tenant.encode()
    sensor = memoryview(np.ascontiguousarray(batch.sensor, dtype="<u4")).cast("B")
    if isinstance(batch, Erasure):
        magic, count = ERASE_MAGIC, len(batch.sensor)
        parts = [tenant, sensor, np.array([batch.start, batch.end], "<i8").tobytes()]
    else:
        magic, count = MAGIC, len(batch)
        parts = [
            tenant,
            sensor,
            memoryview(np.ascontiguousarray(batch.ts, dtype="<i8")).cast("B"),
            memoryview(np.ascontiguousarray(batch.value, dtype="<f8")).cast("B"),
        ]
    length = sum(len(p) for p in parts)
    head = HEADER.pack(magic, 0, length, lsn, len(tenant), count)
    crc = zlib.crc32(head[_CRC_FROM:])
    for p in parts:
        crc = zlib.crc32(p, crc)
    head = HEADER.pack(magic, crc, length, lsn, len(tenant), count)
    return [head, *parts]


def decode_at(buf: memoryview, off: int) -> tuple[Record, int] | None:
    """The record starting at ``off`` and the offset after it, or None if torn."""
    if off + HEADER.size > len(buf):
        return None
    magic, crc, length, lsn, tlen, count = HEADER.unpack_from(buf, off)
    end = off + HEADER.size + length
    erase = magic == ERASE_MAGIC
    want = tlen + (count * 4 + 16 if erase else count * POINT_BYTES)
    if magic not in (MAGIC, ERASE_MAGIC) or end > len(buf) or length != want:
        return None
    if (
        zlib.crc32(
            buf[off + HEADER.size : end], zlib.crc32(buf[off + _CRC_FROM : off + HEADER.size])
        )
        != crc
    ):
        return None
    p = off + HEADER.size
    tenant = bytes(buf[p : p + tlen]).decode()
    p += tlen
    sensor = np.frombuffer(buf, "<u4", count, p)
    if erase:
        start, stop = np.frombuffer(buf, "<i8", 2, p + 4 * count).tolist()
        return Record(lsn, Erasure(tenant, sensor, start, stop)), end
    ts = np.frombuffer(buf, "<i8", count, p + 4 * count)
    value = np.frombuffer(buf, "<f8", count, p + 12 * count)
    return Record(lsn, PointBatch(tenant, sensor, ts, value)), end


class SegmentFile:
    """Appends groups of records to one segment file, each group in one write.

    With ``direct`` (and a filesystem that accepts O_DIRECT) the bytes go from
    an aligned buffer to the device without the page cache. O_DIRECT writes
    whole blocks, so the file's last partial block is kept in memory, written
    again in front of the next group, and the file is cut back to the records'
    end: its content is exactly what plain appends would leave. A crash between
    the write and the cut leaves zeros after the last record, which recovery
    cuts off like any torn tail.
    """

    def __init__(self, path: Path, direct: bool) -> None:
        self.path = path
        self.direct = False
        fd = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: the filesystem has no O_DIRECT
                    raise
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self._tail = b""
        if self.direct and self.size % ALIGN:
            with open(path, "rb") as f:
                f.seek(self.size // ALIGN * ALIGN)
                self._tail = f.read()
        self._buf = mmap.mmap(-1, ALIGN)  # page-aligned; grown as groups need

    def append(self, parts: list[bytes | memoryview]) -> None:
        """Write ``parts`` after the last record (not yet synced)."""
        want = sum(len(p) for p in parts)
        if not self.direct:
            n = 0
            for i in range(0, len(parts), _IOV_MAX):
                n += os.writev(self.fd, parts[i : i + _IOV_MAX])
            if n != want:  # a short write leaves a torn tail: the caller cuts it
                raise OSError(f"short write to log ({n} of {want} bytes)")
            self.size += n
            return
        base = self.size - len(self._tail)
        total = len(self._tail) + want
        padded = -(-total // ALIGN) * ALIGN
        if len(self._buf) < padded:  # the old map goes with its last view
            self._buf = mmap.mmap(-1, padded + (padded >> 2))
        buf = memoryview(self._buf)
        try:
            pos = len(self._tail)
            buf[:pos] = self._tail
            for p in parts:
                n = len(p)
                buf[pos : pos + n] = p
                pos += n
            buf[pos:padded] = bytes(padded - pos)
            n = os.pwrite(self.fd, buf[:padded], base)
            if n != padded:
                raise OSError(f"short write to log ({n} of {padded} bytes)")
            os.ftruncate(self.fd, base + total)
            keep = total // ALIGN * ALIGN
            self._tail = bytes(buf[keep:total])
        finally:
            buf.release()
        self.size = base + total

    def cut(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (a failed group's start)."""
        os.ftruncate(self.fd, size)
        if self.direct and size != self.size:
            with open(self.path, "rb") as f:
                f.seek(size // ALIGN * ALIGN)
                self._tail = f.read(size % ALIGN)
        self.size = size

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class WriteAheadLog:
    """Segmented, fsynced, group-committed log of accepted batches.

    Ownership: before ``start`` the opening thread does everything. After it,
    the writer thread (``wal-writer``) alone writes ``_file``, ``direct_io``,
    ``next_lsn``, ``fsyncs`` and ``bytes_written``; other threads read them
    as plain ints (a stale value is one a moment old). Requests reach the
    writer only through ``_queue`` (appends, and the roll a trim asks for),
    so no lock is needed. ``read``/``read_range`` (the loader) read closed
    bytes of segment files; ``truncate_before`` (the loader's store thread)
    deletes only segments the writer has left."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = 256 << 20,
        fsync: bool = True,
        on_durable: Callable[[Record], None] | None = None,
        direct: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.on_durable = on_durable
        self._queue: queue.Queue[tuple[PointBatch | Erasure | object, Future] | None] = (
            queue.Queue()
        )
        self.direct = direct  # O_DIRECT where the filesystem has it
        self.direct_io: bool | None = None  # whether the open segment uses it
        self._file: SegmentFile | None = None
        self.next_lsn = 0
        self.fsyncs = 0
        self.bytes_written = 0
        self._thread: threading.Thread | None = None
        self._recover_tail()

    # -- recovery -----------------------------------------------------------
    def segments(self) -> list[tuple[int, Path]]:
        segs = []
        for p in self.dir.glob("*" + SEGMENT_SUFFIX):
            try:
                segs.append((int(p.stem), p))
            except ValueError:
                continue
        return sorted(segs)

    def _recover_tail(self) -> None:
        """Find the next LSN and cut a torn tail off the last segment."""
        segs = self.segments()
        if not segs:
            return
        first, path = segs[-1]
        lsn, good = first, 0
        with open(path, "rb") as f:
            buf = memoryview(f.read())
        while (item := decode_at(buf, good)) is not None:
            rec, good = item
            if rec.lsn != lsn:
                raise CorruptLog(f"{path}: expected lsn {lsn}, found {rec.lsn}")
            lsn += 1
        if good < len(buf):
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        self.next_lsn = lsn

    def skip_to(self, lsn: int) -> None:
        """Continue numbering at ``lsn`` in a new segment (before ``start``)."""
        if lsn > self.next_lsn:
            self.next_lsn = lsn
            path = self.dir / f"{lsn:020d}{SEGMENT_SUFFIX}"
            path.touch()
            _fsync_dir(self.dir)

    def read(self, from_lsn: int) -> Iterator[Record]:
        """Records with lsn >= from_lsn that are on disk, in order."""
        segs = self.segments()
        for i, (first, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= from_lsn:
                continue
            with open(path, "rb") as f:
                buf = memoryview(f.read())
            off, lsn = 0, first
            while (item := decode_at(buf, off)) is not None:
                rec, off = item
                if rec.lsn != lsn:
                    raise CorruptLog(f"{path}: expected lsn {lsn}, found {rec.lsn}")
                lsn += 1
                if rec.lsn >= from_lsn:
                    yield rec
            if nxt is not None and off != len(buf):
                raise CorruptLog(f"{path}: damaged record at offset {off}")

    def read_range(self, first: int, last: int) -> list[Record]:
        """Records ``first`` .. ``last`` that are on disk."""
        out = []
        for rec in self.read(first):
            if rec.lsn > last:
                break
            out.append(rec)
        return out

    def truncate_before(self, lsn: int) -> int:
        """Delete whole segments whose records are all below ``lsn``; when that
        is every record, the writer first starts a new segment, so that the
        last one can go too."""
        segs = self.segments()
        if lsn >= self.next_lsn and self._thread is not None and segs and segs[-1][0] < lsn:
            fut: Future = Future()
            self._queue.put((ROLL, fut))
            # If the writer is stopping or the disk refused, trim what we can.
            with contextlib.suppress(TimeoutError, OSError):
                fut.result(timeout=10)
            segs = self.segments()
        removed = 0
        for (_, path), (nxt, _) in itertools.pairwise(segs):
            if nxt <= lsn:
                path.unlink()
                removed += 1
        return removed

    # -- appending ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    def append(self, batch: PointBatch | Erasure) -> Future:
        """Queue a batch or a delete; the future resolves to its LSN once it is on disk."""
        fut: Future = Future()
        self._queue.put((batch, fut))
        return fut

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_segment(self) -> None:
        """Continue the last segment after a restart, or start a new one when full."""
        segs = self.segments()
        reuse = self._file is None and segs and segs[-1][1].stat().st_size < self.segment_bytes
        if self._file is not None:
            self._file.close()
        path = segs[-1][1] if reuse else self.dir / f"{self.next_lsn:020d}{SEGMENT_SUFFIX}"
        self._file = SegmentFile(path, self.direct)
        self.direct_io = self._file.direct
        _fsync_dir(self.dir)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            group = []
            roll: Future | None = None
            while item is not None:
                if item[0] is ROLL:
                    roll = item[1]
                    break
                group.append(item)
                if len(group) >= 256:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stop = True
            if group:
                self._commit(group)
            if roll is not None:
                self._roll(roll)

    def _roll(self, fut: Future) -> None:
        """Start a new, empty segment at the next LSN, if the last one holds records."""
        try:
            segs = self.segments()
            if segs and segs[-1][0] < self.next_lsn:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                (self.dir / f"{self.next_lsn:020d}{SEGMENT_SUFFIX}").touch()
                _fsync_dir(self.dir)
            fut.set_result(None)
        except OSError as e:
            fut.set_exception(e)

    def _commit(self, group: list[tuple[PointBatch | Erasure, Future]]) -> None:
        records: list[Record] = []
        try:
            if self._file is None or self._file.size >= self.segment_bytes:
                self._open_segment()
        except OSError as e:
            self._fail_all(group, e)
            return
        file = self._file
        assert file is not None
        start_size, start_lsn = file.size, self.next_lsn
        try:
            parts: list[bytes | memoryview] = []
            for batch, _ in group:
                parts += encode(self.next_lsn, batch)
                records.append(Record(self.next_lsn, batch))
                self.next_lsn += 1
            file.append(parts)
            self.bytes_written += file.size - start_size
            if self.fsync:
                file.sync()
                self.fsyncs += 1
        except OSError as e:
            # Nothing in this group is acknowledged: cut the file back so that no
            # unacknowledged record is ever loaded, and reuse its LSNs.
            file.cut(start_size)
            self.next_lsn = start_lsn
            self._fail_all(group, e)
            return
        for rec, (_, fut) in zip(records, group):
            if self.on_durable is not None:
                self.on_durable(rec)
            fut.set_result(rec.lsn)

    @staticmethod
    def _fail_all(group: list[tuple[PointBatch | Erasure, Future]], err: BaseException) -> None:
        for _, fut in group:
            fut.set_exception(err)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
