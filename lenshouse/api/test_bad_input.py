"""Bad input over HTTP: every class of refusal gets its status code and a JSON
error naming the problem, and a refused batch leaves no trace (no log record,
no rows, no catalog entry). Also the sensor catalog endpoints."""

from __future__ import annotations

import itertools
import math
import socket
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import lenshouse.api.app as app_module
import lenshouse.api.requests as requests_module
from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest.formats import ARROW, JSON, LINE
from lenshouse.node import Node
from lenshouse.points import MIN_TS_MS, PointBatch

BASE = 1_700_000_000_000
SENTINEL = 1  # the sensor of the known-good writes that prove nothing else landed
BAD = 999  # the sensor refused batches write to
_SENTINEL_TS = itertools.count(BASE - 10**9)  # distinct sentinel points, kept out of BASE's way


def now_ms() -> int:
    return int(time.time() * 1000)


def row_count(node: Node) -> int:
    return node.backend.query("SELECT count() AS n FROM raw").column("n")[0].as_py()


def arrow_body(sensor, ts, value) -> bytes:
    return encode_arrow(
        PointBatch(
            "default",
            np.asarray(sensor, np.uint32),
            np.asarray(ts, np.int64),
            np.asarray(value, np.float64),
        )
    )


class Probe:
    """Writes sentinel points and checks that a refused request left no trace."""

    def __init__(self, client: TestClient, node: Node) -> None:
        self.client = client
        self.node = node
        self.sentinel()

    def sentinel(self) -> int:
        r = self.client.post(
            "/v1/write",
            content=orjson.dumps(
                {"sensor": [SENTINEL], "ts": [next(_SENTINEL_TS)], "value": [1.0]}
            ),
            headers={"Content-Type": JSON},
        )
        assert r.status_code == 204, r.text
        lsn = int(r.headers["X-Lenshouse-Lsn"])
        assert self.node.ingestor.wait_visible(lsn, timeout=10)
        return lsn

    def state(self) -> tuple[int, int, int, list]:
        h = self.client.get("/healthz").json()
        sensors = self.client.get("/v1/sensors").json()["sensors"]
        return h["accepted_lsn"], h["points_accepted"], row_count(self.node), sensors

    def refused(
        self, status: int, fragment: str, method: str = "POST", url: str = "/v1/write", **kw
    ) -> dict:
        lsn0, accepted0, rows0, sensors0 = self.state()
        r = self.client.request(method, url, **kw)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        doc = r.json()
        assert set(doc) == {"error"}, doc
        assert fragment in doc["error"], doc["error"]
        # Nothing was logged: the next good write takes the very next position, and
        # once it is visible, the table holds exactly one more row.
        assert self.sentinel() == lsn0 + 1
        lsn1, accepted1, rows1, sensors1 = self.state()
        assert (lsn1, accepted1, rows1) == (lsn0 + 1, accepted0 + 1, rows0 + 1)
        assert sensors1 == sensors0
        assert BAD not in [s["sensor"] for s in sensors1]
        return doc

    def write(
        self, content_type: str | None, body, status: int, fragment: str, **headers: str
    ) -> dict:
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self.refused(status, fragment, content=body, headers=headers)


# chDB serves one data directory per process, so the whole module shares one
# node (overriding the function-scoped fixtures of conftest). Tests stay apart by
# comparing state before and after, or by using a tenant of their own.
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("bad-input") / "data", flush_interval=0.05).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def client(node: Node) -> Iterator[TestClient]:
    with TestClient(app_module.create_app(node)) as c:
        yield c


@pytest.fixture
def probe(client: TestClient, node: Node) -> Probe:
    return Probe(client, node)


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(requests_module, "MAX_BODY_BYTES", 200)
    yield 200


# -- /v1/write ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/x-protobuf", "text/csv", "application/octet-stream", "multipart/form-data"],
)
def test_unknown_content_type_is_415(probe: Probe, content_type: str) -> None:
    body = orjson.dumps({"sensor": [BAD], "ts": [BASE], "value": [1.0]})
    doc = probe.write(content_type, body, 415, f"unsupported Content-Type {content_type!r}")
    assert "application/vnd.apache.arrow.stream, application/json, text/plain" in doc["error"]


