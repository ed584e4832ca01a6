"""Decoders for the three write formats, each to a :class:`PointBatch`.

Arrow IPC is the fast path (zero-copy columns); JSON and Influx line protocol
are for convenience and small writers.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa

from lenshouse.points import BadInput, PointBatch

ARROW = "application/vnd.apache.arrow.stream"
JSON = "application/json"
LINE = "text/plain"
CONTENT_TYPES = (ARROW, JSON, LINE)

_ARROW_TYPES = {"sensor": pa.uint32(), "ts": pa.int64(), "value": pa.float64()}


def decode(content_type: str | None, body: bytes, tenant: str) -> PointBatch:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == ARROW:
        return decode_arrow(body, tenant)
    if media == JSON:
        return decode_json(body, tenant)
    if media == LINE:
        return decode_line_protocol(body, tenant)
    raise BadInput(
        f"unsupported Content-Type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}", 415
    )


def decode_arrow(body: bytes, tenant: str) -> PointBatch:
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise BadInput(f"body is not an Arrow IPC stream: {e}") from None
    cols = {}
    for name, want in _ARROW_TYPES.items():
        if name not in table.column_names:
            raise BadInput(f"Arrow stream lacks column {name!r} (needs sensor, ts, value)")
        col = table.column(name)
        if col.null_count:
            raise BadInput(f"column {name!r} has {col.null_count} null(s)")
        if col.type != want:
            ok = pa.types.is_integer(col.type) or (
                name == "value" and pa.types.is_floating(col.type)
            )
            if not ok:
                raise BadInput(f"column {name!r} must be {want}, got {col.type}")
            try:
                col = col.cast(want)  # safe cast: refuses overflow and negative ids
            except pa.ArrowInvalid as e:
                raise BadInput(f"column {name!r} does not fit {want}: {e}") from None
        cols[name] = col.to_numpy() if col.num_chunks == 1 else col.combine_chunks().to_numpy()
    return PointBatch.from_columns(tenant, cols["sensor"], cols["ts"], cols["value"])


def decode_json(body: bytes, tenant: str) -> PointBatch:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadInput(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadInput('JSON body must be an object: {"sensor": [...], ...} or {"points": [...]}')
    if "points" in doc:
        points = doc["points"]
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise BadInput('"points" must be a list of {"sensor", "ts", "value"} objects')
        try:
            cols = {k: [p[k] for p in points] for k in ("sensor", "ts", "value")}
        except KeyError as e:
            raise BadInput(f"a point lacks field {e.args[0]!r}") from None
    else:
        missing = [k for k in ("sensor", "ts", "value") if k not in doc]
        if missing:
            raise BadInput(f"JSON body lacks {', '.join(map(repr, missing))}")
        cols = {k: doc[k] for k in ("sensor", "ts", "value")}
        for k, v in cols.items():
            if not isinstance(v, list):
                raise BadInput(f"{k!r} must be a list")
    for k in ("sensor", "ts"):
        if any(isinstance(x, bool) or not isinstance(x, int) for x in cols[k]):
            raise BadInput(f"{k!r} must hold integers")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in cols["value"]):
        raise BadInput("'value' must hold numbers")
    return PointBatch.from_columns(tenant, cols["sensor"], cols["ts"], cols["value"])


def decode_line_protocol(body: bytes, tenant: str) -> PointBatch:
    """Influx line protocol, millisecond precision: ``sensor,id=7 value=0.25 1700000000000``."""
    fast = _line_protocol_fast(body)
    if fast is not None:
        return PointBatch.from_columns(tenant, *fast)
    sensors, tss, values = [], [], []
    for n, raw in enumerate(body.split(b"\n"), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        s, t, v = _parse_line(line, n)
        sensors.append(s)
        tss.append(t)
        values.append(v)
    return PointBatch.from_columns(tenant, sensors, tss, values)


def _line_protocol_fast(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorised parse of the canonical shape; None when any line deviates."""
    if b"#" in body or b"\r" in body:
        return None
    flat = body.replace(b",id=", b" ").replace(b" value=", b" ")
    tokens = flat.split()
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    if len(tokens) != 4 * lines or lines == 0:
        return None
    # The token count alone does not tie tokens to lines ("a b c\nd e f g h" has
    # 8 tokens too): every line must hold exactly three single spaces.
    if b"\t" in flat or b"\x0b" in flat or b"\x0c" in flat:
        return None
    raw = np.frombuffer(flat, dtype=np.uint8)
    seps = raw[(raw == 32) | (raw == 10)]
    if not flat.endswith(b"\n"):
        seps = np.append(seps, np.uint8(10))
    if seps.size != 4 * lines or not (seps.reshape(-1, 4) == (32, 32, 32, 10)).all():
        return None
    tok = np.array(tokens, dtype=bytes).reshape(-1, 4)
    if not (tok[:, 0] == b"sensor").all():
        return None
    try:
        sensor = tok[:, 1].astype(np.int64)
        value = tok[:, 2].astype(np.float64)
        ts = tok[:, 3].astype(np.int64)
    except (ValueError, OverflowError):
        return None
    return sensor, ts, value


def _parse_line(line: bytes, n: int) -> tuple[int, int, float]:
    parts = line.split(b" ")
    parts = [p for p in parts if p]
    if len(parts) != 3:
        raise BadInput(f"line {n}: expected 'sensor,id=<id> value=<float> <ts_ms>'")
    head, fields, ts = parts
    name, *tags = head.split(b",")
    if name != b"sensor":
        raise BadInput(
            f"line {n}: measurement must be 'sensor', got {name.decode(errors='replace')!r}"
        )
    tagmap = dict(t.split(b"=", 1) for t in tags if b"=" in t)
    fieldmap = dict(f.split(b"=", 1) for f in fields.split(b",") if b"=" in f)
    try:
        sensor = int(tagmap[b"id"])
    except (KeyError, ValueError):
        raise BadInput(f"line {n}: tag id=<integer> is required") from None
    try:
        raw = fieldmap[b"value"]
        value = float(raw[:-1]) if raw.endswith((b"i", b"u")) else float(raw)
    except (KeyError, ValueError):
        raise BadInput(f"line {n}: field value=<number> is required") from None
    try:
        return sensor, int(ts), value
    except ValueError:
        raise BadInput(f"line {n}: timestamp must be integer milliseconds") from None
