"""What every route module shares: the answer type and the error shape, the
read and write sides the routes are given, request bodies and tenant quotas."""

from __future__ import annotations

from typing import Protocol

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from lenshouse.ingest.ingestor import Overloaded
from lenshouse.lens.engine import LensEngine
from lenshouse.points import (
    BadInput,
    Erasure,
    Invalid,
    NotSupported,
    PointBatch,
    TooLarge,
    Unsupported,
)
from lenshouse.storage.catalog import Catalog
from lenshouse.tenancy.quotas import Limiter, SensorLimit

MAX_BODY_BYTES = 256 << 20
SENSOR_RETRY_S = 60  # a sensor quota frees up only when the operator acts


class ORJSON(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error(status: int, message: str) -> ORJSON:
    return ORJSON({"error": message}, status_code=status)


class Writer(Protocol):
    """What ``POST /v1/write`` hands a validated batch to: the embedded
    ingestor (local log), or a gateway (the replicated log). Returns headers
    for the acknowledgement."""

    async def write(
        self, batch: PointBatch, batch_id: str | None, body: bytes
    ) -> dict[str, str]: ...

    async def erase(self, erasure: Erasure, batch_id: str | None) -> tuple[dict, bool]:
        """Log a delete; (answer, whether it is applied already)."""


class Reader(Protocol):
    """What the read routes use: lenses, export and the sensor catalog."""

    lenses: LensEngine
    catalog: Catalog


class HttpError(BadInput):
    """A refusal of the HTTP layer itself (authentication, authorization),
    with its status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TooMany(HttpError):
    """A tenant over its quota: 429 with the seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


# The status each kind of refused request is answered with (the most
# specific class first).
STATUS: tuple[tuple[type[BadInput], int], ...] = (
    (Overloaded, 503),
    (Invalid, 422),
    (TooLarge, 413),
    (Unsupported, 415),
    (NotSupported, 501),
    (BadInput, 400),
)


def status_of(exc: BadInput) -> int:
    if isinstance(exc, HttpError):
        return exc.status
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def within(limiter: Limiter, tenant: str, n: float, what: str) -> None:
    """429 once ``tenant`` is past ``limiter``'s rate."""
    wait = limiter.take(tenant, n)
    if wait:
        raise TooMany(
            f"tenant {tenant!r} is over its quota of {limiter.rate:g} {what} a second;"
            f" retry in {wait} s",
            wait,
        )


def admit(request: Request, tenant: str, batch: PointBatch) -> None:
    """The tenant's quotas of points a second and of sensors: 429 past them."""
    within(request.app.state.points_quota, tenant, len(batch), "points")
    limit: SensorLimit = request.app.state.sensor_quota
    would = limit.admit(tenant, batch.sensor)
    if would is not None:
        raise TooMany(
            f"tenant {tenant!r} would have {would} sensors; its quota is {limit.limit}",
            SENSOR_RETRY_S,
        )


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLarge(f"batch of {declared} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"batch exceeds the {MAX_BODY_BYTES}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
