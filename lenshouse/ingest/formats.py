"""Decoders for the three write formats, each to a :class:`PointBatch`.

Arrow IPC is the fast path (zero-copy columns); JSON and Influx line protocol
are for convenience and small writers.
"""

from __future__ import annotations

import re
from operator import attrgetter

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from lenshouse.points import BadInput, PointBatch, Unsupported

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
    raise Unsupported(
        f"unsupported Content-Type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}"
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


class _Point(msgspec.Struct, gc=False):
    sensor: int
    ts: int
    value: float


class _Points(msgspec.Struct, gc=False):
    points: list[_Point]


class _Columns(msgspec.Struct, gc=False):
    sensor: list[int]
    ts: list[int]
    value: list[float]


_POINTS = msgspec.json.Decoder(_Points)
_COLUMNS = msgspec.json.Decoder(_Columns)
_FIELDS = tuple(attrgetter(k) for k in ("sensor", "ts", "value"))


def decode_json(body: bytes, tenant: str) -> PointBatch:
    """Both JSON shapes, decoded straight into typed columns by msgspec (twice
    orjson's speed, and as strict: a bool is no integer, 1.0 no id); a body
    it refuses is decoded again by the general path, which names the problem."""
    fast = _json_typed(body)
    if fast is not None:
        return PointBatch.from_columns(tenant, *fast)
    return _json_general(body, tenant)


def _json_typed(body: bytes) -> tuple[list, list, np.ndarray] | None:
    try:
        if b'"points"' in body:
            pts = _POINTS.decode(body).points
            sensor, ts, value = (list(map(f, pts)) for f in _FIELDS)
        else:
            cols = _COLUMNS.decode(body)
            sensor, ts, value = cols.sensor, cols.ts, cols.value
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    values = np.asarray(value, np.float64)
    if not np.isfinite(values).all():
        return None  # 1e999: the general path refuses it as orjson does
    return sensor, ts, values


def _json_general(body: bytes, tenant: str) -> PointBatch:
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
    """Influx line protocol, millisecond precision::

        sensor,id=7[,tag=v…] [field=v,…]value=0.25[,field=v…] 1700000000000

    The measurement is ``sensor``; the tag ``id`` (an integer, once) names the
    sensor; other tags and fields are allowed and ignored; the field ``value``
    (once) is a float, or an integer with ``i`` or ``u``. Blank lines and
    ``#`` comments are skipped. Bodies are parsed column-wise by Arrow's C++
    CSV reader and string kernels; a body with anything they do not handle
    (comments, CR, quotes, escapes, tabs, double spaces) or any line they
    cannot read falls back to the line-by-line parser, which accepts exactly
    the same lines and names the first bad one."""
    fast = _line_protocol_columnar(body)
    return PointBatch.from_columns(tenant, *(fast if fast is not None else _lines(body)))


def _lines(body: bytes) -> tuple[list[int], list[int], list[float]]:
    """The line-by-line parser: every line checked, the first bad one named."""
    sensors, tss, values = [], [], []
    for n, raw in enumerate(body.split(b"\n"), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        s, t, v = _parse_line(line, n)
        sensors.append(s)
        tss.append(t)
        values.append(v)
    return sensors, tss, values


_LP_PARSE = pa_csv.ParseOptions(
    delimiter=" ", quote_char=False, escape_char=False, ignore_empty_lines=True
)
_LP_READ = pa_csv.ReadOptions(column_names=["head", "fields", "ts"], block_size=1 << 22)
_LP_CONVERT = pa_csv.ConvertOptions(
    column_types={"head": pa.string(), "fields": pa.string(), "ts": pa.int64()},
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
)
# Arrow's reader ends a row at CR as well, and its number conversion skips
# tabs: such bodies go line by line. Whatever else the line parser treats
# differently (comments, spaces at either end, double spaces) makes a row of
# other than three columns, or a head the column checks refuse.
_LP_UNHANDLED = (b"\r", b"\t", b"\v", b"\f")


def _line_protocol_columnar(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(sensor, ts, value) of a body every line of which is plain; None to
    leave the body (and its error messages) to the line-by-line parser."""
    if not body.strip(b"\n"):
        return np.empty(0, np.uint32), np.empty(0, np.int64), np.empty(0, np.float64)
    if any(c in body for c in _LP_UNHANDLED):
        return None
    try:
        t = pa_csv.read_csv(
            pa.py_buffer(body),
            read_options=_LP_READ,
            parse_options=_LP_PARSE,
            convert_options=_LP_CONVERT,
        )
        ids = _head_ids(t.column("head"))
        raw = _only_value(t.column("fields"))
        if ids is None or raw is None:
            return None
        sensor = pc.cast(ids, pa.uint32()).to_numpy()
        value = _numbers(raw)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if value is None or not np.isfinite(value).all():
        return None  # the line-by-line parser names the line
    return sensor, t.column("ts").to_numpy(), value


# Whole-column checks for the common shapes, each one pass of RE2: a head of
# k=v tags (no key or value holding "," or "=") with the key id exactly once;
# a fields column of "value=…" alone. Other shapes take the general checks.
_OTHER_KEY = r"(?:[^i,=][^,=]*|i|i[^d,=][^,=]*|id[^,=]+)"
_TAG = rf",{_OTHER_KEY}=[^,=]+"
_HEAD_RE = rf"^sensor(?:{_TAG})*,id=[^,=]+(?:{_TAG})*$"
_VALUE_ONLY_RE = r"^value=[^,=]+$"


def _head_ids(column: pa.ChunkedArray) -> pa.Array | None:
    heads = column.combine_chunks()
    if not pc.all(pc.match_substring_regex(heads, _HEAD_RE)).as_py():
        return None  # the line parser names the bad head
    after = pc.list_element(pc.split_pattern(heads, ",id=", max_splits=1), 1)
    return pc.list_element(pc.split_pattern(after, ",", max_splits=1), 0)


def _only_value(column: pa.ChunkedArray) -> pa.Array | None:
    fields = column.combine_chunks()
    if pc.all(pc.match_substring_regex(fields, _VALUE_ONLY_RE)).as_py():
        return pc.utf8_slice_codeunits(fields, len("value="))
    return _one_key(column, "value=")


def _one_key(column: pa.ChunkedArray, key: str) -> pa.Array | None:
    """Per line, the value of the one ``key…`` item of the comma-separated
    column; None unless every item is ``k=v`` and every line has exactly one
    such item."""
    lists = pc.split_pattern(column.combine_chunks(), ",")
    items = lists.flatten()
    lengths = lists.value_lengths().to_numpy()
    if len(items) and not (
        pc.all(pc.equal(pc.count_substring(items, "="), 1)).as_py()
        and not pc.any(pc.starts_with(items, "=")).as_py()
        and not pc.any(pc.ends_with(items, "=")).as_py()
    ):
        return None
    hit = pc.starts_with(items, key).to_numpy(zero_copy_only=False)
    line = np.repeat(np.arange(len(lengths)), lengths)
    if not (np.bincount(line[hit], minlength=len(lengths)) == 1).all():
        return None
    return pc.utf8_slice_codeunits(items.filter(hit), len(key))


def _numbers(raw: pa.Array) -> np.ndarray | None:
    """Floats, or integers ending in ``i`` (int64) or ``u`` (uint64)."""
    ints = pc.ends_with(raw, "i").to_numpy(zero_copy_only=False)
    uints = pc.ends_with(raw, "u").to_numpy(zero_copy_only=False)
    plain = ~(ints | uints)
    if plain.all():
        return _floats(raw)
    out = np.empty(len(raw), np.float64)
    for mask, kind in ((ints, pa.int64()), (uints, pa.uint64())):
        if mask.any():
            digits = pc.utf8_slice_codeunits(raw.filter(mask), 0, -1)
            out[mask] = pc.cast(digits, kind).to_numpy().astype(np.float64)
    if plain.any():
        floats = _floats(raw.filter(plain))
        if floats is None:
            return None
        out[plain] = floats
    return out


def _floats(raw: pa.Array) -> np.ndarray | None:
    # Arrow's parser takes "inf", "nan" and the like; the line grammar does
    # not: such a body goes to the line-by-line parser (digits are required).
    if len(raw) and not pc.all(pc.match_substring_regex(raw, _FLOAT_RE)).as_py():
        return None
    return pc.cast(raw, pa.float64()).to_numpy()


# nan and inf parse, to be refused later as non-finite (422, by name).
_FLOAT_RE = r"^[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|(?i:nan|inf|infinity))$"
_FLOAT = re.compile(_FLOAT_RE.encode())
_INT = re.compile(rb"^[-+]?[0-9]+i$")
_UINT = re.compile(rb"^\+?[0-9]+u$")


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
    tagmap = _pairs(tags, n, "tag")
    fieldmap = _pairs(fields.split(b","), n, "field")
    ids = tagmap.get(b"id", [])
    if len(ids) != 1 or not ids[0].lstrip(b"+-").isdigit() or ids[0][1:2] in (b"+", b"-"):
        raise BadInput(f"line {n}: tag id=<integer> is required (once)")
    raw = fieldmap.get(b"value", [])
    if len(raw) != 1 or not (_FLOAT.match(raw[0]) or _INT.match(raw[0]) or _UINT.match(raw[0])):
        raise BadInput(f"line {n}: field value=<number> is required (once)")
    v = raw[0]
    value = float(int(v[:-1])) if v.endswith((b"i", b"u")) else float(v)
    if not ts.lstrip(b"+-").isdigit() or len(ts) - len(ts.lstrip(b"+-")) > 1:
        raise BadInput(f"line {n}: timestamp must be integer milliseconds")
    return int(ids[0]), int(ts), value


def _pairs(items: list[bytes], n: int, what: str) -> dict[bytes, list[bytes]]:
    """``k=v`` items by key (a key may repeat: the caller decides)."""
    out: dict[bytes, list[bytes]] = {}
    for item in items:
        k, eq, v = item.partition(b"=")
        if not k or not eq or not v or b"=" in v:
            shown = item.decode(errors="replace")
            raise BadInput(f"line {n}: {what} {shown!r} is not key=value")
        out.setdefault(k, []).append(v)
    return out
