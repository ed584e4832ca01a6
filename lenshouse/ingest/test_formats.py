"""The three write formats: each round-trips exactly through the HTTP API, and
each decoder refuses bad bodies with a status and a message naming the problem."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from lenshouse.api.requests import status_of
from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest import formats
from lenshouse.ingest.formats import (
    ARROW,
    JSON,
    LINE,
    decode,
    decode_arrow,
    decode_json,
    decode_line_protocol,
)
from lenshouse.node import Node
from lenshouse.points import MAX_FUTURE_MS, MIN_TS_MS, BadInput, PointBatch

BASE = 1_700_000_000_000  # 2023-11-14, well inside the accepted range

Points = dict[tuple[int, int], float]  # (sensor, ts) -> value


# -- helpers --------------------------------------------------------------------


def post(client: TestClient, content_type: str, body: bytes, tenant: str | None = None) -> int:
    headers = {"Content-Type": content_type}
    if tenant is not None:
        headers["X-Tenant"] = tenant
    r = client.post("/v1/write", content=body, headers=headers)
    assert r.status_code == 204, r.text
    assert r.content == b""
    return int(r.headers["X-Lenshouse-Lsn"])


def read_back(
    client: TestClient,
    node: Node,
    lsn: int,
    sensors: list[int],
    start: int = BASE,
    end: int = BASE + 10_000,
    tenant: str | None = None,
) -> Points:
    """Every stored point in the window, read through 1 ms lens buckets."""
    assert node.ingestor.wait_visible(lsn, timeout=10)
    headers = {"X-Tenant": tenant} if tenant else {}
    r = client.get(
        "/v1/lens",
        params={"sensors": ",".join(map(str, sensors)), "start": start, "end": end, "step": 1},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["step"] == 1
    assert [s["sensor"] for s in doc["series"]] == sensors
    out: Points = {}
    for s in doc["series"]:
        assert s["count"] == [1] * len(s["t"])  # one point per 1 ms bucket
        assert s["avg"] == s["min"] == s["max"]
        for t, v in zip(s["t"], s["avg"], strict=True):
            out[(s["sensor"], t)] = v
    return out


def as_points(sensor, ts, value) -> Points:
    return {(int(s), int(t)): float(v) for s, t, v in zip(sensor, ts, value, strict=True)}


def arrow_stream(columns: dict[str, pa.Array], batches: int = 1) -> bytes:
    """An Arrow IPC stream of ``columns``, split into ``batches`` record batches."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        for rb in table.to_batches(max_chunksize=max(1, -(-table.num_rows // batches))):
            w.write_batch(rb)
    return sink.getvalue().to_pybytes()


