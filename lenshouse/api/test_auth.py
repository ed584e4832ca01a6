"""Tenants cannot see each other: every data endpoint × every way of asking
for another tenant's data, on the embedded server with auth on.

Two tenants write the same sensor ids at the same times with different
values; each token must read back only its own tenant's points, through
lens, export and the catalog, and nothing asked without a valid token is
answered or stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from lenshouse.api.app import create_app
from lenshouse.api.auth import Auth
from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest.formats import ARROW
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.tenancy.quotas import BURST_S as BURST
from lenshouse.tenancy.quotas import Quotas
from lenshouse.tenancy.registry import ADMIN, FileRegistry

T0 = 1_700_000_000_000
N = 600  # points per tenant and sensor, one every 100 ms
VALUE = {"alpha": 1.0, "beta": 1000.0}  # each tenant's values: far apart, so a leak shows


def _body(tenant: str, sensor: int = 1) -> bytes:
    ts = T0 + 100 * np.arange(N, dtype=np.int64)
    values = VALUE[tenant] + np.arange(N) * 0.001
    return encode_arrow(PointBatch(tenant, np.full(N, sensor, np.uint32), ts, values))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class World:
    def __init__(self, client: TestClient, registry: FileRegistry, node: Node) -> None:
        self.c = client
        self.registry = registry
        self.node = node
        self.token = {t: registry.create(t) for t in VALUE}
        self.admin = registry.create(ADMIN)
        for tenant, token in self.token.items():
            r = client.post(
                "/v1/write",
                content=_body(tenant),
                headers={"Content-Type": ARROW, **bearer(token)},
            )
            assert r.status_code == 204, r.text
            r = client.put(
                "/v1/sensors/1",
                json={"labels": {"owner": tenant}},
                headers=bearer(token),
            )
            assert r.status_code == 204, r.text
        assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)

    def lens(self, headers: dict) -> object:
        return self.c.get(
            "/v1/lens",
            params={"sensors": "1", "start": T0, "end": T0 + 100 * N, "step": 1000},
            headers=headers,
        )

    def export(self, headers: dict) -> object:
        return self.c.get(
            "/v1/export",
            params={"sensors": "1", "start": T0, "end": T0 + 100 * N},
            headers=headers,
        )

    def stored_values(self, tenant: str) -> np.ndarray:
        r = self.export({**bearer(self.admin), "X-Tenant": tenant})
        assert r.status_code == 200, r.text
        return pa.ipc.open_stream(r.content).read_all().column("value").to_numpy()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    node = Node(tmp_path / "data", flush_interval=0.05).start()
    registry = FileRegistry(tmp_path / "data")
    try:
        with TestClient(create_app(node, Auth(registry, admin_token=""))) as c:
            yield World(c, registry, node)
    finally:
        node.stop()


def _lens_avgs(r) -> list[float]:
    doc = r.json()
    return [a for s in doc["series"] for a in s["avg"]]


def test_each_token_reads_only_its_own_tenant(world: World) -> None:
    for tenant, token in world.token.items():
        lo, hi = VALUE[tenant], VALUE[tenant] + N * 0.001
        r = world.lens(bearer(token))
        assert r.status_code == 200, r.text
        avgs = _lens_avgs(r)
        assert len(avgs) == N // 10 and all(lo <= a <= hi for a in avgs), tenant
        r = world.export(bearer(token))
        values = pa.ipc.open_stream(r.content).read_all().column("value").to_numpy()
        assert len(values) == N and ((values >= lo) & (values <= hi)).all(), tenant
        r = world.c.get("/v1/sensors", headers=bearer(token))
        assert r.json()["sensors"] == [{"sensor": 1, "labels": {"owner": tenant}}], r.text


# Each way of reaching for beta's data from outside: what comes back.
REFUSED = {
    "no Authorization": ({}, 401),
    "not a bearer token": ({"Authorization": "Basic YWxwaGE6eA=="}, 401),
    "empty bearer": ({"Authorization": "Bearer "}, 401),
    "unknown token": ({"Authorization": "Bearer lh_00000000_guess"}, 401),
    "X-Tenant alone": ({"X-Tenant": "beta"}, 401),
}


def _requests(world: World) -> dict:
    """Every data endpoint, as a function of the headers it is sent with."""
    c = world.c
    return {
        "write": lambda h: c.post(
            "/v1/write", content=_body("beta", 2), headers={"Content-Type": ARROW, **h}
        ),
        "lens": world.lens,
        "export": world.export,
        "sensors": lambda h: c.get("/v1/sensors", headers=h),
        "put sensor": lambda h: c.put(
            "/v1/sensors/1", json={"labels": {"owner": "intruder"}}, headers=h
        ),
    }


@pytest.mark.parametrize("attack", sorted(REFUSED))
def test_requests_without_a_valid_token_are_refused_everywhere(world: World, attack) -> None:
    headers, status = REFUSED[attack]
    for endpoint, send in _requests(world).items():
        r = send(headers)
        assert r.status_code == status, (endpoint, attack, r.status_code, r.text)
        assert "error" in r.json(), (endpoint, attack)
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), (endpoint, attack)
    _beta_untouched(world)


def test_a_tenants_token_naming_another_tenant_is_forbidden(world: World) -> None:
    h = {**bearer(world.token["alpha"]), "X-Tenant": "beta"}
    for endpoint, send in _requests(world).items():
        r = send(h)
        assert r.status_code == 403, (endpoint, r.status_code, r.text)
        assert "alpha" in r.json()["error"] and "beta" in r.json()["error"], endpoint
    _beta_untouched(world)


def test_a_tenants_writes_land_in_its_own_tenant_only(world: World) -> None:
    # alpha writes sensor 1 at beta's very keys: beta's points must not change.
    ts = T0 + 100 * np.arange(N, dtype=np.int64)
    body = encode_arrow(PointBatch("beta", np.full(N, 1, np.uint32), ts, np.full(N, -5.0)))
    r = world.c.post(
        "/v1/write", content=body, headers={"Content-Type": ARROW, **bearer(world.token["alpha"])}
    )
    assert r.status_code == 204, r.text
    assert world.node.ingestor.wait_visible(world.node.ingestor.wal.next_lsn - 1, 30)
    _beta_untouched(world)


def test_revoked_tokens_stop_working_and_others_do_not(world: World) -> None:
    second = world.registry.create("alpha")
    assert world.registry.revoke("alpha", world.registry.tenants()["alpha"][0].id) == 1
    time.sleep(1.1)  # a server sees the file change within a second
    assert world.lens(bearer(world.token["alpha"])).status_code == 401
    assert world.lens(bearer(second)).status_code == 200
    assert world.lens(bearer(world.token["beta"])).status_code == 200


def test_the_admin_api_needs_an_admin_token(world: World) -> None:
    c = world.c
    for headers, status in (({}, 401), (bearer(world.token["alpha"]), 403)):
        assert c.get("/v1/admin/tenants", headers=headers).status_code == status
        assert c.post("/v1/admin/tenants/gamma/tokens", headers=headers).status_code == status
        assert c.delete("/v1/admin/tenants/beta", headers=headers).status_code == status
    assert world.lens(bearer(world.token["beta"])).status_code == 200  # nothing revoked

    admin = bearer(world.admin)
    r = c.post("/v1/admin/tenants/gamma/tokens", headers=admin)
    assert r.status_code == 201, r.text
    gamma = r.json()
    assert gamma["tenant"] == "gamma" and gamma["token"].startswith(f"lh_{gamma['id']}_")
    assert world.lens(bearer(gamma["token"])).json()["series"][0]["avg"] == []  # no data yet
    listed = c.get("/v1/admin/tenants", headers=admin).json()["tenants"]
    assert set(listed) == {"alpha", "beta", "gamma"}
    assert all("token" not in t and "sha256" not in t for ts in listed.values() for t in ts)
    bad = c.post("/v1/admin/tenants/no%20spaces/tokens", headers=admin)
    assert bad.status_code == 422 and "tenant name" in bad.json()["error"]
    gone = c.delete(f"/v1/admin/tenants/gamma/tokens/{gamma['id']}", headers=admin)
    assert gone.status_code == 204
    assert c.delete("/v1/admin/tenants/gamma/tokens/ffffffff", headers=admin).status_code == 404
    time.sleep(1.1)
    assert world.lens(bearer(gamma["token"])).status_code == 401


def test_tokens_are_stored_only_as_hashes(world: World) -> None:
    text = world.registry.path.read_text()
    for token in [*world.token.values(), world.admin]:
        assert token not in text and token.split("_", 2)[2] not in text
    assert world.registry.path.stat().st_mode & 0o077 == 0  # owner only
    assert orjson.loads(text)["tokens"][0].keys() == {"id", "tenant", "sha256", "created"}


def test_without_auth_the_tenant_is_the_x_tenant_header(tmp_path: Path) -> None:
    node = Node(tmp_path / "data", flush_interval=0.05).start()
    try:
        with TestClient(create_app(node)) as c:
            headers = {"Content-Type": ARROW, "X-Tenant": "beta"}
            r = c.post("/v1/write", content=_body("beta"), headers=headers)
            assert r.status_code == 204
            assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)
            r = c.get(
                "/v1/export",
                params={"sensors": "1", "start": T0, "end": T0 + 100 * N},
                headers={"X-Tenant": "beta"},
            )
            assert pa.ipc.open_stream(r.content).read_all().num_rows == N
            assert c.get("/v1/admin/tenants").status_code == 404
    finally:
        node.stop()


def _beta_untouched(world: World) -> None:
    values = world.stored_values("beta")
    assert len(values) == N and (values >= VALUE["beta"]).all(), "beta's points changed"
    r = world.c.get("/v1/sensors", headers={**bearer(world.admin), "X-Tenant": "beta"})
    assert r.json()["sensors"] == [{"sensor": 1, "labels": {"owner": "beta"}}]
    # sensor 2 is what the refused writes aimed at: nothing of it was stored.
    r2 = world.c.get(
        "/v1/export",
        params={"sensors": "2", "start": T0, "end": T0 + 100 * N},
        headers={**bearer(world.admin), "X-Tenant": "beta"},
    )
    assert pa.ipc.open_stream(r2.content).read_all().num_rows == 0


def test_an_export_is_bounded_and_continues_where_it_stopped(world: World) -> None:
    """Every part at most ``limit`` points; the parts, followed through
    ``X-Lenshouse-Next-After``, are the whole export once, in order."""
    headers = bearer(world.token["alpha"])
    r = world.c.post(
        "/v1/write", content=_body("alpha", 2), headers={"Content-Type": ARROW, **headers}
    )
    assert r.status_code == 204
    assert world.node.ingestor.wait_visible(world.node.ingestor.wal.next_lsn - 1, 30)
    params = {"sensors": "2,1", "start": T0, "end": T0 + 100 * N, "limit": 450}
    parts = []
    for _ in range(10):
        r = world.c.get("/v1/export", params=params, headers=headers)
        assert r.status_code == 200, r.text
        part = pa.ipc.open_stream(r.content).read_all()
        assert part.num_rows <= 450
        parts.append(part)
        after = r.headers.get("X-Lenshouse-Next-After")
        if after is None:
            break
        params["after"] = after
    assert [p.num_rows for p in parts] == [450, 450, 300]  # the second crosses sensors
    whole = pa.concat_tables(parts)
    one = T0 + 100 * np.arange(N)
    assert (whole.column("sensor").to_numpy() == np.repeat([1, 2], N)).all()
    assert (whole.column("ts").to_numpy() == np.concatenate([one, one])).all()
    for bad, message in ((0, "limit"), (10**9, "limit")):
        r = world.c.get("/v1/export", params={**params, "limit": bad}, headers=headers)
        assert r.status_code == 422 and message in r.json()["error"]
    r = world.c.get("/v1/export", params={**params, "after": "x"}, headers=headers)
    assert r.status_code == 422 and "SENSOR:TS" in r.json()["error"]


def test_quotas_answer_429_with_retry_after_and_refill(tmp_path: Path) -> None:
    """Each tenant has its own buckets: one over its quota does not slow another."""
    node = Node(tmp_path / "data", flush_interval=0.05).start()
    try:
        app = create_app(node, quotas=Quotas(points_per_s=N / BURST, lens_per_s=1 / BURST))
        with TestClient(app) as c:

            def write(tenant: str):
                return c.post("/v1/write", content=_body(tenant),
                              headers={"Content-Type": ARROW, "X-Tenant": tenant})  # fmt: skip

            assert write("alpha").status_code == 204  # the whole bucket: N points
            r = write("alpha")
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
            assert "quota" in r.json()["error"] and "alpha" in r.json()["error"]
            assert write("beta").status_code == 204  # beta's bucket is its own
            lens = {"sensors": "1", "start": T0, "end": T0 + 1000}
            h = {"X-Tenant": "alpha"}
            assert c.get("/v1/lens", params=lens, headers=h).status_code == 200
            r = c.get("/v1/export", params=lens, headers=h)
            assert r.status_code == 429 and r.headers["Retry-After"]
            time.sleep(BURST + 0.2)  # refilled
            assert c.get("/v1/lens", params=lens, headers=h).status_code == 200
            assert write("alpha").status_code == 204
    finally:
        node.stop()


def test_a_sensor_quota_counts_the_catalog_and_refuses_whole_batches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Node(data, flush_interval=0.05) as node, TestClient(create_app(node)) as c:
        for sensor in (1, 2):  # two sensors stored before any quota
            r = c.post("/v1/write", content=_body("alpha", sensor),
                       headers={"Content-Type": ARROW, "X-Tenant": "alpha"})  # fmt: skip
            assert r.status_code == 204
        assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)
    quota = Quotas(sensors=3)
    with Node(data, flush_interval=0.05) as node, TestClient(create_app(node, quotas=quota)) as c:

        def write(tenant: str, sensor: int):
            return c.post("/v1/write", content=_body(tenant, sensor),
                          headers={"Content-Type": ARROW, "X-Tenant": tenant})  # fmt: skip

        assert write("alpha", 1).status_code == 204  # known: counts once
        assert write("alpha", 3).status_code == 204  # the third
        r = write("alpha", 4)
        assert r.status_code == 429 and r.headers["Retry-After"] == "60"
        assert "would have 4 sensors" in r.json()["error"] and "quota is 3" in r.json()["error"]
        assert write("alpha", 2).status_code == 204  # old sensors still write
        assert write("beta", 4).status_code == 204  # another tenant's are its own
        lsn = node.ingestor.wal.next_lsn - 1
        assert node.ingestor.wait_visible(lsn, 30)
        sensors = c.get("/v1/sensors", headers={"X-Tenant": "alpha"}).json()["sensors"]
        assert sorted(s["sensor"] for s in sensors) == [1, 2, 3], "the refused batch left nothing"


# Routes that answer without a tenant: health, metrics, the page, the API's description
# and the Prometheus version Grafana asks for before anything else.
PUBLIC = {"/healthz", "/metrics", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/api/v1/status/buildinfo"}  # fmt: skip


def test_every_route_but_the_public_ones_refuses_a_request_without_a_token(world: World) -> None:
    """Enumerated from the app itself: a route added without the tenant check fails here."""
    from fastapi.routing import APIRoute

    routes = [r for r in world.c.app.routes if isinstance(r, APIRoute) and r.path not in PUBLIC]
    assert len(routes) >= 15, [r.path for r in routes]
    for route in routes:
        path = route.path.replace("{sensor}", "1").replace("{tenant}", "beta")
        path = path.replace("{name}", "x").replace("{token_id}", "x")
        assert "{" not in path, f"fill in the path parameter of {route.path}"
        for method in sorted(route.methods - {"HEAD"}):
            r = world.c.request(method, path)
            assert r.status_code == 401, (method, route.path, r.status_code, r.text)
            assert "error" in r.json(), (method, route.path)
    _beta_untouched(world)
