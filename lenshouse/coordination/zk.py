"""The keeper connection and where lenshouse keeps its state in it.

Layout, under ``/lenshouse/<database>``:

- ``seq``: the next load number, shared by all loaders (a counter);
- ``partitions/p<N>``: partition N's progress (JSON, see ``progress``);
- ``owners/p<N>``: ephemeral, the loader that owns partition N;
- ``loaders/<id>``: ephemeral, one per running loader;
- ``storage``: what the cluster's ClickHouse can do (JSON, written by loaders).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError
from kazoo.retry import KazooRetry

from lenshouse.storage.errors import RetryableError

# A loader that dies loses its partitions once its session expires: this bounds
# the takeover time (plus one ownership round).
SESSION_TIMEOUT_S = 6.0


@dataclass(frozen=True)
class Paths:
    database: str

    @property
    def root(self) -> str:
        return f"/lenshouse/{self.database}"

    @property
    def seq(self) -> str:
        return f"{self.root}/seq"

    def partition(self, p: int) -> str:
        return f"{self.root}/partitions/p{p}"

    def owner(self, p: int) -> str:
        return f"{self.root}/owners/p{p}"

    @property
    def loaders(self) -> str:
        return f"{self.root}/loaders"

    @property
    def storage(self) -> str:
        return f"{self.root}/storage"


def connect(hosts: list[str], timeout: float = 30.0) -> KazooClient:
    """A started client; its operations retry over connection losses for a
    few seconds, then raise."""
    zk = KazooClient(
        hosts=",".join(hosts),
        timeout=SESSION_TIMEOUT_S,
        connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=2.0),
        command_retry=KazooRetry(max_tries=5, delay=0.1, max_delay=1.0),
    )
    zk.start(timeout=timeout)
    return zk


def ensure_layout(zk: KazooClient, paths: Paths) -> None:
    zk.ensure_path(f"{paths.root}/partitions")
    zk.ensure_path(f"{paths.root}/owners")
    zk.ensure_path(paths.loaders)
    with contextlib.suppress(NodeExistsError):
        zk.create(paths.seq, b"0")


@contextlib.contextmanager
def keeper_errors(what: str) -> Iterator[None]:
    """Keeper trouble (no quorum, connection lost) as a retryable storage error."""
    try:
        yield
    except KazooException as e:
        raise RetryableError(f"keeper unavailable while {what}: {type(e).__name__} {e}") from e
