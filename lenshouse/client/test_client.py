"""The Python client against a real server (and the oracle), its retries
against a scripted transport, and the examples of docs/client.md, run."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lenshouse.client import AsyncClient, Client, LenshouseError
from lenshouse.conftest import LiveServer
from lenshouse.lens.oracle import brute_force, mismatch

T0 = 1_700_000_000_000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def test_writes_of_every_shape_read_back_exactly(live_server: LiveServer) -> None:
    ts = T0 + np.arange(20_000, dtype=np.int64)
    v = np.sin(ts / 1e3)
    with Client(live_server.url) as lh:
        lh.write(sensor=1, ts=ts, value=v)
        lh.write(frame=pd.DataFrame({"sensor": 2, "ts": ts, "value": v * 2}))
        lh.write(table=pa.table({"sensor": pa.array([3] * 10, pa.uint32()),
                                 "ts": ts[:10], "value": v[:10]}))  # fmt: skip
        node = live_server.node
        assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)
        lens = lh.lens([1, 2], T0, T0 + 20_000, step=1000)
        assert lens.step == 1000 and [s.sensor for s in lens.series] == [1, 2]
        for sensor, values in ((1, v), (2, v * 2)):
            want = brute_force(ts, values, lens.start, lens.end, lens.step)
            assert mismatch(lens[sensor], want) is None
        m4 = lh.lens([1], T0, T0 + 20_000, step=1000, m4=True)
        assert m4[1].tmax is not None
        assert mismatch(m4[1], brute_force(ts, v, m4.start, m4.end, m4.step)) is None
        table = lh.export([3], T0, T0 + 20_000)
        assert table.column("ts").to_pylist() == ts[:10].tolist()
        lh.put_sensor(1, {"kind": "vibration"})
        assert lh.sensors(match='{kind="vibration"}') == [
            {"sensor": 1, "labels": {"kind": "vibration"}}
        ]
        assert lh.labels() == ["kind"]
        assert (
            lh.lens(None, T0, T0 + 20_000, points=10, match='{kind="vibration"}').series[0].sensor
            == 1
        )
        assert lh.delete([3], T0, T0 + 3_600_000)["deleted"] == 10
        with pytest.raises(LenshouseError, match="end") as e:
            lh.lens([1], T0, T0 - 1, step=1000)
        assert e.value.status == 422


def _scripted(answers: list):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def test_busy_answers_are_retried_after_their_retry_after() -> None:
    answers = [
        httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "behind"}),
        httpx.ConnectError("refused"),
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": "quota"}),
        httpx.Response(204),
    ]
    transport, seen = _scripted(answers)
    with Client("http://lh", transport=transport, token="tok") as lh:
        lh.write(sensor=1, ts=[T0], value=[1.0])
    assert len(seen) == 4
    # One batch id for every attempt: a retried write is stored once.
    assert len({r.headers["X-Batch-Id"] for r in seen}) == 1
    assert all(r.headers["Authorization"] == "Bearer tok" for r in seen)


def test_refusals_are_not_retried_and_a_persistent_failure_ends() -> None:
    transport, seen = _scripted([httpx.Response(422, json={"error": "ts before 2000"})])
    with Client("http://lh", transport=transport) as lh, pytest.raises(LenshouseError) as e:
        lh.write(sensor=1, ts=[5], value=[1.0])
    assert len(seen) == 1 and e.value.status == 422 and "2000" in e.value.message
    transport, seen = _scripted([httpx.Response(503, headers={"Retry-After": "0"})])
    with Client("http://lh", transport=transport, retries=3) as lh, pytest.raises(LenshouseError):
        lh.labels()
    assert len(seen) == 4


def test_a_failed_attempt_moves_to_the_next_server_until_the_time_is_up() -> None:
    answers = [httpx.ConnectError("refused"), httpx.Response(502), httpx.Response(204)]
    transport, seen = _scripted(answers)
    moves: list[bool] = []
    with Client(
        "http://a,http://b", transport=transport, retries=0, retry_for_s=30, on_retry=moves.append
    ) as lh:
        lh.write(sensor=1, ts=[T0], value=[1.0])
    # Round-robin from a, then b, then a: retried for 30 s, not counted (retries=0).
    assert [r.url.host for r in seen] == ["a", "b", "a"] and moves == [True, True]
    transport, seen = _scripted([httpx.Response(503, headers={"Retry-After": "0.2"})])
    with (
        Client("http://a", transport=transport, retry_for_s=0.5) as lh,
        pytest.raises(LenshouseError) as e,
    ):
        lh.write(sensor=1, ts=[T0], value=[1.0])
    assert e.value.status == 503 and 2 <= len(seen) <= 5


def test_async_lenses_equal_the_oracle(live_server: LiveServer) -> None:
    ts = T0 + np.arange(5_000, dtype=np.int64)
    v = np.cos(ts / 1e3)
    with Client(live_server.url) as lh:
        lh.write(sensor=4, ts=ts, value=v)
    node = live_server.node
    assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)

    async def read():
        async with AsyncClient(live_server.url) as lh:
            return await asyncio.gather(
                lh.lens([4], T0, T0 + 5_000, step=500), lh.lens([4], T0, T0 + 5_000, points=7)
            )

    for lens in asyncio.run(read()):
        want = brute_force(ts, v, lens.start, lens.end, lens.step)
        assert mismatch(lens[4], want) is None


def test_the_documented_examples_run(live_server: LiveServer) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, "docs/client.md has examples"
    for code in blocks:
        namespace = {"URL": live_server.url}
        exec(compile(code.replace('"http://127.0.0.1:8080"', "URL"), str(DOCS), "exec"), namespace)
