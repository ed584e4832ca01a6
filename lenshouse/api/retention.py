"""Retention over HTTP: each tenant reads its own policy and expiry marks;
the admin sets policies and (on the embedded server) runs maintenance."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool

from lenshouse.api.auth import request_tenant
from lenshouse.api.requests import HttpError
from lenshouse.points import BadInput, check_tenant
from lenshouse.retention import maintain
from lenshouse.retention.horizons import Horizons
from lenshouse.retention.policy import ALL_TENANTS
from lenshouse.storage.store import Store
from lenshouse.tenancy.registry import ADMIN

# The embedded server's readers are in its own process: they see new marks
# as soon as maintenance refreshes them, so a short wait covers lenses in flight.
IN_PROCESS_SETTLE_S = 5.0


def require_admin(request: Request, authorization: str | None = Header(None)) -> None:
    """An admin token where auth is on; anyone where it is off (loopback demo)."""
    auth = request.app.state.auth
    if auth.enabled and auth.grant(authorization) != ADMIN:
        raise HttpError("the admin API needs an admin token", 403)


def add_retention_routes(
    app: FastAPI, store: Store, horizons: Horizons, can_maintain: bool
) -> None:
    @app.get("/v1/retention", summary="This tenant's retention and what has expired")
    def retention(tenant: str = Depends(request_tenant)) -> dict:
        policy = maintain.policy_of(store, tenant)
        return {
            "tenant": tenant,
            "keep": policy.to_json(),
            "expired_before": horizons.marks(tenant),
        }

    @app.get("/v1/admin/retention", summary="Every policy (admin)")
    def policies(_: None = Depends(require_admin)) -> dict:
        return {"policies": {t: p.to_json() for t, p in maintain.policies(store).items()}}

    @app.put("/v1/admin/retention/{tenant}", summary="Set a tenant's retention, or * (admin)")
    async def set_policy(tenant: str, request: Request, _: None = Depends(require_admin)) -> dict:
        if tenant != ALL_TENANTS:
            tenant = check_tenant(tenant)
        try:
            keep = await request.json()
        except ValueError:
            raise BadInput('body must be JSON like {"raw": "30d", "100ms": "90d"}') from None
        policy = await run_in_threadpool(maintain.set_policy, store, tenant, keep)
        return {"tenant": tenant, "keep": policy.to_json()}

    if not can_maintain:
        return

    @app.post("/v1/admin/maintain", summary="Run retention once (admin)")
    def run_maintenance(
        dry_run: bool = Query(False, description="report what would go, change nothing"),
        _: None = Depends(require_admin),
    ) -> dict:
        report = maintain.run(store, dry_run=dry_run, horizons=horizons,
                              settle_s=IN_PROCESS_SETTLE_S)  # fmt: skip
        return report.to_json()