def test_missing_content_type_is_415(probe: Probe) -> None:
    probe.write(None, b"sensor,id=999 value=1 1700000000000", 415, "unsupported Content-Type")


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        (JSON, b'{"sensor": [999], "ts": [1700000000000], "value": [1.0]', "not valid JSON"),
        (JSON, b"sensor=999", "not valid JSON"),
        (JSON, b"", "not valid JSON"),
        (JSON, b"[999, 1700000000000, 1.0]", "JSON body must be an object"),
        (JSON, b'{"sensor": [999], "ts": [1700000000000]}', "JSON body lacks 'value'"),
        (JSON, b'{"points": [{"sensor": 999, "value": 1}]}', "a point lacks field 'ts'"),
        (ARROW, b"\xff\xff\xff\xff garbage", "body is not an Arrow IPC stream"),
        (ARROW, arrow_body([BAD], [BASE], [1.0])[:-20], "body is not an Arrow IPC stream"),
        (LINE, b"sensor,id=999 value=1", "line 1: expected"),
        (
            LINE,
            b"sensor,id=999 value=1 1700000000000\ntemp,id=999 value=1 1700000000001",
            "line 2: measurement must be 'sensor'",
        ),
        (LINE, b"sensor,id=999 reading=1 1700000000000", "field value=<number> is required"),
    ],
)
def test_malformed_body_is_400(probe: Probe, content_type: str, body: bytes, fragment: str) -> None:
    probe.write(content_type, body, 400, fragment)


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        (
            JSON,
            {"sensor": [999], "ts": ["1700000000000"], "value": [1.0]},
            "'ts' must hold integers",
        ),
        (JSON, {"sensor": [999], "ts": [1.7e12], "value": [1.0]}, "'ts' must hold integers"),
        (JSON, {"sensor": [True], "ts": [BASE], "value": [1.0]}, "'sensor' must hold integers"),
        (JSON, {"sensor": [999.0], "ts": [BASE], "value": [1.0]}, "'sensor' must hold integers"),
        (JSON, {"sensor": [999], "ts": [BASE], "value": ["1.0"]}, "'value' must hold numbers"),
        (JSON, {"sensor": [999], "ts": [BASE], "value": [None]}, "'value' must hold numbers"),
        (JSON, {"sensor": 999, "ts": [BASE], "value": [1.0]}, "'sensor' must be a list"),
        (
            JSON,
            {"points": [{"sensor": False, "ts": BASE, "value": 1}]},
            "'sensor' must hold integers",
        ),
        (JSON, {"sensor": [-999], "ts": [BASE], "value": [1.0]}, "must hold ids in 0..4294967295"),
        (
            ARROW,
            pa.table(
                {"sensor": pa.array([999.0]), "ts": pa.array([BASE]), "value": pa.array([1.0])}
            ),
            "column 'sensor' must be uint32, got double",
        ),
        (
            ARROW,
            pa.table(
                {
                    "sensor": pa.array([999], pa.uint32()),
                    "ts": pa.array([str(BASE)]),
                    "value": pa.array([1.0]),
                }
            ),
            "column 'ts' must be int64, got string",
        ),
        (
            ARROW,
            pa.table(
                {
                    "sensor": pa.array([-999], pa.int64()),
                    "ts": pa.array([BASE]),
                    "value": pa.array([1.0]),
                }
            ),
            "column 'sensor' does not fit uint32",
        ),
        (LINE, b"sensor,id=abc value=1 1700000000000", "tag id=<integer> is required"),
        (LINE, b"sensor,id=999 value=1 1700000000000.0", "timestamp must be integer milliseconds"),
    ],
)
def test_wrong_types_are_400(probe: Probe, content_type: str, body, fragment: str) -> None:
    if isinstance(body, dict):
        body = orjson.dumps(body)
    elif isinstance(body, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, body.schema) as w:
            w.write_table(body)
        body = sink.getvalue().to_pybytes()
    probe.write(content_type, body, 400, fragment)


