"""Tokens in the keeper, for cluster mode: one node per token,
``/lenshouse/<database>/tokens/<id>``, holding its record as JSON.

Every gateway and lens server follows the node's children with a watch and
keeps the grants in memory, so a request never waits on the keeper: while
the keeper is away, the tokens known before keep working and a revocation
takes effect when it is back (the watch fires again).

Ownership: ``_grants`` and ``_records`` are replaced whole by kazoo's watch
thread; request threads read the current ones without a lock.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from lenshouse.coordination.zk import Paths, connect, keeper_errors
from lenshouse.tenancy.registry import (
    ADMIN,
    NoSuchToken,
    TokenRecord,
    _by_tenant,
    _grants,
    check_name,
    digest,
    new_token,
)


@contextlib.contextmanager
def opened(hosts: list[str], database: str, timeout: float = 30.0) -> Iterator[KeeperRegistry]:
    """A registry on a keeper connection of its own, closed afterwards (for
    commands; a role keeps its connection for its life)."""
    zk = connect(hosts, timeout=timeout)
    try:
        yield KeeperRegistry(zk, Paths(database))
    finally:
        zk.stop()
        zk.close()


def tokens_path(paths: Paths) -> str:
    return f"{paths.root}/tokens"


class KeeperRegistry:
    def __init__(self, zk: KazooClient, paths: Paths) -> None:
        self.zk = zk
        self.path = tokens_path(paths)
        self._records: list[TokenRecord] = []
        self._grants: dict[str, str] = {}
        with keeper_errors("reading the tokens"):
            zk.ensure_path(self.path)
            zk.ChildrenWatch(self.path, self._children)

    def _children(self, children: list[str]) -> None:
        records = []
        for child in children:
            try:
                data, _ = self.zk.get(f"{self.path}/{child}")
            except NoNodeError:  # revoked while we read
                continue
            records.append(TokenRecord(**json.loads(data)))
        self._records, self._grants = records, _grants(records)

    def grant(self, token: str) -> str | None:
        return self._grants.get(digest(token))

    def tenants(self) -> dict[str, list[TokenRecord]]:
        return _by_tenant(self._records)

    def create(self, tenant: str) -> str:
        if tenant != ADMIN:
            check_name(tenant)
        token, record = new_token(tenant)
        with keeper_errors("storing a token"):
            self.zk.create(f"{self.path}/{record.id}", json.dumps(asdict(record)).encode())
        self._children(self.zk.get_children(self.path))  # this process sees it at once
        return token

    def revoke(self, tenant: str, token_id: str | None = None) -> int:
        gone = [r for r in self._records if r.tenant == tenant and token_id in (None, r.id)]
        if token_id is not None and not gone:
            raise NoSuchToken(f"tenant {tenant!r} has no token {token_id!r}")
        with keeper_errors("revoking tokens"):
            for r in gone:
                with contextlib.suppress(NoNodeError):  # revoked meanwhile
                    self.zk.delete(f"{self.path}/{r.id}")
            self._children(self.zk.get_children(self.path))
        return len(gone)

    def close(self) -> None:
        pass  # the keeper client belongs to the role
