"""NATS JetStream: the partition streams, and blocking access to them for the
loader's threads (nats-py is asyncio; :class:`LoopThread` runs its loop).

Every stream is replicated (``num_replicas``, file storage) and holds at most
its share of the log's byte budget; past it, publishes are refused
(``discard=new``) and the gateway answers 503 with ``Retry-After``: nothing
accepted is ever dropped to make room. Loaders delete what they have loaded.

Loaded records are deleted one by one, never purged by sequence: a server of
the 2.9 series that restarts replays a purge from its raft log as "drop
everything up to the stream's last record *when the purge was asked*"
(nats-io/nats-server#4196, fixed in 2.9.18), so on that replica records not
yet loaded vanish, and once it leads, the records it serves at those
positions are not the ones acknowledged. A message delete replays exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from lenshouse.ingest.wal import Record
from lenshouse.stream import payload
from lenshouse.stream.partitions import LogLayout

log = logging.getLogger(__name__)

T = TypeVar("T")

# 10 minutes at 1M points/s: ~10 bytes a point in LZ4-compressed Arrow.
DEFAULT_BUDGET_BYTES = 6 << 30
DUPLICATE_WINDOW_S = 120.0  # a producer's retry within this is dropped by message id
MAX_MESSAGE_BYTES = 8 << 20  # the servers' max_payload; gateways split larger batches
FETCH_BATCH = 16
# A reader's consumer outlives this much idleness (back-pressure while loading
# waits for ClickHouse); the server drops consumers of loaders that died.
CONSUMER_IDLE_S = 600.0
# Without a message for this long while the stream holds later records, a
# reader renews its consumer.
CHECK_AFTER_S = 5.0
DELETES_IN_FLIGHT = 64  # message deletes of a trim sent at once
CONSUMER_TRIES = 4  # consumer creations asked before giving up (5 s each)
SEQUENCE_NOT_FOUND = 10043  # JetStream's err_code: the stream does not hold that record
DELETE_FAILED = 10057  # … a delete the store refused ("no message found" among others)


class LogUnavailable(Exception):
    """The log did not store a message (no quorum, no leader, not reachable)."""


class LogFull(LogUnavailable):
    """The log holds its whole byte budget: the sender must wait (503)."""


# Servers of the 2.9 series replay a purge after a restart as "drop everything
# up to the stream's last record when it was asked" (nats-io/nats-server#4196):
# acknowledged records vanish. lenshouse ships and tests 2.15.
MIN_SERVER = (2, 10)


class OldServer(RuntimeError):
    """The NATS server is of a series that loses acknowledged records."""


def check_server(version: str) -> None:
    """Refuse a server older than ``MIN_SERVER`` (its ``INFO`` version)."""
    m = re.match(r"v?(\d+)\.(\d+)", version or "")
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_SERVER:
        need = ".".join(map(str, MIN_SERVER))
        raise OldServer(
            f"NATS server {version or 'of unknown version'}: lenshouse needs {need} or later"
            " (2.9 loses acknowledged records after restarts, nats-io/nats-server#4196);"
            " pip install 'lenshouse[cluster]' brings nats-server 2.15"
        )


async def connect(servers: list[str], name: str) -> NATS:
    """A connection that reconnects by itself, forever, to any of ``servers``;
    refused (:class:`OldServer`) if the server is too old."""
    nc = await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        allow_reconnect=True,
    )
    try:
        v = nc.connected_server_version
        check_server(f"{v.major}.{v.minor}.{v.patch}")
    except OldServer:
        await nc.close()
        raise
    return nc


def stream_config(layout: LogLayout, partition: int, replicas: int, budget: int) -> StreamConfig:
    return StreamConfig(
        name=layout.stream(partition),
        subjects=[layout.subject(partition)],
        description=json.dumps({"partition": partition, "partitions": layout.partitions}),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_bytes=budget // layout.partitions,
        discard=DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_MESSAGE_BYTES,
    )


async def ensure_streams(
    js: JetStreamContext, layout: LogLayout, replicas: int, budget: int = DEFAULT_BUDGET_BYTES
) -> None:
    """Create the partition streams the log lacks; a different partition count
    than the existing streams' is refused (it would move sensors)."""
    existing = await discover(js, layout.prefix)
    if existing is not None and existing != layout.partitions:
        raise ValueError(
            f"the log {layout.prefix} has {existing} partitions, not {layout.partitions}"
        )
    for p in range(layout.partitions):
        cfg = stream_config(layout, p, replicas, budget)
        try:
            await js.stream_info(cfg.name)
            await js.update_stream(cfg)
        except NotFoundError:
            await js.add_stream(cfg)


async def discover(js: JetStreamContext, prefix: str) -> int | None:
    """How many partitions the log ``prefix`` has; None if it does not exist."""
    try:
        info = await js.stream_info(LogLayout(prefix).stream(0))
    except NotFoundError:
        return None
    return int(json.loads(info.config.description or "{}")["partitions"])


