"""When a request is tried again, and where.

One policy for the sync and the async client: a connection error, a 429 or a
5xx is retried after a backoff (or the answer's ``Retry-After``), up to
``retries`` times, or for ``retry_for_s`` seconds when that is given (a
generator riding out a minute-long outage). With several servers ("any
gateway takes any batch"), requests start round-robin and a failed attempt
goes to the next one. Writes carry an ``X-Batch-Id``, so an attempt that was
applied before its answer was lost is stored once.

Ownership: a :class:`Targets` belongs to one client; its only mutable field,
``_next``, is advanced under its own lock. An :class:`Attempts` belongs to the
one request (and thread or task) that made it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

RETRY_AFTER_MAX_S = 30.0
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


class LenshouseError(RuntimeError):
    """A request lenshouse refused (4xx), or one that kept failing (status 0:
    no answer at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def parse_urls(url: str | list[str] | tuple[str, ...]) -> list[str]:
    """ "A,B" or a list: the servers, without trailing slashes."""
    urls = url.split(",") if isinstance(url, str) else list(url)
    out = [u.strip().rstrip("/") for u in urls if u.strip()]
    if not out:
        raise ValueError("a client needs at least one server URL")
    return out


@dataclass
class Targets:
    """The servers a client sends to, in turn.

    Ownership: shared by every thread of a client; ``_lock`` guards ``_next``."""

    urls: list[str]
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempts(
        self, retries: int, retry_for_s: float | None, on_retry: Callable[[bool], None] | None
    ) -> Attempts:
        """A new request's attempts, starting at the next server in turn."""
        return Attempts(self.urls, self.first(), retries, retry_for_s, on_retry)

    def first(self) -> int:
        with self._lock:
            i = self._next
            self._next = (i + 1) % len(self.urls)
        return i


@dataclass
class Attempts:
    """One request's attempts, for either client's loop: send to
    :meth:`url`, then report the answer (:meth:`answered`) or the lost
    connection (:meth:`lost`); each says how long to wait before the next
    attempt (None: the answer is final), or raises once the policy gives up."""

    urls: list[str]
    server: int  # the index of the server the next attempt goes to
    retries: int
    retry_for_s: float | None
    on_retry: Callable[[bool], None] | None  # called with "moves to another server"
    delay: float = FIRST_DELAY_S
    count: int = 0
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.retry_for_s is not None:
            self.deadline = time.monotonic() + self.retry_for_s

    def url(self, path: str) -> str:
        return self.urls[self.server] + path

    def answered(self, r: httpx.Response) -> float | None:
        if r.status_code < 400:
            return None
        if not retryable(r.status_code):
            raise LenshouseError(r.status_code, message(r))
        return self._failed(r.status_code, message(r), retry_after(r))

    def lost(self, what: str) -> float:
        return self._failed(0, what)

    def _failed(self, status: int, message: str, retry_after: float | None = None) -> float:
        self.count += 1
        now = time.monotonic()
        over = now > self.deadline if self.deadline is not None else self.count > self.retries
        if over:
            raise LenshouseError(status, message)
        if self.on_retry is not None:
            self.on_retry(len(self.urls) > 1)
        self.server = (self.server + 1) % len(self.urls)
        wait = max(self.delay, retry_after or 0.0)
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - now))
        self.delay = min(self.delay * 2, MAX_DELAY_S)
        return wait


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


def retry_after(r: httpx.Response) -> float | None:
    try:
        value = r.headers.get("Retry-After")
        return None if value is None else min(max(float(value), 0.0), RETRY_AFTER_MAX_S)
    except ValueError:
        return None


def message(r: httpx.Response) -> str:
    try:
        doc = r.json()
    except ValueError:
        return r.text[:500]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