def test_mismatched_column_lengths_are_400(probe: Probe) -> None:
    body = orjson.dumps({"sensor": [BAD, BAD], "ts": [BASE, BASE + 1], "value": [1.0]})
    probe.write(JSON, body, 400, "columns differ in length: sensor=2, ts=2, value=1")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_422(probe: Probe, bad: float) -> None:
    body = arrow_body([BAD, BAD], [BASE, BASE + 1], [1.0, bad])
    doc = probe.write(ARROW, body, 422, "value must be a finite number")
    assert "first at row 1 (sensor 999, ts 1700000000001)" in doc["error"]
    line = f"sensor,id=999 value=1 {BASE}\nsensor,id=999 value={bad} {BASE + 1}\n"
    probe.write(LINE, line.encode(), 422, "value must be a finite number")


def test_ts_before_2000_is_422(probe: Probe) -> None:
    old = MIN_TS_MS - 1  # 1999-12-31T23:59:59.999Z
    doc = probe.write(ARROW, arrow_body([BAD], [old], [1.0]), 422, "on or after 2000-01-01")
    assert str(old) in doc["error"]
    # seconds instead of milliseconds: a common client mistake
    probe.write(LINE, b"sensor,id=999 value=1 1700000000", 422, "epoch milliseconds")


def test_ts_more_than_a_day_ahead_is_422(probe: Probe) -> None:
    ahead = now_ms() + 86_400_000 + 60_000
    doc = probe.write(ARROW, arrow_body([BAD], [ahead], [1.0]), 422, "more than one day ahead")
    assert str(ahead) in doc["error"]
    # microseconds instead of milliseconds
    probe.write(LINE, f"sensor,id=999 value=1 {now_ms() * 1000}".encode(), 422, "one day ahead")


def test_a_day_ahead_is_accepted(client: TestClient) -> None:
    ts = now_ms() + 86_400_000 - 60_000
    r = client.post(
        "/v1/write", content=arrow_body([5], [ts], [2.0]), headers={"Content-Type": ARROW}
    )
    assert r.status_code == 204, r.text


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        # one bad point among good ones: all refused
        (
            ARROW,
            arrow_body([BAD] * 5, [BASE + i for i in range(5)], [1, 2, math.nan, 4, 5]),
            "1 point(s), first at row 2",
        ),
        (ARROW, arrow_body([BAD] * 3, [BASE, MIN_TS_MS - 5, BASE + 1], [1, 2, 3]), "2000-01-01"),
        (
            JSON,
            orjson.dumps(
                {
                    "points": [
                        {"sensor": BAD, "ts": BASE, "value": 1},
                        {"sensor": BAD, "ts": BASE + 1, "value": "2"},
                        {"sensor": BAD, "ts": BASE + 2, "value": 3},
                    ]
                }
            ),
            "'value' must hold numbers",
        ),
        (
            JSON,
            orjson.dumps({"sensor": [BAD, BAD], "ts": [BASE, 10**17], "value": [1, 2]}),
            "one day ahead",
        ),
        (
            LINE,
            b"sensor,id=999 value=1 1700000000000\nsensor,id=999 value=2 1700000000001\n"
            b"sensor,id=999 value=x 1700000000002\n",
            "line 3: field value=<number>",
        ),
        (
            LINE,
            b"sensor,id=999 value=1 1700000000000\nsensor,id=999 value=inf 1700000000001\n",
            "finite",
        ),
    ],
)
def test_mixed_good_and_bad_points_are_refused_whole(
    probe: Probe, content_type: str, body: bytes, fragment: str
) -> None:
    status = 400 if "must hold" in fragment or "line 3" in fragment else 422
    probe.write(content_type, body, status, fragment)


@pytest.mark.parametrize("tenant", [b"a b", b"x" * 65, b"acme/eu", b"ten'ant", "é".encode()])
def test_bad_tenant_header_is_400(probe: Probe, tenant: bytes) -> None:
    body = arrow_body([BAD], [BASE], [1.0])
    headers = {"Content-Type": ARROW, "X-Tenant": tenant}
    probe.refused(400, "tenant must be 1-64 characters", content=body, headers=headers)


