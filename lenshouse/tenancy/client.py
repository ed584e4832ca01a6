"""What a client sends to say who it is: its bearer token, and the tenant it
acts for (``X-Tenant``: the tenant itself without auth, or any tenant with an
admin token). A client given no token uses ``LENSHOUSE_TOKEN`` if it is set."""

from __future__ import annotations

import os

TOKEN_ENV = "LENSHOUSE_TOKEN"


def tenant_headers(tenant: str | None, token: str | None = None) -> dict[str, str]:
    token = token or os.environ.get(TOKEN_ENV) or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if tenant:
        headers["X-Tenant"] = tenant
    return headers
