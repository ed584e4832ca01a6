"""A lens answer in either format: JSON (the default) and an Arrow IPC stream
(``format=arrow`` or ``Accept: application/vnd.apache.arrow.stream``) carry the
same buckets, and both equal the oracle."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from lenshouse.ingest.formats import ARROW
from lenshouse.lens.oracle import brute_force
from lenshouse.node import Node
from lenshouse.points import PointBatch

T0 = 1_700_000_000_000


@pytest.fixture
def points(node: Node) -> PointBatch:
    rng = np.random.default_rng(3)
    keys = rng.choice(3 * 60_000, 20_000, replace=False)  # distinct (sensor, ts)
    batch = PointBatch.from_columns(
        "default",
        (1 + keys // 60_000).astype(np.uint32),
        T0 + (keys % 60_000).astype(np.int64),
        rng.normal(0, 10, len(keys)),
    )
    assert node.ingestor.loader.wait_loaded(node.ingestor.write_sync(batch), 30)
    return batch


@pytest.mark.parametrize("ask", [{"params": {"format": "arrow"}}, {"headers": {"Accept": ARROW}}])
def test_arrow_and_json_answers_agree_with_the_oracle(
    client: TestClient, points: PointBatch, ask: dict
) -> None:
    params = {"sensors": "3,1,2,9", "start": T0 - 333, "end": T0 + 61_000, "points": 700}
    doc = client.get("/v1/lens", params=params).json()
    r = client.get(
        "/v1/lens", params={**params, **ask.get("params", {})}, headers=ask.get("headers")
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ARROW
    assert float(r.headers["x-lens-ms"]) > 0
    table = pa.ipc.open_stream(r.content).read_all()
    meta = {k.decode(): int(v) for k, v in table.schema.metadata.items()}
    assert meta == {"start": doc["start"], "end": doc["end"], "step": doc["step"]}
    assert table.column_names == ["sensor", "t", "avg", "min", "max", "count"]
    got = table.to_pydict()
    for s in doc["series"]:  # in the order asked for, as JSON
        mine = [i for i, x in enumerate(got["sensor"]) if x == s["sensor"]]
        for col in ("t", "avg", "min", "max", "count"):
            assert [got[col][i] for i in mine] == s[col], (s["sensor"], col)
        mine = points.sensor == s["sensor"]
        want = brute_force(
            points.ts[mine], points.value[mine], doc["start"], doc["end"], doc["step"]
        )
        assert (s["t"], s["count"]) == (want.t.tolist(), want.count.tolist())
        assert (s["min"], s["max"]) == (want.min.tolist(), want.max.tolist())
        np.testing.assert_allclose(s["avg"], want.avg, rtol=1e-9)
    assert sorted(set(got["sensor"])) == [1, 2, 3]  # sensor 9 has no points: no rows


def test_arrow_answer_keeps_only_the_aggregates_asked_for(
    client: TestClient, points: PointBatch
) -> None:
    params = {"sensors": "1", "start": T0, "end": T0 + 60_000, "step": 1000, "agg": "count"}
    r = client.get("/v1/lens", params={**params, "format": "arrow"})
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column_names == ["sensor", "t", "count"]
    assert sum(table.column("count").to_pylist()) == int(np.count_nonzero(points.sensor == 1))
