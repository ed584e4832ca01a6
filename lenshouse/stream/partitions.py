"""Partitions of the log: one per ClickHouse shard, by the shard's own key.

A point of (tenant, sensor) goes to partition ``shard_of(tenant, sensor)``,
so one partition's loads touch one shard and the loader of a partition is the
only writer of its sensors' rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lenshouse.points import PointBatch
from lenshouse.storage.replicated.sharding import shard_of


@dataclass(frozen=True)
class LogLayout:
    """The streams of one deployment: ``{prefix}_P{n}`` with subject
    ``{prefix}.p{n}``, for n in 0 .. partitions-1; loads are announced on
    ``{prefix}.loaded.p{n}``."""

    prefix: str = "LH"
    partitions: int = 2

    def stream(self, partition: int) -> str:
        return f"{self.prefix}_P{partition}"

    def subject(self, partition: int) -> str:
        return f"{self.prefix.lower()}.p{partition}"

    def loaded_subject(self, partition: int) -> str:
        """Where the partition's loader announces each load's rows (core NATS,
        outside every stream: nothing is stored)."""
        return f"{self.prefix.lower()}.loaded.p{partition}"

    def loaded_partition(self, subject: str) -> int | None:
        head, _, p = subject.rpartition(".p")
        if head != f"{self.prefix.lower()}.loaded" or not p.isdigit():
            return None
        return int(p) if int(p) < self.partitions else None


def split(batch: PointBatch, partitions: int) -> list[tuple[int, PointBatch]]:
    """The batch's points by partition, each part in the batch's own order."""
    if partitions == 1 or len(batch) == 0:
        return [(0, batch)] if len(batch) else []
    owner = shard_of(batch.tenant, batch.sensor, partitions)
    out = []
    for p in range(partitions):
        mask = owner == p
        if mask.all():
            return [(p, batch)]
        if mask.any():
            out.append(
                (p, PointBatch(batch.tenant, batch.sensor[mask], batch.ts[mask], batch.value[mask]))
            )
    return out


def partition_of(tenant: str, sensors: np.ndarray, partitions: int) -> np.ndarray:
    return shard_of(tenant, np.asarray(sensors, np.uint32), partitions)
