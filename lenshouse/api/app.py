"""The HTTP application (FastAPI)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from lenshouse.api.auth import Auth, add_admin_routes, request_tenant
from lenshouse.api.metrics import Metrics
from lenshouse.api.prometheus import add_query_routes, add_remote_write_route
from lenshouse.api.requests import (
    ORJSON,
    Reader,
    TooMany,
    Writer,
    admit,
    error,
    read_body,
    status_of,
    within,
)
from lenshouse.api.retention import add_retention_routes
from lenshouse.ingest.formats import ARROW, decode
from lenshouse.lens.answer import MAX_SENSORS, parse_aggs, parse_sensors, wants_m4
from lenshouse.lens.engine import MAX_EXPORT_POINTS, LensEngine
from lenshouse.matchers import Matcher, parse_matchers
from lenshouse.node import Node
from lenshouse.points import BadInput, Erasure, Invalid, PointBatch
from lenshouse.prometheus.series import SeriesIds
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage.catalog import check_labels
from lenshouse.storage.errors import RetryableError, StorageError
from lenshouse.storage.store import erase_bounds
from lenshouse.tenancy.quotas import Limiter, Quotas, SensorLimit

# An idle client connection is kept this long (uvicorn's default is 5 s): a
# user who looks at a chart for a few seconds between lenses would otherwise
# meet a connection the server is closing as it sends its next request.
KEEP_ALIVE_S = 75
OFF_LOOP_BYTES = 64 << 10  # bodies at least this large are decoded off the event loop
ERASE_WAIT_S = 30.0  # an embedded delete answers once applied, or 202 after this
STATIC = Path(__file__).parent / "static"
_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}}
_MS = {"type": "array", "items": {"type": "integer"}}
_VALUES = {"type": "array", "items": {"type": "number"}}
# The body as each Content-Type carries it (read raw, so described here).
WRITE_BODY = {
    "required": True,
    "content": {
        ARROW: {"schema": {"type": "string", "format": "binary",
                           "description": "sensor (uint32), ts (int64 ms), value (float64)"}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "required": ["sensor", "ts", "value"],
             "properties": {"sensor": _IDS, "ts": _MS, "value": _VALUES}},
            {"type": "object", "required": ["points"], "properties": {"points": {
                "type": "array", "items": {"type": "object", "required": ["sensor", "ts", "value"],
                "properties": {"sensor": {"type": "integer"}, "ts": {"type": "integer"},
                               "value": {"type": "number"}}}}}},
        ]}},
        "text/plain": {"schema": {"type": "string",
                                  "description": "Influx line protocol, ms timestamps"}},
    },
}  # fmt: skip


def answer_format(format: str | None, accept: str | None) -> str:
    """``json`` or ``arrow``: the ``format`` parameter, else the Accept header."""
    if format is not None:
        if format not in ("json", "arrow"):
            raise Invalid(f"format must be json or arrow, got {format!r}")
        return format
    return "arrow" if accept and ARROW in accept else "json"


def _ipc(table: pa.Table) -> bytes:
    """An Arrow IPC stream of ``table``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


class Unavailable(Exception):
    """A dependency is away (the log, the keeper): 503 with Retry-After."""


def create_app(node: Node, auth: Auth | None = None, quotas: Quotas | None = None) -> FastAPI:
    """The embedded server: every route over one node. ``auth``: None (or an
    :class:`Auth` without a registry) takes the tenant from ``X-Tenant``;
    ``quotas``: per-tenant rates (none by default)."""
    metrics = Metrics(node)
    app = base_app(metrics.registry, auth, quotas)
    app.state.node = node
    app.state.metrics = metrics
    app.state.sensor_quota.known = node.store.known_sensors  # the catalog counts too
    writer = _NodeWriter(node)
    add_write_routes(app, writer)
    add_read_routes(app, node, metrics.lens_seconds)
    add_prometheus_routes(app, writer, node, metrics.registry)
    add_health_route(app, lambda: _node_health(node))
    add_admin_routes(app)
    add_retention_routes(app, node.store, node.horizons, can_maintain=True)
    add_page(app)
    return app