def test_oversize_body_is_413(probe: Probe, small_limit: int) -> None:
    body = arrow_body([BAD] * 20, [BASE + i for i in range(20)], [1.0] * 20)
    assert len(body) > small_limit
    probe.write(ARROW, body, 413, f"batch of {len(body)} bytes exceeds the 200-byte limit")


def test_oversize_chunked_body_is_413(probe: Probe, small_limit: int) -> None:
    """Without Content-Length, the limit holds while the body streams in."""
    line = f"sensor,id=999 value=1 {BASE}\n".encode()

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield line

    probe.write(LINE, chunks(), 413, "batch exceeds the 200-byte limit")


def test_body_at_the_limit_is_accepted(client: TestClient, small_limit: int) -> None:
    body = b"sensor,id=5 value=1 1700000000000\n"
    body += b"#" * (small_limit - len(body) - 1) + b"\n"
    assert len(body) == small_limit
    r = client.post("/v1/write", content=body, headers={"Content-Type": LINE})
    assert r.status_code == 204, r.text


def test_declared_oversize_is_refused_before_the_body_arrives(
    live_server, small_limit: int
) -> None:
    """A huge Content-Length is answered at once, without waiting for the body."""
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply
    assert orjson.loads(body) == {
        "error": "batch of 1000000000000 bytes exceeds the 200-byte limit"
    }


# -- /v1/lens ---------------------------------------------------------------------------


def lens_params(**kw) -> dict:
    return {"sensors": "1,2", "start": BASE, "end": BASE + 10_000, **kw}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (
            lens_params(sensors=",".join(map(str, range(1, 12)))),
            "a lens takes 1 to 10 sensors, got 11",
        ),
        (lens_params(sensors=""), "a lens takes 1 to 10 sensors, got 0"),
        (lens_params(sensors=" , "), "a lens takes 1 to 10 sensors, got 0"),
        (lens_params(sensors="1,a"), "sensors must be a comma-separated list of integer ids"),
        (lens_params(sensors="1.5"), "sensors must be a comma-separated list of integer ids"),
        (lens_params(sensors="-1"), "sensor ids are 0 .. 2^32-1"),
        (lens_params(sensors="4294967296"), "sensor ids are 0 .. 2^32-1"),
        (lens_params(end=BASE), f"end ({BASE}) must be after start ({BASE})"),
        (lens_params(end=BASE - 1), f"end ({BASE - 1}) must be after start ({BASE})"),
        (lens_params(agg="median"), "agg must be a subset of avg,min,max,count,first,last,tfirst"),
        (lens_params(agg="avg,p99"), "agg must be a subset of avg,min,max,count"),
        (lens_params(agg=","), "agg must be a subset"),
        (lens_params(step=0), "step must be at least 1 ms"),
        (lens_params(step=-5), "step must be at least 1 ms"),
        (lens_params(step=1, end=BASE + 20_001), "step 1 gives more than 20000 buckets"),
        (  # a month of raw points is never read: the nearest tier-aligned steps are named
            lens_params(step=240, end=BASE + 600_001),
            "step 240 ms: no rollup tier divides it, so this window would be read from raw"
            " points (at most 10 minutes); use a multiple of 100 ms (e.g. 200 or 300)",
        ),
        (lens_params(points=0), "points must be 1..20000"),
        (lens_params(points=20_001), "points must be 1..20000"),
        (lens_params(start="yesterday"), "start: Input should be a valid integer"),
        (lens_params(step="1s"), "step: Input should be a valid integer"),
        ({"sensors": "1", "end": BASE}, "start: Field required"),
        (lens_params(format="csv"), "format must be json or arrow, got 'csv'"),
    ],
)
def test_bad_lens_requests_are_422(client: TestClient, params: dict, fragment: str) -> None:
    r = client.get("/v1/lens", params=params)
    assert r.status_code == 422, r.text
    doc = r.json()
    assert set(doc) == {"error"}, doc
    assert fragment in doc["error"]


def test_lens_with_bad_tenant_is_400(client: TestClient) -> None:
    r = client.get("/v1/lens", params=lens_params(), headers={"X-Tenant": "no such; tenant"})
    assert r.status_code == 400
    assert "tenant must be" in r.json()["error"]


