"""Which loader owns which log partition: ephemeral nodes in the keeper.

Each loader registers itself (``loaders/<id>``) and, every round, takes
partitions that nobody owns (``owners/p<N>``, ephemeral, created by the
taker) up to its fair share, ceil(partitions / loaders), and gives back
the ones above it when loaders join. A loader that dies loses its owner
nodes when its session expires (:data:`~lenshouse.coordination.zk.SESSION_TIMEOUT_S`),
and another takes them within a round. Owning the node only lets a loader
*try*: it writes nothing before raising the partition's fence
(:class:`~lenshouse.coordination.progress.PartitionProgress`), and a stale
owner's writes fail on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable
from typing import Protocol

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from lenshouse.coordination.zk import Paths

log = logging.getLogger(__name__)

ROUND_S = 0.5


class Worker(Protocol):
    def stop(self) -> None: ...
    @property
    def alive(self) -> bool: ...


class Ownership:
    """Ownership: ``run`` (one thread) owns ``workers``; the kazoo listener
    only sets ``_lost``. ``owned()`` may be read from any thread."""

    def __init__(
        self,
        zk: KazooClient,
        paths: Paths,
        partitions: int,
        member: str,
        start_worker: Callable[[int], Worker],
    ) -> None:
        self.zk = zk
        self.paths = paths
        self.partitions = partitions
        self.member = member
        self.start_worker = start_worker
        self.workers: dict[int, Worker] = {}
        self.takeovers = 0
        self.releases = 0
        self._lost = threading.Event()
        self._lock = threading.Lock()
        zk.add_listener(self._state)

    def _state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._lost.set()

    def owned(self) -> list[int]:
        with self._lock:
            return sorted(self.workers)

    def run(self, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                self.round()
            except KazooException as e:
                log.warning("ownership round failed (%s); retrying", e)
            stopped.wait(ROUND_S)
        self.release_all()

    def round(self) -> None:
        if self._lost.is_set():
            # The session expired: the owner nodes are gone, maybe taken.
            log.warning("keeper session lost: stopping partitions %s", self.owned())
            self._lost.clear()
            self._stop_all(delete=False)
        self._register()
        for p, w in list(self.workers.items()):
            if not w.alive:  # fenced, or failed: let another loader (or us) try again
                self._release(p)
        members = max(1, len(self.zk.get_children(self.paths.loaders)))
        share = math.ceil(self.partitions / members)
        for p in self._preferred():
            if len(self.workers) >= share:
                break
            if p not in self.workers and self._take(p):
                self.takeovers += 1
                worker = self.start_worker(p)
                with self._lock:
                    self.workers[p] = worker
        while len(self.workers) > share:
            self._release(max(self.workers))
            self.releases += 1

    def _preferred(self) -> list[int]:
        """Partitions in an order that spreads loaders: each starts at its own."""
        start = sum(self.member.encode()) % self.partitions
        return [(start + k) % self.partitions for k in range(self.partitions)]

    def _register(self) -> None:
        path = f"{self.paths.loaders}/{self.member}"
        if self.zk.exists(path) is None:
            with contextlib.suppress(NodeExistsError):
                self.zk.create(path, b"", ephemeral=True, makepath=True)

    def _take(self, p: int) -> bool:
        try:
            self.zk.create(self.paths.owner(p), self.member.encode(), ephemeral=True, makepath=True)
        except NodeExistsError:
            return False
        log.info("took partition %d", p)
        return True

    def _release(self, p: int) -> None:
        with self._lock:
            worker = self.workers.pop(p)
        worker.stop()
        try:
            raw, _ = self.zk.get(self.paths.owner(p))
            if raw.decode() == self.member:
                self.zk.delete(self.paths.owner(p))
        except NoNodeError:
            pass
        log.info("released partition %d", p)

    def _stop_all(self, delete: bool) -> None:
        for p in list(self.workers):
            if delete:
                self._release(p)
            else:
                with self._lock:
                    worker = self.workers.pop(p)
                worker.stop()

    def release_all(self) -> None:
        try:
            self._stop_all(delete=True)
        except KazooException:
            self._stop_all(delete=False)