def add_prometheus_routes(
    app: FastAPI, writer: Writer, reader: Reader, registry: CollectorRegistry
) -> None:
    """Remote write in, Prometheus' query API out, over the same writer and reader."""
    store = reader.lenses.store
    ids = SeriesIds(reader.catalog, lambda t: (s for tt, s in _extents(store) if tt == t))
    add_remote_write_route(app, writer, ids, registry)
    add_query_routes(app, reader)


def _extents(store) -> list[tuple[str, int]]:
    e = store.extents()
    return list(zip(e.column("tenant").to_pylist(), e.column("sensor").to_pylist()))


class _NodeWriter:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def write(self, batch: PointBatch, batch_id: str | None, body: bytes) -> dict[str, str]:
        lsn = await self.node.ingestor.write(batch, batch_id)
        return {"X-Lenshouse-Lsn": str(lsn)}

    async def erase(self, erasure: Erasure, batch_id: str | None) -> tuple[dict, bool]:
        check_erasable(erasure, self.node.horizons.raw_mark(erasure.tenant))
        ing = self.node.ingestor
        lsn = await ing.erase(erasure, batch_id)
        done = await run_in_threadpool(ing.wait_visible, lsn, ERASE_WAIT_S)
        doc = {"lsn": lsn, "applied": done}
        if done:
            doc["deleted"] = ing.loader.erased_by_lsn.get(lsn)
        return doc, done


def _node_health(node: Node) -> tuple[dict, bool]:
    ing = node.ingestor
    failure = ing.loader.failure
    doc = {
        "status": "failed" if failure else "ok",
        **({"error": failure} if failure else {}),
        **node.store.health(),
        "accepted_lsn": ing.wal.next_lsn - 1,
        "loaded_lsn": ing.loader.loaded_lsn - 1,
        "points_accepted": ing.points_accepted,
        "points_loaded": ing.loader.stats.rows_loaded,
        "points_duplicate": ing.loader.stats.duplicates,
        "points_conflicting": ing.loader.stats.conflicts,
        "points_deleted": ing.loader.stats.erased,
        "ingest_lag_seconds": round(ing.loader.lag_seconds(), 3),
    }
    # A stopped loader means no point is loaded until an operator acts.
    return doc, failure is None


