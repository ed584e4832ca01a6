"""Remote write: decoding, series → sensors, and the HTTP route."""

from __future__ import annotations

from pathlib import Path

import cramjam
import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from lenshouse.api.app import create_app
from lenshouse.api.requests import status_of
from lenshouse.node import Node
from lenshouse.points import BadInput
from lenshouse.prometheus.remote_write import (
    RemoteSeries,
    decode_write_request,
    encode_write_request,
    stale_nan,
)
from lenshouse.prometheus.series import BASE

T0 = 1_700_000_000_000
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}


def _series(name: str, n: int, start: int = T0, **labels: str) -> RemoteSeries:
    ts = start + 1000 * np.arange(n, dtype=np.int64)
    return RemoteSeries(
        tuple(sorted({"__name__": name, **labels}.items())), ts, np.sin(ts / 7e3) * 100
    )


names = st.text("abc_:", min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(names, st.lists(st.floats(allow_nan=False), max_size=20), st.integers(0, 10**6)),
        max_size=5,
    )
)
def test_bodies_decode_to_the_series_encoded(items) -> None:
    sent = [
        RemoteSeries(
            (("__name__", n), ("i", str(i))),
            T0 + off + np.arange(len(vals), dtype=np.int64),
            np.array(vals, np.float64),
        )
        for i, (n, vals, off) in enumerate(items)
    ]
    got = decode_write_request(encode_write_request(sent)).series
    want = [s for s in sent if len(s.ts)]  # a series without samples carries no points
    assert [g.labels for g in got] == [w.labels for w in want]
    for g, w in zip(got, want):
        assert np.array_equal(g.ts, w.ts) and np.array_equal(g.value, w.value)


def test_bad_bodies_are_refused_with_a_sentence() -> None:
    with pytest.raises(BadInput, match="snappy"):
        decode_write_request(b"\x00garbage", "snappy")
    with pytest.raises(BadInput, match="Content-Encoding") as e:
        decode_write_request(b"", None)
    assert status_of(e.value) == 415
    not_protobuf = bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff\xff"))
    with pytest.raises(BadInput, match="WriteRequest"):
        decode_write_request(not_protobuf)


def test_staleness_marks_are_not_samples() -> None:
    s = _series("up", 3)
    s.value[1] = stale_nan()
    req = decode_write_request(encode_write_request([s]))
    assert req.stale_markers == 1 and req.series[0].ts.tolist() == [T0, T0 + 2000]


def _points(client: TestClient, node: Node, sensor: int) -> pa.Table:
    assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)
    r = client.get("/v1/export", params={"sensors": sensor, "start": T0, "end": T0 + 10**7})
    assert r.status_code == 200, r.text
    return pa.ipc.open_stream(r.content).read_all()


def test_series_become_sensors_with_their_labels(client: TestClient, node: Node) -> None:
    a, b = _series("temp", 50, job="x"), _series("temp", 30, job="y")
    r = client.post("/api/v1/write", content=encode_write_request([a, b]), headers=HEADERS)
    assert r.status_code == 204, r.text
    listed = client.get("/v1/sensors", params={"match": '{__name__="temp"}'}).json()["sensors"]
    by_job = {s["labels"]["job"]: s["sensor"] for s in listed}
    assert set(by_job) == {"x", "y"} and all(s >= BASE for s in by_job.values())
    for s, sid in ((a, by_job["x"]), (b, by_job["y"])):
        t = _points(client, node, sid)
        assert t.column("ts").to_pylist() == s.ts.tolist()
        assert t.column("value").to_pylist() == s.value.tolist()
    # A resend (Prometheus retries after a timeout) and a late, overlapping
    # batch with other values: first value wins, nothing doubles.
    late = RemoteSeries(a.labels, a.ts[10:60] if len(a.ts) > 60 else a.ts[10:], a.value[10:] + 1)
    for body in (encode_write_request([a, b]), encode_write_request([late])):
        assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
    t = _points(client, node, by_job["x"])
    assert t.column("value").to_pylist() == a.value.tolist()


def test_ids_are_stable_across_restarts_and_tenants_apart(tmp_path: Path) -> None:
    s = _series("pressure", 5, site="A")
    first: dict[str, int] = {}
    for round_ in range(2):
        node = Node(tmp_path / "data", flush_interval=0.05).start()
        try:
            with TestClient(create_app(node)) as c:
                for tenant in ("t1", "t2"):
                    h = {**HEADERS, "X-Tenant": tenant}
                    if round_ == 0:
                        body = encode_write_request([s])
                        assert c.post("/api/v1/write", content=body, headers=h).status_code == 204
                    got = c.get("/v1/sensors", headers={"X-Tenant": tenant}).json()["sensors"]
                    assert len(got) == 1 and got[0]["labels"]["site"] == "A"
                    assert first.setdefault(tenant, got[0]["sensor"]) == got[0]["sensor"]
                    more = _series("pressure", 5, start=T0 + 10_000 * (round_ + 1), site="A")
                    c.post("/api/v1/write", content=encode_write_request([more]), headers=h)
                assert c.get("/v1/sensors", headers={"X-Tenant": "t3"}).json()["sensors"] == []
        finally:
            node.stop()


def test_a_taken_id_moves_a_new_series_to_the_next(client: TestClient, node: Node) -> None:
    s = _series("m", 3)
    from lenshouse.prometheus.series import preferred_id

    taken = preferred_id(s.labels)
    assert client.put(f"/v1/sensors/{taken}", json={"labels": {"owner": "me"}}).status_code == 204
    assert (
        client.post("/api/v1/write", content=encode_write_request([s]), headers=HEADERS).status_code
        == 204
    )
    listed = {x["sensor"]: x["labels"] for x in client.get("/v1/sensors").json()["sensors"]}
    assert listed[taken] == {"owner": "me"} and listed[taken + 1]["__name__"] == "m"


def test_bad_series_are_named_and_the_rest_written(client: TestClient, node: Node) -> None:
    good = _series("ok", 4)
    bad = _series("bad", 4, **{"x" * 80: "long name"})
    odd = _series("odd", 3)
    odd.value[:] = [np.nan, np.inf, 1.5]
    r = client.post(
        "/api/v1/write", content=encode_write_request([good, bad, odd]), headers=HEADERS
    )
    assert r.status_code == 400 and "1 series skipped" in r.json()["error"]
    names = {
        x["labels"]["__name__"]: x["sensor"] for x in client.get("/v1/sensors").json()["sensors"]
    }
    assert set(names) == {"ok", "odd"}
    assert _points(client, node, names["ok"]).num_rows == 4
    assert _points(client, node, names["odd"]).column("value").to_pylist() == [1.5]
    metrics = client.get("/metrics").text
    assert 'lenshouse_remote_write_samples_total{outcome="non_finite"} 2.0' in metrics
    r = client.post("/api/v1/write", content=b"junk", headers=HEADERS)
    assert r.status_code == 400 and "snappy" in r.json()["error"]
    r = client.post("/api/v1/write", content=encode_write_request([good]))
    assert r.status_code == 415


def test_a_large_body_is_taken_whole(client: TestClient, node: Node) -> None:
    body = encode_write_request([_series(f"s{i}", 1000, job="j") for i in range(100)])
    assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
    assert node.ingestor.points_accepted == 100_000
    assert len(client.get("/v1/sensors").json()["sensors"]) == 100
