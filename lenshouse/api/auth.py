"""Who a request speaks for: the tenant of its bearer token, and the admin API.

With auth on, every data route needs ``Authorization: Bearer <token>``:

- no token, or one the registry does not know → 401 (``WWW-Authenticate: Bearer``);
- a tenant's token acts for its tenant only: an ``X-Tenant`` naming another
  tenant → 403;
- an admin token acts for the tenant its request names with ``X-Tenant``
  (operators, checkers) and may use ``/v1/admin/…``; a tenant's token there → 403.

With auth off (the embedded demo on loopback), the tenant is the ``X-Tenant``
header, as any client says: no isolation, and the server says so when it starts.
``/metrics`` and ``/healthz`` hold no tenant's data and stay open, for probes
and Prometheus.
"""

from __future__ import annotations

import hmac
import os

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from lenshouse.api.requests import HttpError
from lenshouse.points import BadInput, check_tenant
from lenshouse.tenancy.registry import (
    ADMIN,
    ADMIN_MIN_CHARS,
    ADMIN_TOKEN_ENV,
    NoSuchToken,
    Registry,
    TenancyError,
    digest,
)


class Auth:
    """Immutable after construction; the registry answers from memory."""

    def __init__(self, registry: Registry | None, admin_token: str | None = None) -> None:
        self.registry = registry
        admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV)
        if admin_token and len(admin_token) < ADMIN_MIN_CHARS:
            raise TenancyError(
                f"{ADMIN_TOKEN_ENV} has {len(admin_token)} characters: a placeholder, not a"
                f" secret (use at least {ADMIN_MIN_CHARS}, e.g. python -c"
                " 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        self._admin_digest = digest(admin_token) if admin_token else None

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    def grant(self, authorization: str | None) -> str:
        """The tenant or :data:`ADMIN` of the request's token; 401 without one."""
        if not authorization:
            raise HttpError("this server needs Authorization: Bearer <token>", 401)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HttpError("Authorization must be 'Bearer <token>'", 401)
        if self._admin_digest and hmac.compare_digest(digest(token), self._admin_digest):
            return ADMIN
        assert self.registry is not None
        granted = self.registry.grant(token)
        if granted is None:
            raise HttpError("unknown or revoked token", 401)
        return granted

    def tenant(self, authorization: str | None, x_tenant: str | None) -> str:
        if not self.enabled:
            return check_tenant(x_tenant)
        granted = self.grant(authorization)
        if granted == ADMIN:
            return check_tenant(x_tenant)
        if x_tenant not in (None, "", granted):
            raise HttpError(f"this token is for tenant {granted!r}, not {x_tenant!r}", 403)
        return granted


def request_tenant(
    request: Request,
    authorization: str | None = Header(None),
    x_tenant: str | None = Header(None, description="with auth off, or with an admin token"),
) -> str:
    """The FastAPI dependency of every data route."""
    return request.app.state.auth.tenant(authorization, x_tenant)


def _admin(request: Request, authorization: str | None = Header(None)) -> Registry:
    auth: Auth = request.app.state.auth
    if not auth.enabled:
        raise HttpError("auth is off on this server: there are no tenants to administer", 404)
    if auth.grant(authorization) != ADMIN:
        raise HttpError("the admin API needs an admin token", 403)
    assert auth.registry is not None
    return auth.registry


def _refusal(e: TenancyError) -> BadInput:
    return HttpError(str(e), 404 if isinstance(e, NoSuchToken) else 422)


def add_admin_routes(app: FastAPI) -> None:
    @app.get("/v1/admin/tenants", summary="Tenants and their tokens' ids (admin)")
    def list_tenants(registry: Registry = Depends(_admin)) -> dict:
        return {
            "tenants": {
                name: [{"id": r.id, "created": r.created} for r in records]
                for name, records in sorted(registry.tenants().items())
                if name != ADMIN
            }
        }

    @app.post(
        "/v1/admin/tenants/{name}/tokens",
        status_code=201,
        summary="A new token for a tenant, shown once (admin)",
    )
    async def create_token(name: str, registry: Registry = Depends(_admin)) -> dict:
        try:  # the registry checks the name
            token = await run_in_threadpool(registry.create, name)
        except TenancyError as e:
            raise _refusal(e) from None
        return {"tenant": name, "id": token.split("_")[1], "token": token}

    @app.delete(
        "/v1/admin/tenants/{name}/tokens/{token_id}",
        status_code=204,
        summary="Revoke one token (admin)",
    )
    async def revoke_token(name: str, token_id: str, registry: Registry = Depends(_admin)):
        try:
            await run_in_threadpool(registry.revoke, name, token_id)
        except TenancyError as e:
            raise _refusal(e) from None
        return Response(status_code=204)

    @app.delete("/v1/admin/tenants/{name}", summary="Revoke every token of a tenant (admin)")
    async def revoke_tenant(name: str, registry: Registry = Depends(_admin)) -> dict:
        return {"revoked": await run_in_threadpool(registry.revoke, name, None)}
