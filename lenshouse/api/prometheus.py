"""Prometheus' HTTP protocols: remote write in (``POST /api/v1/write``)."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter

from lenshouse.api.app import SENSOR_RETRY_S, TooMany, Writer, _read_body, _within
from lenshouse.api.auth import request_tenant
from lenshouse.points import BadInput
from lenshouse.prometheus.remote_write import decode_write_request
from lenshouse.prometheus.series import SeriesIds
from lenshouse.prometheus.write import to_batch
from lenshouse.tenancy.quotas import SensorLimit


def add_remote_write_route(
    app: FastAPI, writer: Writer, ids: SeriesIds, registry: CollectorRegistry
) -> None:
    samples = Counter(
        "lenshouse_remote_write_samples",
        "Remote-write samples by what became of them.",
        ["outcome"],
        registry=registry,
    )

    @app.post(
        "/api/v1/write",
        status_code=204,
        summary="Prometheus remote write (1.0): snappy-compressed WriteRequest protobuf",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def remote_write(
        request: Request,
        tenant: str = Depends(request_tenant),
        content_encoding: str | None = Header(None),
    ) -> Response:
        body = await _read_body(request)
        req = await run_in_threadpool(decode_write_request, body, content_encoding)
        converted = await run_in_threadpool(to_batch, req, tenant, ids)
        batch = converted.batch.validate()
        _within(request.app.state.points_quota, tenant, len(batch), "points")
        limit: SensorLimit = request.app.state.sensor_quota
        would = limit.admit(tenant, batch.sensor)
        if would is not None:
            raise TooMany(
                f"tenant {tenant!r} would have {would} sensors; its quota is {limit.limit}",
                SENSOR_RETRY_S,
            )
        headers = await writer.write(batch, None, body) if len(batch) else {}
        samples.labels("stored").inc(len(batch))
        samples.labels("stale_marker").inc(req.stale_markers)
        samples.labels("non_finite").inc(converted.non_finite)
        samples.labels("histogram").inc(req.histograms)
        if converted.refused:
            # The other series are written: a 4xx tells Prometheus not to resend.
            shown = "; ".join(converted.refused[:3])
            more = len(converted.refused) - 3
            raise BadInput(
                f"{len(converted.refused)} series skipped, the rest written: {shown}"
                + (f" (and {more} more)" if more > 0 else ""),
                400,
            )
        return Response(status_code=204, headers=headers)
