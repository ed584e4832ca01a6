"""The command line, run as real processes: demo, lens, generate, and the
sentences it exits with on bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lenshouse.conftest import free_port
from lenshouse.generators.sender import ARROW, encode_arrow
from lenshouse.points import PointBatch

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "lenshouse.cli"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # COLUMNS keeps rich from wrapping the tables and messages we look for.
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def test_demo_serves_lenses_and_exits_by_itself(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *CLI,
                "demo",
                "--data",
                str(tmp_path / "data"),
                "--port",
                str(port),
                "--sensors",
                "20",
                "--rate-hz",
                "100",
                "--duration",
                "6s",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        doc = None
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            now = int(time.time() * 1000)
            try:
                r = httpx.get(
                    url + "/v1/lens",
                    params={"sensors": "1,2", "start": now - 60_000, "end": now},
                    timeout=5,
                )
            except httpx.TransportError:
                time.sleep(0.1)  # not up yet
                continue
            assert r.status_code == 200, r.text
            doc = r.json()
            if all(s["t"] for s in doc["series"]):
                break
            time.sleep(0.2)
        assert doc is not None, f"the demo never answered a lens:\n{log.read_text()}"
        assert [s["sensor"] for s in doc["series"]] == [1, 2]
        assert all(s["t"] for s in doc["series"]), f"no buckets in {doc}"
        step = doc["step"]
        assert 1 <= step <= 60_000 // 1250  # about 2500 points asked for 1 min
        for s in doc["series"]:
            t, count = np.array(s["t"]), np.array(s["count"])
            lo, avg, hi = (np.array(s[k]) for k in ("min", "avg", "max"))
            assert (t % step == 0).all() and (np.diff(t) > 0).all()
            assert ((count >= 1) & (count <= -(-step // 10))).all()  # 100 Hz: 1 per 10 ms
            assert (lo <= avg).all() and (avg <= hi).all()
            assert (np.abs(lo) <= 10).all() and (np.abs(hi) <= 10).all()  # a ±10 V ADC
            # one generated second at a time: 100 points per sensor per second
            assert count.sum() % 100 == 0

        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "loaded" in out
    m = re.search(r"stopped; ([\d,]+) points loaded this run", out)
    assert m, out
    loaded = int(m.group(1).replace(",", ""))
    assert loaded > 0 and loaded % 2000 == 0  # whole seconds of 20 sensors × 100 Hz


def write(live_server, sensor: list[int], ts: list[int], value: list[float]) -> int:
    body = encode_arrow(
        PointBatch("default", np.array(sensor, np.uint32), np.array(ts), np.array(value))
    )
    r = httpx.post(
        live_server.url + "/v1/write", content=body, headers={"Content-Type": ARROW}, timeout=10
    )
    assert r.status_code == 204, r.text
    lsn = int(r.headers["X-Lenshouse-Lsn"])
    assert live_server.node.ingestor.wait_visible(lsn)
    return lsn


def test_lens_prints_a_table(live_server) -> None:
    t0 = 1_700_000_000_000
    write(live_server, [1, 1, 1, 2], [t0 + 3, t0 + 7, t0 + 8, t0 + 500], [1.5, 2.0, -3.0, 0.125])
    r = run_cli(
        "lens",
        "--url",
        live_server.url,
        "--sensors",
        "1,2",
        "--start",
        str(t0),
        "--end",
        str(t0 + 1000),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"window [{t0}, {t0 + 1000}) step 1 ms" in out
    assert "sensor 1: 3 buckets" in out
    assert "sensor 2: 1 buckets" in out
    rows = [
        re.split(r"\s*[│┃]\s*", line.strip(" │┃"))
        for line in out.splitlines()
        if "│" in line or "┃" in line
    ]
    assert rows == [
        ["t", "avg", "min", "max", "count"],
        [str(t0 + 3), "1.5", "1.5", "1.5", "1"],
        [str(t0 + 7), "2", "2", "2", "1"],
        [str(t0 + 8), "-3", "-3", "-3", "1"],
        ["t", "avg", "min", "max", "count"],
        [str(t0 + 500), "0.125", "0.125", "0.125", "1"],
    ]
    # 10 points over 10 s: 1 s buckets, one holding all three points of sensor 1
    r = run_cli(
        "lens",
        "--url",
        live_server.url,
        "--sensors",
        "1",
        "--start",
        str(t0),
        "--end",
        str(t0 + 10_000),
        "--points",
        "10",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 1000 ms" in r.stdout
    assert re.search(rf"│\s*{t0}\s*│\s*0.166667\s*│\s*-3\s*│\s*2\s*│\s*3\s*│", r.stdout)


def test_lens_over_the_last_minute(live_server) -> None:
    now = int(time.time() * 1000)
    write(live_server, [3] * 3, [now - 20_000, now - 10_000, now - 5_000], [4.0, 5.0, 6.0])
    r = run_cli("lens", "--url", live_server.url, "--sensors", "3", "--last", "1m", "--rows", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sensor 3: 3 buckets" in r.stdout
    # the last two buckets only
    assert re.search(r"│\s*5\s*│\s*5\s*│\s*5\s*│\s*1\s*│", r.stdout)
    assert re.search(r"│\s*6\s*│\s*6\s*│\s*6\s*│\s*1\s*│", r.stdout)
    assert not re.search(r"│\s*4\s*│\s*4\s*│", r.stdout)


@pytest.mark.parametrize(
    ("args", "code", "sentence"),
    [
        (
            ["lens", "--sensors", "1", "--last", "xyz"],
            2,
            "'xyz' is not a duration like 10s, 1m, 1h, 1d",
        ),
        (["lens", "--sensors", "1", "--last", "10 parsecs"], 2, "is not a duration"),
        (["demo", "--rate-hz", "0"], 1, "--rate-hz must be between 1 and 1000"),
        (["demo", "--duration", "forever"], 2, "'forever' is not a duration"),
        (
            ["generate", "--rate-hz", "5000", "--url", "http://127.0.0.1:9"],
            1,
            "rate_hz must be 1..1000",
        ),
        (
            ["generate", "--sensors", "0", "--url", "http://127.0.0.1:9"],
            1,
            "sensors must be at least 1",
        ),
        (["serve", "--head-seconds", "-1"], 2, "--block-cache-mb must be 0 or more"),
        (["serve", "--block-cache-mb", "-1"], 2, "--block-cache-mb must be 0 or more"),
        (
            ["load", "--answer", "xml", "--url", "http://127.0.0.1:9"],
            2,
            "--answer must be json or arrow, got 'xml'",
        ),
    ],
)
def test_bad_arguments_exit_with_a_sentence(
    tmp_path: Path, args: list[str], code: int, sentence: str
) -> None:
    if args[0] in ("demo", "serve"):
        args = [*args, "--data", str(tmp_path / "data")]
    r = run_cli(*args)
    assert r.returncode == code, r.stdout + r.stderr
    assert sentence in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "data").exists()  # refused before touching storage


def test_lens_against_unreachable_server_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    r = run_cli("lens", "--url", url, "--sensors", "1,2")
    assert r.returncode == 1
    assert f"error: cannot reach {url}" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_lens_refused_by_server_exits_1(live_server) -> None:
    r = run_cli("lens", "--url", live_server.url, "--sensors", ",".join(map(str, range(11))))
    assert r.returncode == 1
    assert "error: 422: a lens takes 1 to 10 sensors, got 11" in r.stdout + r.stderr


def test_generate_sends_points_that_all_become_visible(live_server) -> None:
    node = live_server.node
    before = time.time()
    r = run_cli(
        "generate",
        "--url",
        live_server.url,
        "--sensors",
        "5",
        "--rate-hz",
        "50",
        "--duration",
        "3s",
        "--no-realtime",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sent 750 points in 3 batches" in r.stdout
    ing = node.ingestor
    assert ing.points_accepted == 750
    assert ing.batches_accepted == 3
    assert ing.wait_visible(ing.wal.next_lsn - 1)
    rows = node.backend.query(
        "SELECT sensor, count() AS n, uniqExact(ts) AS u, min(ts) AS lo, max(ts) AS hi"
        " FROM raw GROUP BY sensor ORDER BY sensor"
    ).to_pylist()
    assert [(x["sensor"], x["n"], x["u"]) for x in rows] == [(s, 150, 150) for s in range(1, 6)]
    # --no-realtime: three seconds of history ending about now, 20 ms apart
    start = rows[0]["lo"]
    assert start % 1000 == 0 and start >= int(before) * 1000 - 4000
    assert start + 2980 < time.time() * 1000
    assert all((x["lo"], x["hi"]) == (start, start + 2980) for x in rows)
    # ... and the same through a lens
    r = httpx.get(
        live_server.url + "/v1/lens",
        params={"sensors": "1,2,3,4,5", "start": start, "end": start + 3000, "step": 1000},
        timeout=10,
    )
    assert r.status_code == 200
    for s in r.json()["series"]:
        assert s["t"] == [start, start + 1000, start + 2000]
        assert s["count"] == [50, 50, 50]
