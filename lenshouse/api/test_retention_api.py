"""Retention over HTTP and the command line: policies set and refused, a
maintenance run, lens answers that name their step floor, bounded exports
that say where raw points begin, and admin-only routes with auth on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lenshouse.api.app import create_app
from lenshouse.api.auth import Auth
from lenshouse.cli import app as cli
from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest.formats import ARROW
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.retention.policy import DAY_MS
from lenshouse.tenancy.registry import FileRegistry

NOW = T0 = 0  # read when the module's first test starts (see _clock)


@pytest.fixture(scope="module", autouse=True)
def _clock() -> None:
    """The clock read when these tests run, not when the suite was collected."""
    global NOW, T0
    NOW = int(time.time() * 1000)
    T0 = NOW // DAY_MS * DAY_MS - 4 * DAY_MS  # four days, a point a minute


def _fill(client: TestClient, node: Node) -> None:
    ts = np.arange(T0, NOW - 3_600_000, 60_000, dtype=np.int64)
    batch = PointBatch("default", np.ones(len(ts), np.uint32), ts, np.sin(ts / 1e7))
    r = client.post("/v1/write", content=encode_arrow(batch), headers={"Content-Type": ARROW})
    assert r.status_code == 204, r.text
    assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)


def test_policy_maintenance_and_floor_over_http(client: TestClient, node: Node) -> None:
    _fill(client, node)
    bad = client.put("/v1/admin/retention/default", json={"raw": "200d"})
    assert bad.status_code == 422 and "finer source" in bad.json()["error"]
    assert client.put("/v1/admin/retention/default", json={"raw": "2x"}).status_code == 422
    assert client.put("/v1/admin/retention/default", content=b"{").status_code == 400
    r = client.put("/v1/admin/retention/default", json={"raw": "2d"})
    assert r.status_code == 200 and r.json()["keep"]["raw"] == "2d"
    assert client.get("/v1/retention").json()["keep"]["100ms"] == "90d"

    dry = client.post("/v1/admin/maintain", params={"dry_run": "true"}).json()
    assert (
        dry["dry_run"]
        and dry["marks"]
        and client.get("/v1/retention").json()["expired_before"] == {}
    )
    done = client.post("/v1/admin/maintain").json()
    cut = (NOW - 2 * DAY_MS) // DAY_MS * DAY_MS
    assert {"tenant": "default", "source": "raw", "before": cut} in done["marks"]
    assert [a["kind"] for a in done["actions"] if a["source"] == "raw"] == ["drop"] * 2
    assert client.get("/v1/retention").json()["expired_before"]["raw"] == cut

    lens = client.get("/v1/lens", params={"sensors": "1", "start": T0, "end": NOW, "step": 60_000})
    assert lens.status_code == 200
    floor = lens.json()["floor"]
    assert floor["step_ms"] == 100 and "raw points before" in floor["reason"]
    assert sum(lens.json()["series"][0]["count"]) == len(np.arange(T0, NOW - 3_600_000, 60_000))
    fine = client.get("/v1/lens", params={"sensors": "1", "start": T0, "end": T0 + 1000, "step": 7})
    assert fine.status_code == 422 and "multiple of 100 ms" in fine.json()["error"]
    recent = client.get(
        "/v1/lens", params={"sensors": "1", "start": cut, "end": NOW, "step": 60_000}
    )
    assert recent.status_code == 200 and "floor" not in recent.json()
    export = client.get("/v1/export", params={"sensors": "1", "start": T0, "end": NOW})
    assert export.headers["X-Lenshouse-Expired-Before"] == str(cut)


def test_admin_routes_need_an_admin_token(node: Node, tmp_path: Path, monkeypatch) -> None:
    admin = "a" * 32
    registry = FileRegistry(tmp_path)
    token = registry.create("acme")
    with TestClient(create_app(node, Auth(registry, admin_token=admin))) as c:
        as_tenant = {"Authorization": f"Bearer {token}"}
        assert c.get("/v1/retention", headers=as_tenant).json()["tenant"] == "acme"
        for method, path in (("GET", "/v1/admin/retention"), ("POST", "/v1/admin/maintain"),
                             ("PUT", "/v1/admin/retention/acme")):  # fmt: skip
            assert c.request(method, path, json={"raw": "2d"}).status_code == 401
            assert c.request(method, path, headers=as_tenant, json={"raw": "2d"}).status_code == 403
        r = c.put("/v1/admin/retention/acme", headers={"Authorization": f"Bearer {admin}"},
                  json={"raw": "7d"})  # fmt: skip
        assert r.status_code == 200 and r.json()["keep"]["raw"] == "7d"


def test_commands_on_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Node(data, flush_interval=0.05) as node, TestClient(create_app(node)) as c:
        _fill(c, node)
    run = CliRunner().invoke
    r = run(cli, ["retention", "set", "*", "raw=3d", "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert run(cli, ["retention", "set", "*", "raw=3", "--data", str(data)]).exit_code == 1
    r = run(cli, ["retention", "show", "--data", str(data)])
    assert r.exit_code == 0 and "3d" in r.output
    r = run(cli, ["maintain", "--data", str(data)])
    assert r.exit_code == 0 and "expiry marks" in r.output and "drop" in r.output, r.output
    r = run(cli, ["maintain", "--data", str(data), "--url", "http://127.0.0.1:1"])
    assert r.exit_code == 1 and "exactly one" in r.output
