"""Lenses and export by label matchers, and the label endpoints, over HTTP."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from fastapi.testclient import TestClient

from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest.formats import ARROW
from lenshouse.node import Node
from lenshouse.points import PointBatch

T0 = 1_700_000_000_000
KINDS = {s: ("vibration" if s % 2 else "temperature") for s in range(1, 15)}


def _fill(client: TestClient, node: Node) -> None:
    ids = np.arange(1, 15, dtype=np.uint32)
    ts = T0 + 100 * np.arange(100, dtype=np.int64)
    batch = PointBatch(
        "default", np.repeat(ids, len(ts)), np.tile(ts, len(ids)), np.repeat(ids, len(ts)) * 1.0
    )
    r = client.post("/v1/write", content=encode_arrow(batch), headers={"Content-Type": ARROW})
    assert r.status_code == 204
    for s, kind in KINDS.items():
        labels = {"kind": kind, "site": "A" if s <= 4 else "B"}
        assert client.put(f"/v1/sensors/{s}", json={"labels": labels}).status_code == 204
    assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)


def test_lenses_and_export_by_matchers(client: TestClient, node: Node) -> None:
    _fill(client, node)
    window = {"start": T0, "end": T0 + 10_000, "step": 1000}
    by_match = client.get("/v1/lens", params={**window, "match": '{site="A",kind="vibration"}'})
    assert by_match.status_code == 200, by_match.text
    by_ids = client.get("/v1/lens", params={**window, "sensors": "1,3"})
    assert by_match.json() == by_ids.json() and len(by_ids.json()["series"]) == 2
    both = client.get(
        "/v1/lens", params={**window, "sensors": "2", "match": '{site="A",kind="vibration"}'}
    )
    assert sorted(s["sensor"] for s in both.json()["series"]) == [1, 2, 3]
    r = client.get(
        "/v1/export", params={"start": T0, "end": T0 + 10_000, "match": '{kind=~"temp.*",site="A"}'}
    )
    table = pa.ipc.open_stream(r.content).read_all()
    assert sorted(set(table.column("sensor").to_pylist())) == [2, 4] and table.num_rows == 200


def test_too_many_or_no_matches_are_refused_with_the_count(client: TestClient, node: Node) -> None:
    _fill(client, node)
    window = {"start": T0, "end": T0 + 10_000}
    assert client.get("/v1/lens", params={**window, "match": '{site="B"}'}).status_code == 200
    r = client.get("/v1/lens", params={**window, "sensors": "1", "match": '{site="B"}'})
    assert r.status_code == 422 and "select 11" in r.json()["error"]
    r = client.get("/v1/lens", params={**window, "match": '{kind=~".+"}'})
    assert r.status_code == 422 and "select 14" in r.json()["error"]
    r = client.get("/v1/lens", params={**window, "match": '{kind="pressure"}'})
    assert r.status_code == 422 and "selects none" in r.json()["error"]
    r = client.get("/v1/lens", params=window)
    assert r.status_code == 422 and "name the sensors" in r.json()["error"]
    r = client.get("/v1/lens", params={**window, "match": "{kind=}"})
    assert r.status_code == 422 and "expected" in r.json()["error"]


def test_label_names_and_values(client: TestClient, node: Node) -> None:
    _fill(client, node)
    assert client.get("/v1/labels").json() == {"labels": ["kind", "site"]}
    r = client.get("/v1/labels/kind/values").json()
    assert r == {"label": "kind", "values": ["temperature", "vibration"]}
    assert client.get("/v1/labels/nope/values").json()["values"] == []
    other = client.get("/v1/labels", headers={"X-Tenant": "other"}).json()
    assert other == {"labels": []}  # another tenant's catalog is its own


def test_the_catalog_lists_the_sensors_matchers_select(client: TestClient, node: Node) -> None:
    _fill(client, node)

    def ids(params: dict) -> list[int]:
        r = client.get("/v1/sensors", params=params)
        assert r.status_code == 200, r.text
        return [s["sensor"] for s in r.json()["sensors"]]

    site_a = [s for s in KINDS if s <= 4]
    assert ids({"match": '{site="A"}'}) == site_a
    assert ids({"match": '{site=~"A|B",kind!="vibration"}'}) == [s for s in KINDS if s % 2 == 0]
    assert ids({"match": '{site="A"}', "label.kind": "vibration"}) == [1, 3]  # both apply
    assert client.get("/v1/sensors", params={"match": "{site="}).status_code == 422