class LoopThread:
    """An asyncio loop in a daemon thread, for code that blocks.

    Ownership: coroutines run only on the loop's thread; callers wait on
    futures."""

    def __init__(self, name: str = "nats") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class PartitionStream:
    """One partition's stream, read by the loader that owns it.

    Positions are the stream's own sequence numbers (the records' ``lsn``),
    so a load's boundaries mean the same to any loader on any host."""

    def __init__(
        self,
        loop: LoopThread,
        nc: NATS,
        js: JetStreamContext,
        layout: LogLayout,
        partition: int,
    ) -> None:
        self.loop = loop
        self.nc = nc
        self.js = js
        self.partition = partition
        self.name = layout.stream(partition)
        self.subject = layout.subject(partition)
        self._kept_from: int | None = None  # records below it are deleted

    # -- blocking, for the loader's threads ----------------------------------
    def read_range(self, first: int, last: int, timeout: float = 60.0) -> list[Record]:
        """Records ``first`` .. ``last``, every one of them (or an error)."""
        return self.loop.run(self._read_range(first, last), timeout)

    def truncate_before(self, lsn: int, timeout: float = 30.0) -> int:
        """Delete the records below ``lsn`` (they are loaded), so that the
        log's byte budget holds only what is not; how many were deleted.
        Called by one thread at a time (the loader's trim), which alone
        keeps ``_kept_from``."""
        if self._kept_from is None:
            info = self.loop.run(self.js.stream_info(self.name), timeout)
            self._kept_from = int(info.state.first_seq)
        deleted = 0
        while self._kept_from < lsn:
            chunk = range(self._kept_from, min(lsn, self._kept_from + DELETES_IN_FLIGHT))
            deleted += self.loop.run(self._delete_all(chunk), timeout)
            self._kept_from = chunk.stop  # every record of the chunk is gone
        return deleted

    def last_lsn(self) -> int:
        info = self.loop.run(self.js.stream_info(self.name), 10.0)
        return int(info.state.last_seq)

    def follow(
        self,
        from_lsn: int,
        submit: Callable[[Record, float], None],
        stopped: threading.Event,
        wait: Callable[[], None],
    ) -> None:
        """Feed ``submit(record, stored_at)`` every record from ``from_lsn`` on,
        in order, until ``stopped``; ``wait()`` is called before each fetch
        (back-pressure)."""
        self.loop.run(self._follow(from_lsn, submit, stopped, wait), None)

    # -- on the loop ------------------------------------------------------------
    async def _consumer(self, start: int):
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=CONSUMER_IDLE_S,
        )
        # Right after a stream's leader changed, creating a consumer may go
        # unanswered for a while (measured on 2.15): ask again, a few times.
        for attempt in range(CONSUMER_TRIES):
            try:
                return await self.js.pull_subscribe(
                    self.subject, durable=None, stream=self.name, config=config
                )
            except nats.errors.TimeoutError:
                if attempt == CONSUMER_TRIES - 1:
                    raise
                await asyncio.sleep(0.5)

    async def _delete_all(self, seqs: range) -> int:
        return sum(await asyncio.gather(*(self._delete(seq) for seq in seqs)))

    async def _delete(self, seq: int) -> bool:
        """Delete record ``seq`` without overwriting its bytes (they are
        loaded, not secret); False if the stream no longer holds it."""
        req = json.dumps({"seq": seq, "no_erase": True}).encode()
        msg = await self.nc.request(f"$JS.API.STREAM.MSG.DELETE.{self.name}", req, timeout=10)
        resp = json.loads(msg.data)
        error = resp.get("error")
        if error is None:
            return True
        code, text = error.get("err_code"), str(error.get("description", ""))
        if code == SEQUENCE_NOT_FOUND or (code == DELETE_FAILED and "no message found" in text):
            return False  # deleted already (a trim retried, or an earlier owner's)
        raise LogUnavailable(f"{self.name}: deleting record {seq} failed: {error}")

    async def _holds(self, lsn: int) -> bool:
        """Whether the stream holds record ``lsn`` (False when it cannot tell)."""
        try:
            info = await self.js.stream_info(self.name)
        except Exception:
            return False
        return int(info.state.last_seq) >= lsn

    async def _read_range(self, first: int, last: int) -> list[Record]:
        out: list[Record] = []
        sub = await self._consumer(first)
        try:
            while not out or out[-1].lsn < last:
                want = min(FETCH_BATCH, last - (out[-1].lsn if out else first - 1))
                for msg in await sub.fetch(want, timeout=5):
                    seq = msg.metadata.sequence.stream
                    expected = out[-1].lsn + 1 if out else first
                    if seq != expected:
                        raise RuntimeError(
                            f"{self.name} lacks record {expected} (next is {seq}): "
                            "the log lost data it had acknowledged"
                        )
                    if seq <= last:
                        out.append(_record(msg))
        finally:
            await sub.unsubscribe()
        return out

    async def _follow(
        self,
        start: int,
        submit: Callable[[Record, float], None],
        stopped: threading.Event,
        wait: Callable[[], None],
    ) -> None:
        expected = start
        sub = None
        progress = time.monotonic()  # of the last message (or the end of a wait)
        while not stopped.is_set():
            try:
                if sub is None:
                    sub = await self._consumer(expected)
                t = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, wait)
                if time.monotonic() - t > 0.25:  # held back: not the consumer's fault
                    progress = time.monotonic()
                msgs = await sub.fetch(FETCH_BATCH, timeout=0.5)
                progress = time.monotonic()
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                if time.monotonic() - progress > CHECK_AFTER_S:
                    # A consumer the server dropped (idle too long) or lost (its
                    # server killed) answers fetches with nothing, forever.
                    progress = time.monotonic()
                    if await self._holds(expected):
                        log.warning(
                            "%s: no record from the consumer; renewing at %d", self.name, expected
                        )
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()
                        sub = None
                continue
            except Exception as e:  # connection lost, leader moving: a new consumer
                log.warning("%s: reading failed (%s); resuming at %d", self.name, e, expected)
                sub = None
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq < expected:
                    continue
                if seq > expected:
                    raise RuntimeError(
                        f"{self.name} lacks record {expected} (next is {seq}): "
                        "the log lost data it had acknowledged"
                    )
                submit(_record(msg), msg.metadata.timestamp.timestamp())
                expected += 1
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _record(msg) -> Record:
    return Record(msg.metadata.sequence.stream, payload.decode_message(msg.data, msg.headers))
