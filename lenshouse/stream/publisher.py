"""The gateway's side of the log: a validated batch, split by partition, is
published to the partition streams; it is acknowledged once every part is
stored on a quorum of its stream's replicas.

Each part's message id is derived from the batch (``X-Batch-Id`` or a hash of
the body), the tenant and the partition, so a producer's retry of a batch
whose acknowledgement it lost, through any gateway, is dropped by the log
(within its duplicate window); whatever slips past is dropped point by point
by the loader's first-value-wins deduplication."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace

import numpy as np
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError

from lenshouse.points import Erasure, PointBatch
from lenshouse.stream import payload
from lenshouse.stream.jetstream import MAX_MESSAGE_BYTES, LogFull, LogUnavailable
from lenshouse.stream.partitions import LogLayout, partition_of, split

MAX_BYTES_EXCEEDED = 10077  # JetStream's err_code for a stream at its byte limit
# Points per message: an encoded point is at most ~20 bytes; stay well under
# the servers' max_payload.
MAX_POINTS_PER_MESSAGE = MAX_MESSAGE_BYTES // 40


def batch_key(tenant: str, batch_id: str | None, body: bytes) -> str:
    """What identifies a batch across retries: its id, else its bytes."""
    ident = batch_id if batch_id else "h:" + hashlib.blake2b(body, digest_size=16).hexdigest()
    return f"{tenant}/{ident}"


class Publisher:
    """Ownership: used from the gateway's event loop only; ``stats`` fields are
    plain counters written there."""

    def __init__(self, js: JetStreamContext, layout: LogLayout, timeout: float = 10.0) -> None:
        self.js = js
        self.layout = layout
        self.timeout = timeout  # how long a publish is retried before the client hears 503
        self.published = 0
        self.duplicates = 0
        self.retries = 0
        self.refused_full = 0

    async def publish(self, batch: PointBatch, key: str) -> int:
        """Publish every part of ``batch``; how many messages the log already had."""
        parts = []
        for p, part in split(batch, self.layout.partitions):
            for k, lo in enumerate(range(0, len(part), MAX_POINTS_PER_MESSAGE)):
                chunk = _slice(part, lo, lo + MAX_POINTS_PER_MESSAGE)
                parts.append((p, f"{key}/p{p}/{k}", payload.encode(chunk)))
        deadline = time.monotonic() + self.timeout
        acks = await asyncio.gather(
            *(self._one(p, batch.tenant, mid, data, deadline) for p, mid, data in parts)
        )
        dups = sum(acks)
        self.published += len(parts) - dups
        self.duplicates += dups
        return dups

    async def publish_erasure(self, erasure: Erasure, key: str) -> int:
        """Publish a delete to the partition of each of its sensors (the
        partition whose loader alone writes them), so that it applies in
        order with their points; how many messages the log already had."""
        owner = partition_of(erasure.tenant, erasure.sensor, self.layout.partitions)
        parts = [
            (int(p), replace(erasure, sensor=erasure.sensor[owner == p])) for p in np.unique(owner)
        ]
        deadline = time.monotonic() + self.timeout
        kind = {payload.KIND_HEADER: payload.ERASE}
        acks = await asyncio.gather(
            *(
                self._one(
                    p, erasure.tenant, f"{key}/x{p}", payload.encode_erasure(e), deadline, kind
                )
                for p, e in parts
            )
        )
        dups = sum(acks)
        self.published += len(parts) - dups
        self.duplicates += dups
        return dups

    async def _one(
        self,
        partition: int,
        tenant: str,
        msg_id: str,
        data: bytes,
        deadline: float,
        extra: dict[str, str] | None = None,
    ) -> bool:
        headers = {"Nats-Msg-Id": msg_id, payload.TENANT_HEADER: tenant, **(extra or {})}
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                ack = await self.js.publish(
                    self.layout.subject(partition),
                    data,
                    timeout=max(0.5, min(2.0, left)),
                    headers=headers,
                )
                return bool(ack.duplicate)
            except ServiceUnavailableError as e:
                if e.err_code == MAX_BYTES_EXCEEDED:
                    self.refused_full += 1
                    raise LogFull(f"the log is full (partition {partition}); retry later") from e
                error: Exception = e
            except (NatsTimeout, NoRespondersError, APIError, asyncio.TimeoutError) as e:
                error = e  # no leader for a moment (election), or a server away
            except Exception as e:  # connection closed or reconnecting
                error = e
            if time.monotonic() + delay > deadline:
                raise LogUnavailable(
                    f"the log did not store partition {partition}: {type(error).__name__} {error}"
                ) from error
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _slice(batch: PointBatch, lo: int, hi: int) -> PointBatch:
    if lo == 0 and hi >= len(batch):
        return batch
    return PointBatch(batch.tenant, batch.sensor[lo:hi], batch.ts[lo:hi], batch.value[lo:hi])