def test_lens_limits_are_inclusive(client: TestClient, node: Node) -> None:
    t = {"X-Tenant": "lens-limits"}
    r = client.post(
        "/v1/write", content=arrow_body([1], [BASE], [0.5]), headers={"Content-Type": ARROW, **t}
    )
    assert node.ingestor.wait_visible(int(r.headers["X-Lenshouse-Lsn"]))
    ten = ",".join(map(str, range(1, 11)))
    r = client.get(
        "/v1/lens", params=lens_params(sensors=ten, step=1, end=BASE + 20_000), headers=t
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [s["sensor"] for s in doc["series"]] == list(range(1, 11))
    # the only point, in sensor 1's first bucket
    assert (doc["series"][0]["t"], doc["series"][0]["count"]) == ([BASE], [1])
    assert all(s["t"] == [] for s in doc["series"][1:])
    r = client.get(
        "/v1/lens", params=lens_params(sensors="1,1,1", agg="count,avg", points=20_000), headers=t
    )
    assert r.status_code == 200, r.text
    (series,) = r.json()["series"]  # duplicates collapse
    assert set(series) == {"sensor", "t", "count", "avg"}
    assert (series["count"], series["avg"]) == ([1], [0.5])


# -- /v1/sensors ----------------------------------------------------------------------------


def put_labels(client: TestClient, sensor, body: bytes, tenant: str | None = None):
    headers = {"Content-Type": JSON} | ({"X-Tenant": tenant} if tenant else {})
    return client.put(f"/v1/sensors/{sensor}", content=body, headers=headers)


@pytest.mark.parametrize(
    ("sensor", "body", "status", "fragment"),
    [
        (3, b'{"labels": {"kind": 1}}', 422, "labels must map names (1-64 chars) to string values"),
        (3, b'{"labels": {"kind": null}}', 422, "string values"),
        (3, b'{"labels": {"": "x"}}', 422, "names (1-64 chars)"),
        (3, orjson.dumps({"labels": {"k" * 65: "x"}}), 422, "names (1-64 chars)"),
        (3, orjson.dumps({"labels": {"k": "v" * 257}}), 422, "(<= 256 chars)"),
        (3, orjson.dumps({"labels": {f"k{i}": "v" for i in range(33)}}), 422, "at most 32 labels"),
        (3, b'{"labels": ["kind", "vibration"]}', 422, "labels must be a JSON object"),
        (3, b'{"labels": "kind=vibration"}', 422, "labels must be a JSON object"),
        (3, b'{"labels": null}', 422, "labels must be a JSON object"),
        (3, b"[1, 2]", 422, "labels must be a JSON object"),
        (3, b'{"kind": "vibration"}', 422, 'body must be {"labels"'),
        (3, b'{"labels": {"kind": "vibration"}', 400, "body is not valid JSON"),
        (2**32, b'{"labels": {}}', 422, "sensor ids are 0 .. 2^32-1"),
        (-1, b'{"labels": {}}', 422, "sensor ids are 0 .. 2^32-1"),
        ("abc", b'{"labels": {}}', 422, "sensor: Input should be a valid integer"),
    ],
)
def test_bad_sensor_labels_are_refused(
    client: TestClient, sensor, body: bytes, status: int, fragment: str
) -> None:
    tenant = "labels-refused"
    assert put_labels(client, 3, b'{"labels": {"kind": "before"}}', tenant).status_code == 204
    r = put_labels(client, sensor, body, tenant)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert fragment in r.json()["error"]
    # the labels already stored are untouched
    assert client.get("/v1/sensors", headers={"X-Tenant": tenant}).json() == {
        "sensors": [{"sensor": 3, "labels": {"kind": "before"}}]
    }


def test_labels_round_trip_and_filter(client: TestClient) -> None:
    t = "labels"
    for sensor, body in [
        (1, b'{"labels": {"kind": "vibration", "site": "north"}}'),
        (2, b'{"labels": {"kind": "temperature", "site": "north"}}'),
        (3, b'{"labels": {"kind": "vibration", "site": "south"}}'),
        (4, b'{"labels": {"k\xc3\xa9y": "\xe2\x9c\x93 ok"}}'),
        (5, b""),  # no body: no labels
        (2**32 - 1, b'{"labels": {}}'),
    ]:
        assert put_labels(client, sensor, body, t).status_code == 204
    assert (
        put_labels(client, 6, b'{"labels": {"kind": "vibration"}}', "labels-b").status_code == 204
    )

    everything = client.get("/v1/sensors", headers={"X-Tenant": t}).json()["sensors"]
    assert everything == [
        {"sensor": 1, "labels": {"kind": "vibration", "site": "north"}},
        {"sensor": 2, "labels": {"kind": "temperature", "site": "north"}},
        {"sensor": 3, "labels": {"kind": "vibration", "site": "south"}},
        {"sensor": 4, "labels": {"kéy": "✓ ok"}},
        {"sensor": 5, "labels": {}},
        {"sensor": 2**32 - 1, "labels": {}},
    ]

    def ids(query: str, tenant: str = t) -> list[int]:
        r = client.get("/v1/sensors?" + query, headers={"X-Tenant": tenant})
        assert r.status_code == 200, r.text
        return [s["sensor"] for s in r.json()["sensors"]]

    assert ids("label.kind=vibration") == [1, 3]
    assert ids("label.kind=vibration&label.site=north") == [1]
    assert ids("label.site=north") == [1, 2]
    assert ids("label.kind=pressure") == []
    assert ids("label.kind=") == []
    assert ids("label.k%C3%A9y=%E2%9C%93%20ok") == [4]
    assert ids("other=ignored") == [1, 2, 3, 4, 5, 2**32 - 1]
    assert ids("label.kind=vibration", tenant="labels-b") == [6]
    assert ids("", tenant="nobody") == []

    # the newest PUT wins, and replaces the whole label set
    assert put_labels(client, 1, b'{"labels": {"kind": "strain"}}', t).status_code == 204
    assert ids("label.kind=vibration") == [3]
    assert ids("label.site=north") == [2]
    assert client.get("/v1/sensors", headers={"X-Tenant": t}).json()["sensors"][0] == {
        "sensor": 1,
        "labels": {"kind": "strain"},
    }


def test_sensors_with_bad_tenant_is_400(client: TestClient) -> None:
    r = client.get("/v1/sensors", headers={"X-Tenant": "bad tenant"})
    assert r.status_code == 400
    assert "tenant must be" in r.json()["error"]
    r = put_labels(client, 1, b'{"labels": {}}', tenant="bad tenant")
    assert r.status_code == 400
    assert "tenant must be" in r.json()["error"]


def test_writes_register_sensors_implicitly(client: TestClient, node: Node) -> None:
    t, other = "implicit", "implicit-b"
    assert put_labels(client, 20, b'{"labels": {"kind": "vibration"}}', t).status_code == 204
    body = arrow_body([21, 20, 22, 21], [BASE, BASE, BASE, BASE + 1], [1, 2, 3, 4])
    r = client.post("/v1/write", content=body, headers={"Content-Type": ARROW, "X-Tenant": t})
    assert r.status_code == 204
    r = client.post(
        "/v1/write",
        content=b"sensor,id=23 value=1 1700000000000",
        headers={"Content-Type": LINE, "X-Tenant": other},
    )
    assert r.status_code == 204
    assert node.ingestor.wait_visible(int(r.headers["X-Lenshouse-Lsn"]))
    assert client.get("/v1/sensors", headers={"X-Tenant": t}).json()["sensors"] == [
        {"sensor": 20, "labels": {"kind": "vibration"}},  # explicit labels survive
        {"sensor": 21, "labels": {}},
        {"sensor": 22, "labels": {}},
    ]
    assert client.get("/v1/sensors", headers={"X-Tenant": other}).json()["sensors"] == [
        {"sensor": 23, "labels": {}}
    ]
    # Labelling an implicitly registered sensor later works too.
    assert put_labels(client, 22, b'{"labels": {"kind": "strain"}}', t).status_code == 204
    r = client.get("/v1/sensors?label.kind=strain", headers={"X-Tenant": t})
    assert r.json()["sensors"] == [{"sensor": 22, "labels": {"kind": "strain"}}]
    # ... and a later write of it does not reset the labels.
    r = client.post(
        "/v1/write",
        content=arrow_body([22], [BASE + 5], [1]),
        headers={"Content-Type": ARROW, "X-Tenant": t},
    )
    assert node.ingestor.wait_visible(int(r.headers["X-Lenshouse-Lsn"]))
    r = client.get("/v1/sensors?label.kind=strain", headers={"X-Tenant": t})
    assert r.json()["sensors"] == [{"sensor": 22, "labels": {"kind": "strain"}}]


# -- /healthz and /metrics ------------------------------------------------------------------


def scrape(client: TestClient) -> dict[str, float]:
    m = client.get("/metrics")
    assert m.status_code == 200
    assert m.headers["content-type"].startswith("text/plain")
    out = {}
    for line in m.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_accepted_not_refused(client: TestClient, node: Node) -> None:
    t = {"X-Tenant": "metrics"}
    h0, m0 = client.get("/healthz").json(), scrape(client)
    good = arrow_body([7, 7, 8], [BASE, BASE + 1, BASE], [1, 2, 3])
    r = client.post("/v1/write", content=good, headers={"Content-Type": ARROW, **t})
    lsn = int(r.headers["X-Lenshouse-Lsn"])
    bad = arrow_body([7], [BASE + 2], [math.nan])
    r = client.post("/v1/write", content=bad, headers={"Content-Type": ARROW, **t})
    assert r.status_code == 422
    assert node.ingestor.wait_visible(lsn)
    for _ in range(3):
        r = client.get("/v1/lens", params=lens_params(sensors="7"), headers=t)
        assert r.status_code == 200
    assert client.get("/v1/lens", params=lens_params(agg="bad")).status_code == 422

    h, m = client.get("/healthz").json(), scrape(client)
    assert h["status"] == "ok"
    assert (h["accepted_lsn"], h["loaded_lsn"]) == (lsn, lsn) == (h0["accepted_lsn"] + 1,) * 2
    assert h["points_accepted"] - h0["points_accepted"] == 3
    assert h["points_loaded"] - h0["points_loaded"] == 3

    def delta(name: str) -> float:
        return m[name] - m0.get(name, 0.0)

    assert delta("lenshouse_points_accepted_total") == 3
    assert delta("lenshouse_batches_accepted_total") == 1
    assert delta("lenshouse_points_loaded_total") == 3
    assert m["lenshouse_points_accepted_total"] == h["points_accepted"]
    assert m["lenshouse_ingest_lag_seconds"] == 0
    assert m["lenshouse_ingest_queued_points"] == 0
    assert delta("lenshouse_lens_seconds_count") == 3  # refused lenses are not timed
    assert delta('lenshouse_lens_seconds_bucket{le="+Inf"}') == 3


def test_metrics_show_the_head_and_the_lens_cache(client: TestClient, node: Node) -> None:
    before = scrape(client)
    now = int(time.time() * 1000)
    body = {"sensor": [5, 5, 5], "ts": [now - 3000, now - 2000, now - 1000], "value": [1, 2, 3]}
    t = {"X-Tenant": "headmetrics"}
    r = client.post("/v1/write", json=body, headers=t)
    assert r.status_code == 204
    assert node.ingestor.wait_visible(int(r.headers["X-Lenshouse-Lsn"]))
    params = {"sensors": "5", "start": now - 600_000, "end": now, "points": 100}
    assert client.get("/v1/lens", params=params, headers=t).status_code == 200
    m = scrape(client)
    assert m["lenshouse_head_bytes"] >= 3 * 16
    _, held = node.head.read("headmetrics", [5], now - 10_000, now, 2**62, 1)
    assert held[5].points()[1].tolist() == [1.0, 2.0, 3.0]
    assert 60 <= m["lenshouse_head_covered_seconds"] <= 66
    assert m["lenshouse_lens_cache_misses_total"] > before["lenshouse_lens_cache_misses_total"]
