"""Prometheus' HTTP protocols: remote write in (``POST /api/v1/write``), and
the query API that Grafana's Prometheus data source speaks (``query_range``,
``query``, ``series``, ``labels``, ``label/NAME/values``), in Prometheus'
answer shapes, errors included (``{"status": "error", "errorType": …}``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from urllib.parse import parse_qsl

import numpy as np
from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter

from lenshouse.api.auth import request_tenant
from lenshouse.api.requests import ORJSON, Reader, Writer, admit, read_body, within
from lenshouse.matchers import Matcher
from lenshouse.points import BadInput
from lenshouse.prometheus import promql
from lenshouse.prometheus.evaluate import Evaluator, Scalar, Times, Vector
from lenshouse.prometheus.remote_write import decode_write_request
from lenshouse.prometheus.series import SeriesIds
from lenshouse.prometheus.write import to_batch
from lenshouse.storage.errors import RetryableError

BUILD_INFO = {"version": "2.42.0", "revision": "lenshouse", "branch": "lenshouse",
              "buildUser": "lenshouse", "buildDate": "", "goVersion": ""}  # fmt: skip


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
        body = await read_body(request)
        req = await run_in_threadpool(decode_write_request, body, content_encoding)
        converted = await run_in_threadpool(to_batch, req, tenant, ids)
        batch = converted.batch.validate()
        admit(request, tenant, batch)
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
                + (f" (and {more} more)" if more > 0 else "")
            )
        return Response(status_code=204, headers=headers)


def add_query_routes(app: FastAPI, reader: Reader) -> None:
    """The query API over the reader's lenses and catalog; GET or POST (form)."""
    evaluator = Evaluator(reader.catalog, reader.lenses)

    def route(
        path: str, summary: str, handler: Callable[[dict, str], dict], names: tuple[str, ...]
    ) -> None:
        async def endpoint(request: Request, tenant: str = Depends(request_tenant)) -> Response:
            within(request.app.state.lens_quota, tenant, 1, "lens requests")
            params = await _params(request)
            return await run_in_threadpool(_answer, handler, params, tenant)

        # Parameters are read from the query string or the form body (as
        # Prometheus does), so the schema names them here.
        fields = {n: {"type": "array" if n.endswith("[]") else "string",
                      **({"items": {"type": "string"}} if n.endswith("[]") else {})}
                  for n in names}  # fmt: skip
        query = [{"name": n, "in": "query", "required": False, "schema": f}
                 for n, f in fields.items()]  # fmt: skip
        form = {"content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": fields}}}}  # fmt: skip
        op = path.rsplit("/", 1)[-1]
        app.add_api_route(path, endpoint, methods=["GET"], summary=summary,
                          operation_id=f"prometheus_{op}_get",
                          openapi_extra={"parameters": query})  # fmt: skip
        app.add_api_route(path, endpoint, methods=["POST"], summary=summary,
                          operation_id=f"prometheus_{op}_post",
                          openapi_extra={"requestBody": form})  # fmt: skip

    def query_range(p: dict, tenant: str) -> dict:
        expr = promql.parse(_one(p, "query"))
        start, end = parse_time(_one(p, "start")), parse_time(_one(p, "end"))
        times = Times.range(start, end, parse_step(_one(p, "step")))
        return _matrix(evaluator.evaluate(expr, tenant, times), times)

    def query(p: dict, tenant: str) -> dict:
        expr = promql.parse(_one(p, "query"))
        at = parse_time(p["time"][0]) if p.get("time") else _now_ms()
        return _vector(evaluator.evaluate(expr, tenant, Times(at, 1, 1)), at)

    def series(p: dict, tenant: str) -> dict:
        return {"status": "success", "data": [s["labels"] for s in _selected(p, tenant)]}

    def labels(p: dict, tenant: str) -> dict:
        names = {k for s in _selected(p, tenant, optional=True) for k in s["labels"]}
        return {"status": "success", "data": sorted(names)}

    def _selected(p: dict, tenant: str, optional: bool = False) -> list[dict]:
        selectors = p.get("match[]", [])
        if not selectors:
            if optional:
                return reader.catalog.list(tenant)
            raise promql.PromQLError("no match[] parameter provided")
        seen: dict[int, dict] = {}
        for text in selectors:
            for s in reader.catalog.list(tenant, _selector(text)):
                seen.setdefault(s["sensor"], s)
        return list(seen.values())

    route("/api/v1/query_range", "PromQL range query (a subset: docs/prometheus.md)",
          query_range, ("query", "start", "end", "step"))  # fmt: skip
    route("/api/v1/query", "PromQL instant query (a subset: docs/prometheus.md)", query,
          ("query", "time"))  # fmt: skip
    route("/api/v1/series", "Series whose labels match[] selects", series,
          ("match[]", "start", "end"))  # fmt: skip
    route("/api/v1/labels", "Label names", labels, ("match[]", "start", "end"))

    @app.get("/api/v1/label/{name}/values", summary="The values one label takes")
    def label_values(name: str, request: Request, tenant: str = Depends(request_tenant)):
        def values(p: dict, tenant: str) -> dict:
            found = {s["labels"][name] for s in _selected(p, tenant, True) if name in s["labels"]}
            return {"status": "success", "data": sorted(found)}

        return _answer(values, _query_params(request), tenant)

    @app.get("/api/v1/status/buildinfo", summary="Build information (Grafana asks)")
    def buildinfo() -> ORJSON:
        return ORJSON({"status": "success", "data": BUILD_INFO})


