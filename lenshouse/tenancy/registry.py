"""The registry of tenants and tokens, and its file implementation.

A registry answers one question on every request, ``grant(token)``: which
tenant (or the admin) a presented token speaks for, or nothing. It answers
from memory: the file one re-reads its file when the file changes (so
``lenshouse tenant create`` works against a running server), the keeper one
(:mod:`lenshouse.tenancy.keeper`) follows the keeper's nodes with watches.

Ownership: ``_grants`` is replaced whole (never mutated) by whichever thread
reloads; readers take the current dict without a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from lenshouse.points import TENANT_RE

ADMIN_TOKEN_ENV = "LENSHOUSE_ADMIN_TOKEN"  # an admin token given to a role (a Secret)
ADMIN_MIN_CHARS = 24  # shorter is a placeholder ("change-me"), not a secret
ADMIN = "*admin*"  # the grant of an admin token: not a tenant name (TENANT_RE refuses it)
TOKEN_PREFIX = "lh_"
FILE_NAME = "tenants.json"


class TenancyError(ValueError):
    """A refused registry operation (unknown tenant, bad name); says why."""


class NoSuchToken(TenancyError):
    """A revocation named a token its tenant does not have."""


@dataclass(frozen=True)
class TokenRecord:
    id: str  # 8 hex digits, part of the token itself: shown in lists, used to revoke
    tenant: str  # a tenant name, or ADMIN
    sha256: str
    created: float  # epoch seconds


def new_token(tenant: str) -> tuple[str, TokenRecord]:
    """A fresh token for ``tenant`` and the record the registry keeps of it."""
    token_id = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(20)}"
    return token, TokenRecord(token_id, tenant, digest(token), round(time.time(), 3))


def digest(token: str) -> str:
    # Tokens carry 160 random bits: a fast hash is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not TENANT_RE.match(name):
        raise TenancyError(
            f"tenant name {name!r}: use 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return name


class Registry(Protocol):
    def grant(self, token: str) -> str | None:
        """The tenant (or :data:`ADMIN`) ``token`` speaks for; None if unknown."""
        ...

    def create(self, tenant: str) -> str:
        """A new token for ``tenant`` (creating the tenant); the token itself,
        which is never stored and cannot be shown again."""
        ...

    def revoke(self, tenant: str, token_id: str | None = None) -> int:
        """Revoke one token of ``tenant``, or all of them; how many were revoked."""
        ...

    def tenants(self) -> dict[str, list[TokenRecord]]:
        """Every tenant with its live tokens (records, not tokens)."""
        ...

    def close(self) -> None: ...


def _grants(records: list[TokenRecord]) -> dict[str, str]:
    return {r.sha256: r.tenant for r in records}


def _by_tenant(records: list[TokenRecord]) -> dict[str, list[TokenRecord]]:
    out: dict[str, list[TokenRecord]] = {}
    for r in records:
        out.setdefault(r.tenant, []).append(r)
    return out


class FileRegistry:
    """Tokens in ``<data>/tenants.json`` (mode 0600), written by atomic
    replace and read again when its modification time or size changes.

    Ownership: request threads read (``grant``, ``tenants``), the admin routes
    write. ``_lock`` guards the file and ``_stamp``, ``_records`` and
    ``_grants``, which a reload replaces whole, so a reader without the lock
    sees the old mapping or the new one; ``_checked`` is a hint any thread may
    overwrite (at worst one more stat of the file)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._lock = threading.Lock()  # writers (create/revoke) and reloads
        self._stamp: tuple[int, int] | None = None
        self._records: list[TokenRecord] = []
        self._grants: dict[str, str] = {}
        self._checked = 0.0
        self._reload(force=True)

    # -- reading --------------------------------------------------------------
    def grant(self, token: str) -> str | None:
        now = time.monotonic()
        if now - self._checked > 1.0:  # a revocation is seen within a second
            self._checked = now
            self._reload()
        return self._grants.get(digest(token))

    def tenants(self) -> dict[str, list[TokenRecord]]:
        self._reload()
        return _by_tenant(self._records)

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._records, self._grants, self._stamp = [], {}, None
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp and not force:
                return
            self._records = self._read()
            self._grants = _grants(self._records)
            self._stamp = stamp

    def _read(self) -> list[TokenRecord]:
        try:
            doc = json.loads(self.path.read_text())
            return [TokenRecord(**r) for r in doc["tokens"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TenancyError(f"{self.path} is not a lenshouse tenants file: {e}") from None

    # -- writing --------------------------------------------------------------
    def create(self, tenant: str) -> str:
        if tenant != ADMIN:
            check_name(tenant)
        token, record = new_token(tenant)
        self._update(lambda rs: [*rs, record])
        return token

    def revoke(self, tenant: str, token_id: str | None = None) -> int:
        gone: list[TokenRecord] = []

        def drop(rs: list[TokenRecord]) -> list[TokenRecord]:
            keep = []
            for r in rs:
                hit = r.tenant == tenant and token_id in (None, r.id)
                (gone if hit else keep).append(r)
            return keep

        self._update(drop)
        if token_id is not None and not gone:
            raise NoSuchToken(f"tenant {tenant!r} has no token {token_id!r}")
        return len(gone)

    def _update(self, change) -> None:
        with self._lock:
            records = self._read() if self.path.exists() else []
            records = change(records)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"tokens": [asdict(r) for r in records]}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            st = self.path.stat()
            self._records, self._grants = records, _grants(records)
            self._stamp = (st.st_mtime_ns, st.st_size)

    def close(self) -> None:
        pass
