"""The asyncio client, for many concurrent readers (the load generator's
users share one): lenses, with the same retry policy as :class:`Client`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx

from lenshouse.client.answers import Lens, lens_params, read_lens
from lenshouse.client.retries import (
    Targets,
    parse_urls,
)
from lenshouse.tenancy.client import tenant_headers


class AsyncClient:
    def __init__(
        self,
        url: str | list[str],
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        connections: int = 100,
    ) -> None:
        """As :class:`lenshouse.client.Client`; ``connections``: how many
        requests may be open at once."""
        self.targets = Targets(parse_urls(url))
        self.retries = retries
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(
            headers=tenant_headers(tenant, token), timeout=timeout, limits=limits
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request under the retry policy; any 4xx raises."""
        attempts = self.targets.attempts(self.retries, None, None)
        for _ in range(1_000_000):  # bounded by the policy, which raises first
            try:
                r = await self.http.request(method, attempts.url(path), **kw)
                wait = attempts.answered(r)
            except httpx.TransportError as e:
                wait = attempts.lost(f"{method} {path}: {type(e).__name__} {e}".rstrip())
            if wait is None:
                return r
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def lens_response(self, params: dict[str, Any]) -> httpx.Response:
        """The raw answer to a lens (``lens_params``), for callers that time
        or measure it."""
        return await self.request("GET", "/v1/lens", params=params)

    async def lens(
        self,
        sensors: Iterable[int] | None,
        start: int,
        end: int,
        *,
        points: int | None = None,
        step: int | None = None,
        match: str | None = None,
        m4: bool = False,
    ) -> Lens:
        params = lens_params(sensors, start, end, points, step, match, m4)
        return read_lens((await self.lens_response(params)).content, sensors, m4)
