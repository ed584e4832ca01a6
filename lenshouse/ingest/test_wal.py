"""The write-ahead log: round trips, recovery of a torn tail, crc checks,
segment rotation and truncation, group commit."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lenshouse.ingest.wal import HEADER, CorruptLog, WriteAheadLog, decode_at, encode
from lenshouse.node import Node
from lenshouse.points import PointBatch

BASE = 1_700_000_000_000


def batch(k: int, n: int = 3, tenant: str = "default") -> PointBatch:
    """A batch whose contents identify it: sensor k, ts BASE+k*1000+i, value k+i/8."""
    return PointBatch(
        tenant,
        np.full(n, k, dtype=np.uint32),
        BASE + k * 1000 + np.arange(n, dtype=np.int64),
        k + np.arange(n, dtype=np.float64) / 8,
    )


def same(a: PointBatch, b: PointBatch) -> bool:
    return (
        a.tenant == b.tenant
        and a.sensor.dtype == b.sensor.dtype
        and a.ts.dtype == b.ts.dtype
        and a.value.dtype == b.value.dtype
        and np.array_equal(a.sensor, b.sensor)
        and np.array_equal(a.ts, b.ts)
        and np.array_equal(a.value, b.value)
    )


def record_size(b: PointBatch) -> int:
    return HEADER.size + len(b.tenant.encode()) + 20 * len(b)


@pytest.fixture
def waldir(tmp_path: Path) -> Path:
    return tmp_path / "wal"


def open_wal(directory: Path, **kw) -> WriteAheadLog:
    wal = WriteAheadLog(directory, **kw)
    wal.start()
    return wal


def append_all(wal: WriteAheadLog, batches: list[PointBatch]) -> list[int]:
    return [wal.append(b).result(timeout=10) for b in batches]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def test_append_then_read_round_trips(waldir: Path) -> None:
    batches = [batch(k, n=k + 1, tenant=f"t{k % 2}") for k in range(5)]
    batches.append(PointBatch("default", *(np.empty(0, d) for d in ("u4", "i8", "f8"))))
    wal = open_wal(waldir)
    try:
        assert append_all(wal, batches) == [0, 1, 2, 3, 4, 5]
        assert wal.next_lsn == 6
        recs = list(wal.read(0))
        assert [r.lsn for r in recs] == [0, 1, 2, 3, 4, 5]
        for rec, b in zip(recs, batches, strict=True):
            assert same(rec.batch, b)
        assert [r.lsn for r in wal.read(4)] == [4, 5]
        assert list(wal.read(6)) == []
        assert wal.bytes_written == sum(record_size(b) for b in batches)
    finally:
        wal.close()


def test_extreme_values_survive_bit_exactly(waldir: Path) -> None:
    b = PointBatch(
        "x" * 64,
        np.array([0, 2**32 - 1, 7], dtype=np.uint32),
        np.array([-(2**63), 2**63 - 1, 0], dtype=np.int64),
        np.array([-0.0, 5e-324, np.finfo(np.float64).max]),
    )
    wal = open_wal(waldir)
    try:
        append_all(wal, [b])
    finally:
        wal.close()
    (rec,) = WriteAheadLog(waldir).read(0)
    assert same(rec.batch, b)
    assert np.signbit(rec.batch.value[0])  # -0.0 stays negative zero


def test_on_durable_sees_every_record_in_order(waldir: Path) -> None:
    seen: list[int] = []
    wal = WriteAheadLog(waldir, on_durable=lambda rec: seen.append(rec.lsn))
    wal.start()
    try:
        append_all(wal, [batch(k) for k in range(4)])
    finally:
        wal.close()
    assert seen == [0, 1, 2, 3]


def test_reopen_finds_next_lsn_and_continues(waldir: Path) -> None:
    wal = open_wal(waldir)
    append_all(wal, [batch(k) for k in range(3)])
    wal.close()

    wal = WriteAheadLog(waldir)
    assert wal.next_lsn == 3
    wal.start()
    try:
        assert append_all(wal, [batch(3), batch(4)]) == [3, 4]
    finally:
        wal.close()
    # The last segment is continued after a restart, not replaced.
    assert len(segment_files(waldir)) == 1
    recs = list(WriteAheadLog(waldir).read(0))
    assert [r.lsn for r in recs] == [0, 1, 2, 3, 4]
    assert all(same(r.batch, batch(r.lsn)) for r in recs)


def test_empty_directory_starts_at_zero(waldir: Path) -> None:
    wal = WriteAheadLog(waldir)
    assert wal.next_lsn == 0
    assert list(wal.read(0)) == []


@pytest.mark.parametrize("cut", [1, 5, HEADER.size + 3])
def test_torn_tail_is_cut_on_reopen(waldir: Path, cut: int) -> None:
    wal = open_wal(waldir)
    append_all(wal, [batch(k) for k in range(4)])
    wal.close()
    (seg,) = segment_files(waldir)
    full = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(full - cut)

    wal = WriteAheadLog(waldir)
    assert wal.next_lsn == 3  # the torn record 3 was never acknowledged
    assert seg.stat().st_size == full - record_size(batch(3))
    recs = list(wal.read(0))
    assert [r.lsn for r in recs] == [0, 1, 2]
    assert all(same(r.batch, batch(r.lsn)) for r in recs)
    # The freed LSN is reused and the log reads cleanly afterwards.
    wal.start()
    try:
        assert append_all(wal, [batch(9)]) == [3]
    finally:
        wal.close()
    recs = list(WriteAheadLog(waldir).read(0))
    assert [r.lsn for r in recs] == [0, 1, 2, 3]
    assert same(recs[3].batch, batch(9))


@pytest.mark.parametrize("garbage", [b"\x00" * 7, b"LHW1", b"LHW1" + b"\xff" * 64])
def test_garbage_after_last_record_is_cut(waldir: Path, garbage: bytes) -> None:
    wal = open_wal(waldir)
    append_all(wal, [batch(k) for k in range(2)])
    wal.close()
    (seg,) = segment_files(waldir)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(garbage)

    wal = WriteAheadLog(waldir)
    assert wal.next_lsn == 2
    assert seg.stat().st_size == size
    assert [r.lsn for r in wal.read(0)] == [0, 1]


def test_decode_at_detects_flipped_payload_byte() -> None:
    b = batch(5, n=4)
    data = bytearray(b"".join(bytes(p) for p in encode(0, b)))
    rec, end = decode_at(memoryview(bytes(data)), 0)
    assert end == len(data) and rec.lsn == 0 and same(rec.batch, b)
    # Every single-bit change anywhere in the record is caught.
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        assert decode_at(memoryview(bytes(bad)), 0) is None, pos


def test_flipped_byte_in_last_segment_stops_reading_there(waldir: Path) -> None:
    wal = open_wal(waldir)
    append_all(wal, [batch(k) for k in range(3)])
    wal.close()
    (seg,) = segment_files(waldir)
    data = bytearray(seg.read_bytes())
    # Flip a byte inside the value column of record 2 (the last one).
    data[2 * record_size(batch(0)) + HEADER.size + 7 + 20 * 3 - 1] ^= 0xFF
    seg.write_bytes(bytes(data))

    recs = list(WriteAheadLog(waldir).read(0))
    assert [r.lsn for r in recs] == [0, 1]
    assert all(same(r.batch, batch(r.lsn)) for r in recs)


def test_flipped_byte_in_older_segment_raises(waldir: Path) -> None:
    one = record_size(batch(0))
    wal = open_wal(waldir, segment_bytes=2 * one)
    append_all(wal, [batch(k) for k in range(6)])
    wal.close()
    first = segment_files(waldir)[0]
    data = bytearray(first.read_bytes())
    data[one + HEADER.size + 10] ^= 0x40  # inside record 1's payload
    first.write_bytes(bytes(data))

    reader = WriteAheadLog(waldir)
    assert reader.next_lsn == 6  # recovery only looks at the last segment
    it = reader.read(0)
    assert next(it).lsn == 0
    with pytest.raises(CorruptLog, match="damaged record"):
        list(it)
    # Reading from a later segment does not touch the damaged one.
    assert [r.lsn for r in reader.read(2)] == [2, 3, 4, 5]


def test_segments_rotate_when_full(waldir: Path) -> None:
    one = record_size(batch(0))
    wal = open_wal(waldir, segment_bytes=2 * one)
    try:
        # One by one, so that each commit sees the size of the segment so far.
        assert append_all(wal, [batch(k) for k in range(7)]) == list(range(7))
    finally:
        wal.close()
    segs = segment_files(waldir)
    assert [p.name for p in segs] == [f"{n:020d}.wal" for n in (0, 2, 4, 6)]
    assert [p.stat().st_size for p in segs] == [2 * one, 2 * one, 2 * one, one]
    assert [s[0] for s in WriteAheadLog(waldir).segments()] == [0, 2, 4, 6]
    recs = list(WriteAheadLog(waldir).read(3))
    assert [r.lsn for r in recs] == [3, 4, 5, 6]
    assert all(same(r.batch, batch(r.lsn)) for r in recs)

    wal = WriteAheadLog(waldir, segment_bytes=2 * one)
    assert wal.next_lsn == 7
    wal.start()
    try:
        assert append_all(wal, [batch(7), batch(8)]) == [7, 8]
    finally:
        wal.close()
    assert [s[0] for s in WriteAheadLog(waldir).segments()] == [0, 2, 4, 6, 8]


def test_truncate_before_deletes_only_fully_covered_segments(waldir: Path) -> None:
    one = record_size(batch(0))
    wal = open_wal(waldir, segment_bytes=2 * one)
    try:
        append_all(wal, [batch(k) for k in range(7)])  # segments 0, 2, 4, 6
        assert wal.truncate_before(0) == 0
        assert wal.truncate_before(3) == 1  # segment 0 holds 0,1; segment 2 still needed
        assert [s[0] for s in wal.segments()] == [2, 4, 6]
        assert [r.lsn for r in wal.read(3)] == [3, 4, 5, 6]
        assert wal.truncate_before(4) == 1
        assert [s[0] for s in wal.segments()] == [4, 6]
        # Everything done: the writer starts an empty segment, the last one goes.
        assert wal.truncate_before(7) == 2
        assert [(s[0], s[1].stat().st_size) for s in wal.segments()] == [(7, 0)]
        assert wal.truncate_before(7) == 0  # nothing more to do
        assert append_all(wal, [batch(7)]) == [7]
    finally:
        wal.close()
    wal = WriteAheadLog(waldir)
    assert wal.next_lsn == 8
    assert [r.lsn for r in wal.read(0)] == [7]


def test_a_log_trimmed_to_nothing_keeps_numbering_after_a_restart(waldir: Path) -> None:
    wal = open_wal(waldir)
    try:
        append_all(wal, [batch(k) for k in range(5)])
        assert wal.truncate_before(5) == 1
    finally:
        wal.close()
    wal = open_wal(waldir)
    try:
        assert wal.next_lsn == 5 and list(wal.read(0)) == []
        assert append_all(wal, [batch(5)]) == [5]
        assert wal.truncate_before(6) == 1  # the segment opened before the restart
        assert append_all(wal, [batch(6)]) == [6]
    finally:
        wal.close()
    assert [r.lsn for r in WriteAheadLog(waldir).read(0)] == [6]


def test_group_commit_under_concurrent_appends(waldir: Path) -> None:
    wal = open_wal(waldir)
    threads, per_thread, burst = 8, 120, 6
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            lsns = []
            for i in range(0, per_thread, burst):
                futs = [wal.append(batch(k * 1000 + j, n=2)) for j in range(i, i + burst)]
                lsns += [f.result(timeout=20) for f in futs]
            got[k] = lsns
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    try:
        assert not errors
        n = threads * per_thread
        assert wal.next_lsn == n
        assert sorted(lsn for lsns in got.values() for lsn in lsns) == list(range(n))
        for lsns in got.values():  # each writer's records keep its order
            assert lsns == sorted(lsns)
        assert 1 <= wal.fsyncs <= n // 2, (wal.fsyncs, n)
        # Every LSN holds the batch its writer got it for.
        by_lsn = {r.lsn: r.batch for r in wal.read(0)}
        for k, lsns in got.items():
            for j, lsn in enumerate(lsns):
                assert same(by_lsn[lsn], batch(k * 1000 + j, n=2))
    finally:
        wal.close()


def test_queued_appends_share_fsyncs_up_to_256_per_group(waldir: Path) -> None:
    wal = WriteAheadLog(waldir)
    futs = [wal.append(batch(k, n=1)) for k in range(600)]  # queued before the writer runs
    wal.start()
    try:
        assert [f.result(timeout=20) for f in futs] == list(range(600))
        assert wal.fsyncs == 3  # 256 + 256 + 88
    finally:
        wal.close()


def test_no_fsync_mode_counts_no_fsyncs(waldir: Path) -> None:
    wal = open_wal(waldir, fsync=False)
    try:
        append_all(wal, [batch(0), batch(1)])
        assert wal.fsyncs == 0
    finally:
        wal.close()
    assert [r.lsn for r in WriteAheadLog(waldir).read(0)] == [0, 1]


def test_write_after_log_damage_below_loaded_position_is_not_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = Node(data, flush_interval=0.05).start()
    node.ingestor.loader._trimmed_lsn = 2**62  # a log not trimmed yet
    try:
        for k in range(3):
            lsn = node.ingestor.write_sync(batch(k, n=1))
        assert node.ingestor.wait_visible(lsn)
    finally:
        node.stop()
    seg = segment_files(data / "wal")[-1]
    raw = bytearray(seg.read_bytes())
    raw[HEADER.size + 10] ^= 0xFF  # damage record 0, already loaded
    seg.write_bytes(bytes(raw))

    node = Node(data, flush_interval=0.05).start()
    try:
        lsn = node.ingestor.write_sync(batch(50, n=1))
        node.ingestor.wait_visible(lsn, timeout=3)
        n = node.backend.query("SELECT count() AS n FROM raw WHERE sensor = 50")
        assert n.column("n")[0].as_py() == 1
    finally:
        node.stop()


def write_groups(directory: Path, direct: bool, groups: list[list[PointBatch]]) -> WriteAheadLog:
    """Append each group as one group commit (queued before the writer runs),
    reopening the log between groups."""
    for group in groups:
        wal = WriteAheadLog(directory, direct=direct)
        futs = [wal.append(b) for b in group]
        wal.start()
        try:
            [f.result(timeout=20) for f in futs]
        finally:
            wal.close()
    return wal


def test_direct_writes_leave_the_bytes_of_plain_appends(tmp_path: Path) -> None:
    # Records of 57 bytes to 40 KB, groups of 1 to 300 records (more buffers
    # than one writev takes), and restarts that continue a partial block.
    rng = np.random.default_rng(7)
    groups = [
        [batch(int(k), n=int(rng.integers(1, 2000))) for k in rng.integers(0, 10**6, size)]
        for size in (1, 3, 300, 1, 17, 2)
    ]
    wal = write_groups(tmp_path / "direct", True, groups)
    if not wal.direct_io:
        pytest.skip("this filesystem has no O_DIRECT")
    write_groups(tmp_path / "plain", False, groups)
    (direct,), (plain,) = segment_files(tmp_path / "direct"), segment_files(tmp_path / "plain")
    assert direct.read_bytes() == plain.read_bytes()
    recs = list(WriteAheadLog(tmp_path / "direct").read(0))
    flat = [b for g in groups for b in g]
    assert len(recs) == len(flat) and all(same(r.batch, b) for r, b in zip(recs, flat))


def test_zeros_of_a_direct_write_cut_short_are_cut_on_reopen(waldir: Path) -> None:
    # A crash after the block write and before the file is cut back to the
    # records' end leaves zeros: recovery drops them and numbering goes on.
    wal = open_wal(waldir)
    append_all(wal, [batch(0), batch(1)])
    wal.close()
    (seg,) = segment_files(waldir)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(4096 - size % 4096))
    wal = open_wal(waldir)
    try:
        assert seg.stat().st_size == size
        assert append_all(wal, [batch(2)]) == [2]
    finally:
        wal.close()
    assert [r.lsn for r in WriteAheadLog(waldir).read(0)] == [0, 1, 2]


def check_failed_group(
    waldir: Path, direct: bool, monkeypatch: pytest.MonkeyPatch, name: str, fake, match: str
) -> None:
    """A group whose ``os.<name>`` call is replaced by ``fake(real)`` is not
    acknowledged; the next group takes its LSN and follows the last record."""
    wal = open_wal(waldir, direct=direct)
    try:
        append_all(wal, [batch(0, n=3000)])
        if name == "write":
            name = "pwrite" if wal.direct_io else "writev"
        real = getattr(os, name)
        monkeypatch.setattr(os, name, fake(name, real))
        with pytest.raises(OSError, match=match):
            wal.append(batch(1, n=5000)).result(timeout=10)
        monkeypatch.setattr(os, name, real)
        assert append_all(wal, [batch(2, n=10)]) == [1]
    finally:
        wal.close()
    recs = list(WriteAheadLog(waldir).read(0))
    assert [r.lsn for r in recs] == [0, 1]
    assert same(recs[0].batch, batch(0, n=3000)) and same(recs[1].batch, batch(2, n=10))


@pytest.mark.parametrize("direct", [True, False])
def test_failed_write_is_not_acknowledged_and_its_lsns_are_reused(
    waldir: Path, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(name, real):
        def write(fd, buf, *rest):
            real(fd, buf[: 4096 if name == "pwrite" else 1], *rest)  # a torn start
            raise OSError(errno.ENOSPC, "No space left on device")

        return write

    check_failed_group(waldir, direct, monkeypatch, "write", full_disk, "No space")


@pytest.mark.parametrize("direct", [True, False])
def test_failed_sync_is_not_acknowledged_and_the_next_group_follows_the_last_record(
    waldir: Path, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The group was written whole before fdatasync failed: the file is cut back,
    # and a direct writer must also take back the partial block it kept.
    def failing(name, real):
        def sync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        return sync

    check_failed_group(waldir, direct, monkeypatch, "fdatasync", failing, "Input/output")


def test_an_idle_node_trims_its_log_to_an_empty_segment(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def log_bytes() -> int:
        return sum(p.stat().st_size for p in segment_files(data / "wal"))

    def stored() -> int:
        return node.backend.query("SELECT count() AS n FROM raw").column("n")[0].as_py()

    node = Node(data, flush_interval=0.05).start()
    try:
        for k in range(20):
            lsn = node.ingestor.write_sync(batch(k, n=1000))
        assert node.ingestor.wait_visible(lsn)
        deadline = time.monotonic() + 10
        while log_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log_bytes() == 0 and stored() == 20_000
    finally:
        node.stop()
    node = Node(data, flush_interval=0.05).start()
    try:  # numbering goes on after the restart, and nothing is loaded twice
        lsn2 = node.ingestor.write_sync(batch(20, n=1000))
        assert lsn2 == lsn + 1 and node.ingestor.wait_visible(lsn2)
        assert stored() == 21_000
    finally:
        node.stop()


def test_an_acknowledged_record_was_synced_after_its_bytes(
    waldir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable before acknowledged: each append's future resolves only after
    an fdatasync of its segment made when the segment already held it."""
    synced: list[tuple[int, int]] = []  # (inode, the file's size then)
    real = os.fdatasync

    def spy(fd: int) -> None:
        real(fd)
        st = os.fstat(fd)
        synced.append((st.st_ino, st.st_size))

    monkeypatch.setattr(os, "fdatasync", spy)
    wal = open_wal(waldir, segment_bytes=64 << 10)
    try:
        for k in range(12):  # across segments
            wal.append(batch(k, n=500)).result(timeout=10)
            seg = segment_files(waldir)[-1]
            st = seg.stat()
            assert any(i == st.st_ino and n >= st.st_size for i, n in synced), k
    finally:
        wal.close()


def test_the_log_is_trimmed_only_after_the_store_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClickHouse does not fsync its parts: the log that could replay a load
    is cut only after the store's filesystem was synced."""
    import lenshouse.storage.store as store_module

    events: list[str] = []
    real_syncfs, real_trim = store_module.syncfs, WriteAheadLog.truncate_before

    def syncfs(path: Path) -> None:
        events.append("sync")
        real_syncfs(path)

    def trim(self: WriteAheadLog, lsn: int) -> int:
        events.append("trim")
        return real_trim(self, lsn)

    monkeypatch.setattr(store_module, "syncfs", syncfs)
    monkeypatch.setattr(WriteAheadLog, "truncate_before", trim)
    node = Node(tmp_path / "data", flush_interval=0.05).start()
    try:
        for k in range(20):
            lsn = node.ingestor.write_sync(batch(k, n=1000))
        assert node.ingestor.wait_visible(lsn)
        deadline = time.monotonic() + 10
        while "trim" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.stop()
    assert "trim" in events
    last = -1
    for i, e in enumerate(events):
        if e == "trim":  # a sync since the previous trim
            assert "sync" in events[last + 1 : i], events
            last = i