def sample(n: int = 40, sensors: int = 3, seed: int = 0) -> PointBatch:
    """Distinct (sensor, ts) points with awkward values."""
    rng = np.random.default_rng(seed)
    sensor = (np.arange(n) % sensors + 1).astype(np.uint32)
    ts = BASE + (np.arange(n) // sensors).astype(np.int64) * 7 + 3
    value = rng.normal(0, 1000, n)
    value[:6] = [0.1, 1 / 3, -2.5e-300, 1e300, 123456789.123456789, -0.0]
    return PointBatch("default", sensor, ts, value)


@pytest.fixture
def slow_lines(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Lines parsed one by one by the slow line-protocol path."""
    seen: list[bytes] = []
    real = formats._parse_line

    def spy(line: bytes, n: int):
        seen.append(line)
        return real(line, n)

    monkeypatch.setattr(formats, "_parse_line", spy)
    return seen


# -- round trips through the HTTP API ---------------------------------------------


def test_arrow_round_trip(client: TestClient, node: Node) -> None:
    b = sample()
    lsn = post(client, ARROW, encode_arrow(b))
    assert read_back(client, node, lsn, [1, 2, 3]) == as_points(b.sensor, b.ts, b.value)


def test_arrow_several_record_batches(client: TestClient, node: Node) -> None:
    b = sample(n=30, seed=1)
    body = arrow_stream(
        {"sensor": pa.array(b.sensor), "ts": pa.array(b.ts), "value": pa.array(b.value)},
        batches=4,
    )
    lsn = post(client, ARROW, body)
    assert read_back(client, node, lsn, [1, 2, 3]) == as_points(b.sensor, b.ts, b.value)


def test_arrow_castable_types(client: TestClient, node: Node) -> None:
    sensor = [4, 5, 4, 70000]
    ts = [BASE, BASE + 1, BASE + 2, BASE + 3]
    value32 = np.array([0.1, -1.5, 3.25, 1e30], dtype=np.float32)
    body = arrow_stream(
        {
            "value": pa.array(value32, pa.float32()),  # column order does not matter
            "sensor": pa.array(sensor, pa.int32()),
            "ts": pa.array(ts, pa.uint64()),
            "note": pa.array(["ignored"] * 4),  # extra columns are ignored
        }
    )
    lsn = post(client, ARROW, body)
    # float32 values widen exactly to float64
    want = as_points(sensor, ts, value32.astype(np.float64))
    assert read_back(client, node, lsn, [4, 5, 70000]) == want
    assert want[(4, BASE)] == float(np.float32(0.1)) != 0.1

    body = arrow_stream(
        {
            "sensor": pa.array([6, 6], pa.uint8()),
            "ts": pa.array([BASE + 5, BASE + 6], pa.int64()),
            "value": pa.array([-7, 2**40], pa.int64()),
        }
    )
    lsn = post(client, ARROW, body)
    assert read_back(client, node, lsn, [6]) == {(6, BASE + 5): -7.0, (6, BASE + 6): 2.0**40}


def test_json_columns_round_trip(client: TestClient, node: Node) -> None:
    b = sample(n=25, seed=2)
    doc = {"sensor": b.sensor.tolist(), "ts": b.ts.tolist(), "value": b.value.tolist()}
    lsn = post(client, JSON, orjson.dumps(doc))
    assert read_back(client, node, lsn, [1, 2, 3]) == as_points(b.sensor, b.ts, b.value)


def test_json_points_round_trip(client: TestClient, node: Node) -> None:
    pts = [
        {"sensor": 9, "ts": BASE + 10, "value": 0.5},
        {"ts": BASE + 11, "value": -3, "sensor": 9},  # an integer value, keys in any order
        {"sensor": 10, "ts": BASE + 10, "value": 1e-9, "unit": "V"},
    ]
    lsn = post(client, "application/json; charset=utf-8", orjson.dumps({"points": pts}))
    got = read_back(client, node, lsn, [9, 10])
    assert got == {(9, BASE + 10): 0.5, (9, BASE + 11): -3.0, (10, BASE + 10): 1e-9}


@pytest.mark.parametrize("trailing_newline", [False, True])
def test_line_protocol_canonical_round_trip(
    client: TestClient, node: Node, slow_lines: list[bytes], trailing_newline: bool
) -> None:
    b = sample(n=30, seed=3)
    body = "\n".join(
        f"sensor,id={s} value={v!r} {t}" for s, t, v in zip(b.sensor, b.ts, b.value.tolist())
    ).encode()
    if trailing_newline:
        body += b"\n"
    lsn = post(client, LINE, body)
    assert slow_lines == []  # canonical lines take the vectorised path
    assert read_back(client, node, lsn, [1, 2, 3]) == as_points(b.sensor, b.ts, b.value)


def test_line_protocol_single_line(client: TestClient, node: Node) -> None:
    lsn = post(client, LINE, b"sensor,id=7 value=0.25 1700000000000")
    assert read_back(client, node, lsn, [7]) == {(7, BASE): 0.25}


def test_line_protocol_non_canonical_takes_slow_path(
    client: TestClient, node: Node, slow_lines: list[bytes]
) -> None:
    body = (
        b"# a comment\n"
        b"sensor,id=7 value=0.25 1700000000000\n"
        b"\n"
        b"sensor,site=north,id=8 value=3i 1700000000001\r\n"
        b"sensor,id=8,kind=vib temp=20.5,value=-1.5e3,ok=true 1700000000002\n"
        b"sensor,id=9 value=42u   1700000000003\n"
    )
    lsn = post(client, "Text/Plain; charset=utf-8", body)
    assert len(slow_lines) == 4
    assert read_back(client, node, lsn, [7, 8, 9]) == {
        (7, BASE): 0.25,
        (8, BASE + 1): 3.0,
        (8, BASE + 2): -1500.0,
        (9, BASE + 3): 42.0,
    }


def test_tenant_header_separates_data(client: TestClient, node: Node) -> None:
    lsn = post(client, LINE, b"sensor,id=1 value=1.5 1700000000000", tenant="acme")
    lsn = post(client, LINE, b"sensor,id=1 value=2.5 1700000000000", tenant="other.co")
    assert read_back(client, node, lsn, [1], tenant="acme") == {(1, BASE): 1.5}
    assert read_back(client, node, lsn, [1], tenant="other.co") == {(1, BASE): 2.5}
    assert read_back(client, node, lsn, [1]) == {}  # nothing under "default"


def test_formats_agree(client: TestClient, node: Node) -> None:
    """The same points written in each format (to different sensors) read back equal."""
    ts = [BASE + 100, BASE + 101, BASE + 105]
    value = [0.1, -0.2, 7.0]
    bodies = [
        (
            ARROW,
            encode_arrow(
                PointBatch("default", np.full(3, 11, np.uint32), *map(np.array, (ts, value)))
            ),
        ),
        (JSON, orjson.dumps({"sensor": [12] * 3, "ts": ts, "value": value})),
        (LINE, "\n".join(f"sensor,id=13 value={v} {t}" for t, v in zip(ts, value)).encode()),
    ]
    lsn = max(post(client, ct, body) for ct, body in bodies)
    got = read_back(client, node, lsn, [11, 12, 13])
    for sensor in (11, 12, 13):
        assert {t: v for (s, t), v in got.items() if s == sensor} == dict(zip(ts, value))


# -- decoders: good input ---------------------------------------------------------


def test_decoders_return_canonical_dtypes() -> None:
    for b in (
        decode_json(b'{"sensor": [1], "ts": [1700000000000], "value": [2]}', "t"),
        decode_line_protocol(b"sensor,id=1 value=2 1700000000000", "t"),
        decode_line_protocol(b"sensor,id=1 value=2i 1700000000000", "t"),
        decode_arrow(
            arrow_stream(
                {
                    "sensor": pa.array([1], pa.int16()),
                    "ts": pa.array([1700000000000]),
                    "value": pa.array([2], pa.int8()),
                }
            ),
            "t",
        ),
    ):
        assert b.tenant == "t"
        assert (b.sensor.dtype, b.ts.dtype, b.value.dtype) == (np.uint32, np.int64, np.float64)
        assert (b.sensor.tolist(), b.ts.tolist(), b.value.tolist()) == ([1], [BASE], [2.0])


def test_empty_bodies_decode_to_empty_batches() -> None:
    assert len(decode_json(b'{"sensor": [], "ts": [], "value": []}', "t")) == 0
    assert len(decode_json(b'{"points": []}', "t")) == 0
    assert len(decode_line_protocol(b"", "t")) == 0
    assert len(decode_line_protocol(b"\n# only a comment\n", "t")) == 0


def test_decode_dispatches_on_media_type() -> None:
    body = b'{"sensor": [3], "ts": [1700000000000], "value": [1.5]}'
    for ct in ("application/json", "APPLICATION/JSON", " application/json ; charset=utf-8"):
        assert decode(ct, body, "t").sensor.tolist() == [3]


# -- decoders: each error class -------------------------------------------------------


def refused(fn, body: bytes) -> BadInput:
    with pytest.raises(BadInput) as e:
        fn(body, "t")
    return e.value


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        (None, "unsupported Content-Type None"),
        ("", "unsupported Content-Type ''"),
        ("application/x-protobuf", "unsupported Content-Type 'application/x-protobuf'"),
        ("text/csv", "use one of application/vnd.apache.arrow.stream"),
        ("application/jsonx", "unsupported Content-Type"),
    ],
)
def test_decode_unknown_content_type_is_415(content_type: str | None, fragment: str) -> None:
    with pytest.raises(BadInput) as e:
        decode(content_type, b"{}", "t")
    assert status_of(e.value) == 415
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"sensor": [1], "ts": [1], "value": [NaN]}', "not valid JSON"),
        (b'{"sensor": [1], "ts": [1], "value": [1e999]}', "not valid JSON"),
        (b"[1, 2]", "JSON body must be an object"),
        (b'"sensor"', "JSON body must be an object"),
        (b'{"sensor": [1], "ts": [1]}', "lacks 'value'"),
        (b'{"value": [1]}', "lacks 'sensor', 'ts'"),
        (b'{"sensor": 1, "ts": [1], "value": [1]}', "'sensor' must be a list"),
        (b'{"sensor": [1], "ts": [1], "value": {"a": 1}}', "'value' must be a list"),
        (b'{"sensor": [1], "ts": ["1700000000000"], "value": [1]}', "'ts' must hold integers"),
        (b'{"sensor": [1], "ts": [1.7e12], "value": [1]}', "'ts' must hold integers"),
        (b'{"sensor": [true], "ts": [1], "value": [1]}', "'sensor' must hold integers"),
        (b'{"sensor": [1.0], "ts": [1], "value": [1]}', "'sensor' must hold integers"),
        (b'{"sensor": [null], "ts": [1], "value": [1]}', "'sensor' must hold integers"),
        (b'{"sensor": [[1]], "ts": [1], "value": [1]}', "'sensor' must hold integers"),
        (b'{"sensor": [1], "ts": [1], "value": ["0.5"]}', "'value' must hold numbers"),
        (b'{"sensor": [1], "ts": [1], "value": [false]}', "'value' must hold numbers"),
        (b'{"sensor": [1], "ts": [1], "value": [null]}', "'value' must hold numbers"),
        (b'{"sensor": [1, 2], "ts": [1], "value": [1, 2]}', "columns differ in length"),
        (b'{"sensor": [-1], "ts": [1], "value": [1]}', "'sensor' must hold ids in 0..4294967295"),
        (b'{"sensor": [4294967296], "ts": [1], "value": [1]}', "ids in 0..4294967295"),
        (b'{"sensor": [1], "ts": [9223372036854775808], "value": [1]}', "'ts' is out of range"),
        (b'{"points": {"sensor": 1}}', '"points" must be a list'),
        (b'{"points": [[1, 2, 3]]}', '"points" must be a list'),
        (b'{"points": [{"sensor": 1, "ts": 1}]}', "a point lacks field 'value'"),
        (b'{"points": [{"sensor": "1", "ts": 1, "value": 1}]}', "'sensor' must hold integers"),
    ],
)
def test_decode_json_refuses(body: bytes, fragment: str) -> None:
    e = refused(decode_json, body)
    assert status_of(e) == 400
    assert fragment in str(e)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"sensor,id=7 value=0.25", "line 1: expected 'sensor,id=<id> value=<float> <ts_ms>'"),
        (b"sensor,id=7 value=0.25 1 2", "line 1: expected"),
        (b"temp,id=7 value=0.25 1700000000000", "line 1: measurement must be 'sensor', got 'temp'"),
        (b"sensor value=0.25 1700000000000", "line 1: tag id=<integer> is required"),
        (b"sensor,id=x value=0.25 1700000000000", "tag id=<integer> is required"),
        (b"sensor,id=1.5 value=0.25 1700000000000", "tag id=<integer> is required"),
        (b"sensor,id=7 temp=0.25 1700000000000", "line 1: field value=<number> is required"),
        (b"sensor,id=7 value=abc 1700000000000", "field value=<number> is required"),
        (b'sensor,id=7 value="0.25" 1700000000000', "field value=<number> is required"),
        (b"sensor,id=7 value=true 1700000000000", "field value=<number> is required"),
        (b"sensor,id=7 value=0.25 1.7e12", "line 1: timestamp must be integer milliseconds"),
        (b"sensor,id=7 value=0.25 17000000000001.5", "timestamp must be integer milliseconds"),
        (
            b"sensor,id=1 value=1 1700000000000\n\nsensor,id=2 value=2 17e11\n",
            "line 3: timestamp must be integer milliseconds",
        ),
        (b"sensor,id=-1 value=1 1700000000000", "'sensor' must hold ids in 0..4294967295"),
        (b"sensor,id=4294967296 value=1 1700000000000", "ids in 0..4294967295"),
        (b"sensor,id=7 value=1 99999999999999999999", "'ts' is out of range"),
        (b"sensor,id=99999999999999999999 value=1 1700000000000", "'sensor' is out of range"),
    ],
)
def test_decode_line_protocol_refuses(body: bytes, fragment: str) -> None:
    e = refused(decode_line_protocol, body)
    assert status_of(e) == 400
    assert fragment in str(e)


def test_line_protocol_lines_are_not_misaligned() -> None:
    """Two broken lines whose tokens happen to add up to two canonical lines'
    worth are refused, not read across the line break."""
    e = refused(decode_line_protocol, b"sensor,id=1 value=2\n3 sensor,id=4 value=5 6\n")
    assert "line 1: expected" in str(e)
    e = refused(decode_line_protocol, b"sensor,id=1 value=2 3 4\nsensor,id=5 value=6\n")
    assert "line 1: expected" in str(e)


def _arrow(sensor=None, ts=None, value=None, **extra) -> bytes:
    cols = {"sensor": sensor, "ts": ts, "value": value, **extra}
    return arrow_stream({k: v for k, v in cols.items() if v is not None})


S1 = pa.array([1], pa.uint32())
T1 = pa.array([BASE], pa.int64())
V1 = pa.array([0.5], pa.float64())


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "body is not an Arrow IPC stream"),
        (b"not arrow at all", "body is not an Arrow IPC stream"),
        (
            encode_arrow(PointBatch("t", *map(np.array, ([1, 2], [1, 2], [1.0, 2.0]))))[:-20],
            "not an Arrow IPC stream",
        ),
        (_arrow(S1, T1), "Arrow stream lacks column 'value' (needs sensor, ts, value)"),
        (_arrow(ts=T1, value=V1, id=S1), "lacks column 'sensor'"),
        (
            _arrow(pa.array([1, None], pa.uint32()), pa.array([BASE, BASE]), pa.array([1.0, 2.0])),
            "column 'sensor' has 1 null(s)",
        ),
        (_arrow(S1, T1, pa.array([None], pa.float64())), "column 'value' has 1 null(s)"),
        (_arrow(S1, pa.array(["1700000000000"]), V1), "column 'ts' must be int64, got string"),
        (
            _arrow(S1, pa.array([BASE], pa.timestamp("ms")), V1),
            "column 'ts' must be int64, got timestamp[ms]",
        ),
        (_arrow(S1, pa.array([float(BASE)]), V1), "column 'ts' must be int64, got double"),
        (_arrow(pa.array([1.0]), T1, V1), "column 'sensor' must be uint32, got double"),
        (_arrow(pa.array([True]), T1, V1), "column 'sensor' must be uint32, got bool"),
        (_arrow(S1, T1, pa.array(["0.5"])), "column 'value' must be double, got string"),
        (_arrow(S1, T1, pa.array([True])), "column 'value' must be double, got bool"),
        (_arrow(pa.array([-1], pa.int32()), T1, V1), "column 'sensor' does not fit uint32"),
        (_arrow(pa.array([2**32], pa.int64()), T1, V1), "column 'sensor' does not fit uint32"),
        (_arrow(S1, pa.array([2**63], pa.uint64()), V1), "column 'ts' does not fit int64"),
        (_arrow(S1, T1, pa.array([2**53 + 1], pa.int64())), "column 'value' does not fit double"),
    ],
)
def test_decode_arrow_refuses(body: bytes, fragment: str) -> None:
    e = refused(decode_arrow, body)
    assert status_of(e) == 400
    assert fragment in str(e)


# -- the semantic checks every format shares ---------------------------------------------


def _batch(ts: list[int], value: list[float] | None = None) -> PointBatch:
    value = [1.0] * len(ts) if value is None else value
    return PointBatch.from_columns("t", [1] * len(ts), ts, value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_validate_refuses_non_finite_values(bad: float) -> None:
    with pytest.raises(BadInput) as e:
        _batch([BASE, BASE + 1, BASE + 2], [1.0, bad, bad]).validate()
    assert status_of(e.value) == 422
    assert "value must be a finite number" in str(e.value)
    assert "2 point(s), first at row 1 (sensor 1, ts 1700000000001)" in str(e.value)


def test_validate_time_bounds_are_inclusive() -> None:
    now = BASE
    _batch([MIN_TS_MS, now + MAX_FUTURE_MS]).validate(now_ms=now)
    with pytest.raises(BadInput) as e:
        _batch([MIN_TS_MS - 1, BASE]).validate(now_ms=now)
    assert status_of(e.value) == 422
    assert f"on or after 2000-01-01 ({MIN_TS_MS}); got {MIN_TS_MS - 1}" in str(e.value)
    with pytest.raises(BadInput) as e:
        _batch([BASE, now + MAX_FUTURE_MS + 1]).validate(now_ms=now)
    assert status_of(e.value) == 422
    assert "more than one day ahead of the server clock" in str(e.value)


def test_validate_accepts_an_empty_batch() -> None:
    assert len(_batch([]).validate()) == 0


# -- line protocol: the columnar path accepts exactly what the line parser does --

_TOKENS = st.sampled_from(
    [b"sensor", b"id", b"=", b",", b" ", b"value", b"site", b"A", b"7", b"-", b"+", b"0",
     b"1700000000000", b"2.5", b"1e3", b".5", b"5.", b"i", b"u", b"nan", b"inf", b"_", b"\n",
     b"#", b'"', b"\\", b"\t", b"\r", b"x=1", b"4294967296", b"1_0", b"idx", b"id=",
     b",id=1", b"  "]
)  # fmt: skip


def _line(sensor: int, value: str, ts: int, tags: list[str], extra: list[str]) -> bytes:
    head = ",".join(["sensor", *tags[:1], f"id={sensor}", *tags[1:]])
    fields = ",".join([*extra[:1], f"value={value}", *extra[1:]])
    return f"{head} {fields} {ts}".encode()


_VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: f"{i}i"),
    st.integers(0, 2**64 - 1).map(lambda i: f"{i}u"),
)
_LINES = st.builds(
    _line,
    st.integers(0, 2**32 - 1),
    _VALUES,
    st.integers(MIN_TS_MS, MIN_TS_MS + 10**12),
    # keys near "id", which the columnar head check must tell from it
    st.lists(
        st.sampled_from(["site=A", "line=3", "kind=vib", "idx=1", "i=2", "ix=3", "xid=4", "d=5"]),
        max_size=2,
    ),
    st.lists(st.sampled_from(["temp=1.5", "ok=1i", "n=2u"]), max_size=2),
)


@st.composite
def _bodies(draw) -> bytes:
    """Valid lines, some of them mutated: a token inserted, a byte dropped or replaced."""
    lines = draw(st.lists(_LINES, min_size=1, max_size=6))
    body = b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "drop", "replace"]))
        token = draw(_TOKENS)
        if action == "insert":
            body = body[:at] + token + body[at:]
        elif action == "drop":
            body = body[:at] + body[at + 1 :]
        else:
            body = body[:at] + token + body[at + len(token) :]
    return body


@settings(max_examples=600, deadline=None)
@given(_bodies())
def test_line_protocol_paths_agree(body: bytes) -> None:
    """Whatever the columnar parser accepts, the line parser accepts with the
    same points; nothing malformed is accepted silently by either."""
    fast = formats._line_protocol_columnar(body)
    try:
        slow = formats._lines(body)
    except BadInput:
        assert fast is None, f"columnar parser accepted what the line parser refuses: {body!r}"
        return
    if fast is None:
        return
    sensor, ts, value = fast
    assert sensor.tolist() == slow[0] and ts.tolist() == slow[1], body
    assert np.array_equal(value, np.array(slow[2], np.float64)), body


def test_line_protocol_columnar_takes_tags_and_fields_in_any_order() -> None:
    body = (
        b"sensor,site=A,id=3,kind=vib temp=1.5,value=2.25,n=2u 1700000000000\n"
        b"sensor,id=4 value=-7i,ok=1i 1700000000001\n"
        b"sensor,id=5,line=2 value=18446744073709551615u 1700000000002\n"
    )
    fast = formats._line_protocol_columnar(body)
    assert fast is not None
    assert fast[0].tolist() == [3, 4, 5] and fast[1].tolist() == [BASE, BASE + 1, BASE + 2]
    assert fast[2].tolist() == [2.25, -7.0, float(2**64 - 1)]
    for bad in (
        b"sensor,id=3,id=4 value=1 1700000000000",  # id twice
        b"sensor,id=3 value=1,value=2 1700000000000",
        b"sensor,id=3,site value=1 1700000000000",  # a tag without a value
        b"sensor,id=3 value=1_0 1700000000000",
        b"sensor,id=3 value=infx 1700000000000",  # nan/inf parse, then are refused as non-finite
        b"sensor,id=3 value=1 1_700000000000",
    ):
        assert formats._line_protocol_columnar(bad) is None, bad
        with pytest.raises(BadInput):
            decode_line_protocol(bad, "t")


# -- JSON: the typed decoder accepts exactly what the general one does ----------

_JSON_NUMBERS = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


@st.composite
def _json_bodies(draw) -> bytes:
    """Both shapes, with wrong types, missing or extra keys, and byte-level damage."""
    n = draw(st.integers(0, 5))
    bad = draw(st.integers(0, 3)) == 0
    ids = st.integers(0, 2**32 - 1)
    times = st.integers(MIN_TS_MS, MIN_TS_MS + 10**12)
    if bad:
        ids, times = st.one_of(ids, _JSON_NUMBERS), st.one_of(times, _JSON_NUMBERS)
    val = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-99, 99))
    if bad:
        val = st.one_of(val, _JSON_NUMBERS)
    if draw(st.booleans()):
        pts = []
        for _ in range(n):
            p = {"sensor": draw(ids), "ts": draw(times), "value": draw(val)}
            if draw(st.integers(0, 19)) == 0:
                p.pop(draw(st.sampled_from(sorted(p))))
            if draw(st.integers(0, 9)) == 0:
                p["extra"] = draw(_JSON_NUMBERS)
            pts.append(p)
        doc: object = {"points": pts}
    else:
        doc = {"sensor": [draw(ids) for _ in range(n)], "ts": [draw(times) for _ in range(n)]}
        k = draw(st.sampled_from([n, n, n, n - 1, n + 1]))
        doc["value"] = [draw(val) for _ in range(max(0, k))]
        if draw(st.integers(0, 9)) == 0:
            doc.pop(draw(st.sampled_from(sorted(doc))))
    body = orjson.dumps(doc)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(body)))
        token = draw(
            st.sampled_from([b"1", b"-", b".", b",", b'"', b"e9", b"[", b"}", b" ", b"1e999"])
        )
        body = body[:at] + token + body[at + draw(st.integers(0, 2)) :]
    return body


@settings(max_examples=600, deadline=None)
@given(_json_bodies())
def test_json_decoders_agree(body: bytes) -> None:
    typed = formats._json_typed(body)
    try:
        general = formats._json_general(body, "t")
    except BadInput:
        general = None
    if typed is None:
        return
    try:
        fast = PointBatch.from_columns("t", *typed)
    except BadInput:
        assert general is None, body
        return
    assert general is not None, f"typed decoder accepted what the general one refuses: {body!r}"
    assert fast.sensor.tolist() == general.sensor.tolist(), body
    assert fast.ts.tolist() == general.ts.tolist(), body
    assert np.array_equal(fast.value, general.value), body