def base_app(
    registry: CollectorRegistry, auth: Auth | None = None, quotas: Quotas | None = None
) -> FastAPI:
    """An app with lenshouse's error answers, its auth, quotas and ``/metrics``."""
    app = FastAPI(title="lenshouse", version="0.1.0", default_response_class=ORJSON)
    app.state.auth = auth or Auth(None)
    quotas = quotas or Quotas()
    app.state.points_quota = Limiter(quotas.points_per_s)
    app.state.lens_quota = Limiter(quotas.lens_per_s)
    app.state.sensor_quota = SensorLimit(quotas.sensors)

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> ORJSON:
        status = status_of(exc)
        response = error(status, str(exc))
        if status == 503:
            response.headers["Retry-After"] = "1"
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="lenshouse"'
        if isinstance(exc, TooMany):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RetryableError)
    async def unavailable(_: Request, exc: RetryableError) -> ORJSON:
        # Storage away (a shard with no live replica, the keeper, the
        # network): never a partial answer; the client retries.
        response = error(503, f"storage unavailable: {exc}")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Unavailable)
    async def log_unavailable(_: Request, exc: Unavailable) -> ORJSON:
        response = error(503, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(StorageError)
    async def storage_failed(_: Request, exc: StorageError) -> ORJSON:
        return error(500, f"storage refused the request: {exc}")

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> ORJSON:
        # Same {"error": ...} shape as every other refusal, naming the parameter.
        problems = [f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors()]
        return error(422, "; ".join(problems) or "invalid request")

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def add_write_routes(app: FastAPI, writer: Writer) -> None:
    @app.post(
        "/v1/write",
        status_code=204,
        summary="Write a batch of points",
        openapi_extra={"requestBody": WRITE_BODY},
    )
    async def write(
        request: Request,
        content_type: str | None = Header(None),
        tenant: str = Depends(request_tenant),
        x_batch_id: str | None = Header(None, max_length=128),
    ) -> Response:
        body = await read_body(request)
        if len(body) < OFF_LOOP_BYTES:
            batch = decode(content_type, body, tenant).validate()
        else:  # decoders release the GIL in Arrow's kernels: requests decode in parallel
            batch = await run_in_threadpool(_decoded, content_type, body, tenant)
        admit(request, tenant, batch)
        headers = await writer.write(batch, x_batch_id, body)
        return Response(status_code=204, headers=headers)

    @app.delete("/v1/points", summary="Delete sensors' points in a time range")
    async def delete_points(
        sensors: str | None = Query(None, description="comma-separated sensor ids, 1 to 10"),
        sensor: str | None = Query(None, description="the same as sensors"),
        start: int = Query(..., description="range start, epoch ms (inclusive)"),
        end: int = Query(..., description="range end, epoch ms (exclusive)"),
        tenant: str = Depends(request_tenant),
        x_batch_id: str | None = Header(None, max_length=128),
    ) -> ORJSON:
        ids = sensors if sensors is not None else sensor
        if ids is None:
            raise Invalid("name the sensors: sensors=1,2")
        erasure = Erasure.of(tenant, parse_sensors(ids), start, end)
        doc, applied = await writer.erase(erasure, x_batch_id)
        doc = {"sensors": erasure.sensor.tolist(), "start": start, "end": end, **doc}
        return ORJSON(doc, status_code=200 if applied else 202)


def check_erasable(erasure: Erasure, raw_mark: int | None) -> None:
    """A delete rebuilds the coarsest cells it cuts from raw points: refused
    where those have expired."""
    lo, _ = erase_bounds(erasure.start, erasure.end)
    if raw_mark is not None and lo < raw_mark:
        first = erase_bounds(raw_mark - 1, raw_mark)[1]  # the first whole cell above the mark
        raise Invalid(
            f"raw points before {raw_mark} have expired; a delete rebuilds the hour cells"
            f" it cuts from raw points, so it must start at or after {first}"
        )


def _decoded(content_type: str | None, body: bytes, tenant: str) -> PointBatch:
    return decode(content_type, body, tenant).validate()


def add_read_routes(app: FastAPI, reader: Reader, lens_seconds: Histogram) -> None:
    @app.get("/v1/lens", summary="Bucketed avg/min/max/count of 1-10 sensors")
    def lens(
        request: Request,
        sensors: str | None = Query(None, description="comma-separated sensor ids, 1 to 10"),
        match: str | None = Query(None, description='label matchers: {kind="x",site=~"A|B"}'),
        start: int = Query(..., description="window start, epoch ms (inclusive)"),
        end: int = Query(..., description="window end, epoch ms (exclusive)"),
        points: int | None = Query(None, description="about how many buckets (default 2500)"),
        step: int | None = Query(None, description="bucket width in ms, instead of points"),
        agg: str | None = Query(
            None,
            description="subset of avg,min,max,count (the default) and the M4 points"
            " first,last,tfirst,tlast,tmin,tmax",
        ),
        format: str | None = Query(
            None, description="json (default) or arrow; or send Accept: " + ARROW
        ),
        tenant: str = Depends(request_tenant),
        accept: str | None = Header(None),
        if_none_match: str | None = Header(None, description="an ETag of this lens: 304 if fresh"),
    ) -> Response:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        within(request.app.state.lens_quota, tenant, 1, "lens requests")
        ids = _sensors(reader, tenant, sensors, match)
        aggs = parse_aggs(agg)
        arrow = answer_format(format, accept) == "arrow"
        tags = _LensTags(reader.lenses, tenant, ids, request)
        if tags.fresh(if_none_match, start, end, points, step):
            return Response(status_code=304, headers={"ETag": tags.sent or ""})
        result = reader.lenses.lens(
            ids, start, end, points=points, step=step, tenant=tenant, m4=wants_m4(aggs)
        )
        if arrow:
            response: Response = Response(_ipc(result.to_arrow(aggs)), media_type=ARROW)
        else:
            response = ORJSON(result.to_json(aggs))
        elapsed = time.perf_counter() - t0  # the answer encoded, as a client waits for it
        lens_seconds.observe(elapsed)
        response.headers["X-Lens-Ms"] = f"{elapsed * 1000:.2f}"
        # CPU of the request's thread: the lens's own cost, whatever else the
        # server runs meanwhile (ClickHouse's threads not included).
        response.headers["X-Lens-Cpu-Ms"] = f"{(time.thread_time() - cpu0) * 1000:.2f}"
        response.headers["X-Lens-Reads"] = str(result.retries + 1)  # storage reads it took
        response.headers["ETag"] = tags.tag(result.watermark)
        return response

    @app.get("/v1/export", summary="Raw points of 1-10 sensors, as an Arrow IPC stream")
    def export(
        request: Request,
        sensors: str | None = Query(None, description="comma-separated sensor ids, 1 to 10"),
        match: str | None = Query(None, description='label matchers: {kind="x",site=~"A|B"}'),
        start: int = Query(..., description="window start, epoch ms (inclusive)"),
        end: int = Query(..., description="window end, epoch ms (exclusive)"),
        limit: int = Query(MAX_EXPORT_POINTS, description="at most this many points"),
        after: str | None = Query(
            None, description="SENSOR:TS: continue past this key (X-Lenshouse-Next-After)"
        ),
        tenant: str = Depends(request_tenant),
    ) -> Response:
        within(request.app.state.lens_quota, tenant, 1, "lens requests")
        table, more = reader.lenses.export(
            _sensors(reader, tenant, sensors, match),
            start,
            end,
            tenant=tenant,
            limit=limit,
            after=_key(after),
        )
        headers = {"X-Lenshouse-Next-After": f"{more[0]}:{more[1]}"} if more else {}
        mark = reader.lenses.horizons.raw_mark(tenant) if reader.lenses.horizons else None
        if mark is not None and start < mark:  # the answer starts there
            headers["X-Lenshouse-Expired-Before"] = str(mark)
        return Response(_ipc(table), media_type=ARROW, headers=headers)

    @app.put("/v1/sensors/{sensor}", status_code=204, summary="Register a sensor with labels")
    async def put_sensor(sensor: int, request: Request, tenant: str = Depends(request_tenant)):
        if not 0 <= sensor < 2**32:
            raise Invalid("sensor ids are 0 .. 2^32-1")
        raw = await request.body()
        try:
            doc = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as e:
            raise BadInput(f"body is not valid JSON: {e}") from None
        if isinstance(doc, dict) and set(doc) - {"labels"}:
            # e.g. {"kind": "x"}: without this, the labels would silently be wiped.
            raise Invalid('body must be {"labels": {"name": "value", ...}}')
        labels = doc.get("labels", {}) if isinstance(doc, dict) else doc
        await run_in_threadpool(reader.catalog.put, tenant, sensor, check_labels(labels))
        return Response(status_code=204)

    @app.get("/v1/labels", summary="The label names of the tenant's sensors")
    def labels(tenant: str = Depends(request_tenant)) -> ORJSON:
        return ORJSON({"labels": reader.catalog.label_names(tenant)})

    @app.get("/v1/labels/{name}/values", summary="The values one label takes")
    def label_values(name: str, tenant: str = Depends(request_tenant)) -> ORJSON:
        return ORJSON({"label": name, "values": reader.catalog.label_values(tenant, name)})

    @app.get("/v1/sensors", summary="List sensors and their labels")
    def sensors(
        request: Request,
        match: str | None = Query(None, description='label matchers: {kind="x",site=~"A|B"}'),
        tenant: str = Depends(request_tenant),
    ) -> ORJSON:
        matchers = [
            Matcher(k[len("label.") :], "has", v)
            for k, v in request.query_params.items()
            if k.startswith("label.")
        ]
        if match is not None:
            matchers += parse_matchers(match)
        return ORJSON({"sensors": reader.catalog.list(tenant, matchers)})


class _LensTags:
    """A lens answer's ETag: ``W/"lh.<process>.<watermark>.<digest>"``: the
    loads it reflects (see Snapshot.watermark), and a digest of the request,
    the sensors it resolved to and the tenant's expiry marks. ``If-None-Match``
    with such a tag answers 304 when no load since touched those sensors in
    the window (widened by two of its steps), and nothing else changed what
    the lens reads. Weak: float sums may add in
    another order between two reads of the same points."""

    def __init__(self, lenses: LensEngine, tenant: str, ids: list[int], request: Request) -> None:
        self.lenses, self.tenant, self.ids = lenses, tenant, ids
        self.marks = lenses.horizons.marks(tenant) if lenses.horizons else {}
        query = sorted(request.query_params.multi_items())
        text = repr((tenant, ids, sorted(self.marks.items()), query)).encode()
        self.digest = hashlib.blake2b(text, digest_size=8).hexdigest()
        self.sent: str | None = None

    def tag(self, watermark: int) -> str:
        return f'W/"lh.{self.lenses.boot}.{watermark}.{self.digest}"'

    def fresh(
        self, header: str | None, start: int, end: int, points: int | None, step: int | None
    ) -> bool:
        if not header or end <= start:
            return False
        for candidate in (t.strip() for t in header.split(",")):
            parts = candidate.removeprefix("W/").strip('"').split(".")
            if len(parts) != 4 or parts[0] != "lh" or parts[1] != self.lenses.boot:
                continue
            if parts[3] != self.digest or not parts[2].lstrip("-").isdigit():
                continue
            try:  # the buckets the lens would answer (a floor widens them: in the digest)
                width = self.lenses.resolve_step(start, end, points, step)
            except BadInput:
                return False
            if self.marks:  # a floor may raise the step up to the coarsest tier's cell
                width = max(width, TIERS[-1].res_ms)
            pad = 2 * width
            if self.lenses.unchanged_since(
                int(parts[2]), self.tenant, self.ids, start - pad, end + pad
            ):
                self.sent = candidate
                return True
        return False


def _sensors(reader: Reader, tenant: str, sensors: str | None, match: str | None) -> list[int]:
    """Explicit ids and the sensors the matchers select, together: 1 to 10."""
    if sensors is None and match is None:
        raise Invalid('name the sensors: sensors=1,2 and/or match={label="value"}')
    ids = parse_sensors(sensors) if sensors is not None else []
    if match is not None:
        matched = reader.catalog.select(tenant, parse_matchers(match))
        if not matched and not ids:
            raise Invalid(f"match {match} selects none of this tenant's sensors")
        ids = list(dict.fromkeys([*ids, *matched]))
    if len(ids) > MAX_SENSORS:
        raise Invalid(f"a lens takes 1 to {MAX_SENSORS} sensors; these select {len(ids)}")
    return ids


def _key(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    sensor, _, ts = text.partition(":")
    try:
        return int(sensor), int(ts)
    except ValueError:
        raise Invalid(f"after must be SENSOR:TS (integers), got {text!r}") from None


def add_health_route(app: FastAPI, health: Callable[[], tuple[dict, bool]]) -> None:
    """``/healthz``: the role's document; 503 unless it can do its job."""

    @app.get("/healthz", summary="Liveness and progress")
    def healthz() -> ORJSON:
        doc, ok = health()
        return ORJSON(doc, status_code=200 if ok else 503)


def add_page(app: FastAPI) -> None:
    if (STATIC / "assets").is_dir():
        app.mount("/assets", StaticFiles(directory=STATIC / "assets"), name="assets")

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = STATIC / "index.html"
        if page.exists():
            return FileResponse(page)
        return ORJSON({"lenshouse": "0.1.0", "api": ["/v1/write", "/v1/lens", "/v1/sensors"]})
