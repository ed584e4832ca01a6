"""Lens answers carry a weak ETag of the loads they reflect; If-None-Match
answers 304 exactly while no load since touched the lens's sensors in its
window, and never a stale answer after late data lands there."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest.formats import ARROW
from lenshouse.node import Node
from lenshouse.points import PointBatch

T0 = 1_700_000_000_000


def _write(client: TestClient, node: Node, sensor: int, ts, value) -> None:
    ts = np.asarray(ts, np.int64)
    batch = PointBatch("default", np.full(len(ts), sensor, np.uint32), ts, np.full(len(ts), value))
    r = client.post("/v1/write", content=encode_arrow(batch), headers={"Content-Type": ARROW})
    assert r.status_code == 204
    assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)


def test_a_lens_is_fresh_until_a_load_touches_it(client: TestClient, node: Node) -> None:
    _write(client, node, 1, T0 + 2 * np.arange(5000), 1.0)  # even milliseconds
    _write(client, node, 2, T0 + np.arange(10_000), 2.0)
    params = {"sensors": "1", "start": T0, "end": T0 + 10_000, "step": 1000}
    first = client.get("/v1/lens", params=params)
    tag = first.headers["ETag"]
    assert tag.startswith('W/"lh.') and first.status_code == 200
    again = client.get("/v1/lens", params=params, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["ETag"] == tag and again.content == b""

    # Another sensor's load, and one of this sensor far from the window: still fresh.
    _write(client, node, 2, T0 + 20_000 + np.arange(100), 5.0)
    _write(client, node, 1, T0 + 3_600_000 + np.arange(100), 5.0)
    assert client.get("/v1/lens", params=params, headers={"If-None-Match": tag}).status_code == 304

    # A late point inside the window: the cached answer is stale, never served.
    _write(client, node, 1, [T0 + 9_501], 9.0)
    stale = client.get("/v1/lens", params=params, headers={"If-None-Match": tag})
    assert stale.status_code == 200 and stale.headers["ETag"] != tag
    assert sum(stale.json()["series"][0]["count"]) == 5001  # the late point counted
    assert (
        client.get(
            "/v1/lens", params=params, headers={"If-None-Match": stale.headers["ETag"]}
        ).status_code
        == 304
    )

    # The tag of another request (or another process) never validates this one.
    other = client.get("/v1/lens", params={**params, "step": 500})
    r = client.get("/v1/lens", params=params, headers={"If-None-Match": other.headers["ETag"]})
    assert r.status_code == 200
    forged = tag.replace('W/"lh.', 'W/"lh.x')
    assert (
        client.get("/v1/lens", params=params, headers={"If-None-Match": forged}).status_code == 200
    )
    bad = client.get("/v1/lens", params=params, headers={"If-None-Match": '"junk", *'})
    assert bad.status_code == 200


def test_a_delete_in_the_window_makes_the_tag_stale(client: TestClient, node: Node) -> None:
    _write(client, node, 3, T0 + np.arange(5000), 1.0)
    params = {"sensors": "3", "start": T0, "end": T0 + 5000, "points": 10}
    tag = client.get("/v1/lens", params=params).headers["ETag"]
    r = client.delete("/v1/points", params={"sensors": "3", "start": T0, "end": T0 + 3_600_000})
    assert r.status_code == 200, r.text
    r = client.get("/v1/lens", params=params, headers={"If-None-Match": tag})
    assert r.status_code == 200 and r.json()["series"][0]["count"] == []