def _answer(handler: Callable[[dict, str], dict], params: dict, tenant: str) -> Response:
    """The handler's document, or Prometheus' error shape."""
    try:
        return ORJSON(handler(params, tenant))
    except promql.PromQLError as e:
        return _error(400, "bad_data", str(e))
    except BadInput as e:  # a lens refused it (too many buckets, expired data, …)
        return _error(422, "execution", str(e))
    except RetryableError as e:
        response = _error(503, "unavailable", f"storage unavailable: {e}")
        response.headers["Retry-After"] = "1"
        return response


def _error(status: int, kind: str, message: str) -> ORJSON:
    return ORJSON({"status": "error", "errorType": kind, "error": message}, status_code=status)


def _query_params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        out.setdefault(k, []).append(v)
    return out


async def _params(request: Request) -> dict[str, list[str]]:
    """Query-string and form parameters (Grafana POSTs forms by default)."""
    out = _query_params(request)
    if request.method == "POST":
        body = await read_body(request)
        for k, v in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            out.setdefault(k, []).append(v)
    return out


def _one(p: dict, name: str) -> str:
    values = p.get(name)
    if not values or values[0] == "":
        raise promql.PromQLError(f"missing parameter {name!r}")
    return values[0]


def _selector(text: str) -> list[Matcher]:
    expr = promql.parse_selector(text)
    return list(expr.matchers)


def parse_time(text: str) -> int:
    """Unix seconds (``1700000000.123``) or RFC 3339 → epoch ms."""
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise promql.PromQLError(f"cannot parse {text!r} to a valid timestamp") from None


def parse_step(text: str) -> int:
    try:
        ms = round(float(text) * 1000)
    except ValueError:
        try:
            ms = promql.parse_duration(text)
        except promql.PromQLError:
            raise promql.PromQLError(f"cannot parse {text!r} to a valid duration") from None
    return ms


def _now_ms() -> int:
    return int(time.time() * 1000)


def format_value(v: float) -> str:
    """As Prometheus writes sample values."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(float(v))
    if "e" in text:
        return np.format_float_positional(v, trim="-")
    return text[:-2] if text.endswith(".0") else text


def _matrix(result: Vector | Scalar, times: Times) -> dict:
    t = (times.ms / 1000).tolist()
    if isinstance(result, Scalar):
        rows = [{"metric": {}, "values": [[x, format_value(result.value)] for x in t]}]
    else:
        rows = []
        for labels, values in zip(result.labels, result.values):
            keep = np.flatnonzero(~np.isnan(values))
            if len(keep):
                pairs = [[t[i], format_value(v)] for i, v in zip(keep, values[keep].tolist())]
                rows.append({"metric": labels, "values": pairs})
    return {"status": "success", "data": {"resultType": "matrix", "result": rows}}


def _vector(result: Vector | Scalar, at: int) -> dict:
    if isinstance(result, Scalar):
        data = {"resultType": "scalar", "result": [at / 1000, format_value(result.value)]}
        return {"status": "success", "data": data}
    rows = [
        {"metric": labels, "value": [at / 1000, format_value(float(values[0]))]}
        for labels, values in zip(result.labels, result.values)
        if not np.isnan(values[0])
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": rows}}
