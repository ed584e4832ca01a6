"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis): every
operation, with generated parameters, headers and bodies, on a server that
holds data, with auth on (a tenant's token) and off. No answer may be a 5xx,
and every refusal must be lenshouse's JSON error."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from lenshouse.api.app import create_app
from lenshouse.api.auth import Auth
from lenshouse.generators.sender import encode_arrow
from lenshouse.ingest.formats import ARROW
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.tenancy.registry import FileRegistry

T0 = 1_700_000_000_000
EXAMPLES = 25  # per operation; a longer run: LENSHOUSE_FUZZ_EXAMPLES (see docs)
# Binary bodies (remote write's protobuf) are generated as raw bytes.
schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")
schemathesis.serializer.alias("application/vnd.apache.arrow.stream", "application/octet-stream")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    registry = FileRegistry(data)
    token = registry.create("acme")
    with Node(data, flush_interval=0.05) as node:
        ts = T0 + 10 * np.arange(5000, dtype=np.int64)
        batch = PointBatch("acme", np.repeat(np.arange(1, 6, dtype=np.uint32), 1000),
                           ts, np.sin(ts / 1e4))  # fmt: skip
        admin = secrets.token_urlsafe(32)
        apps = {"open": create_app(node), "auth": create_app(node, Auth(registry, admin))}
        with TestClient(apps["open"]) as c:
            r = c.post("/v1/write", content=encode_arrow(batch),
                       headers={"Content-Type": ARROW, "X-Tenant": "acme"})  # fmt: skip
            assert r.status_code == 204
        assert node.ingestor.wait_visible(node.ingestor.wal.next_lsn - 1, 30)
        yield {"apps": apps, "token": token}


def _examples() -> int:
    import os

    return int(os.environ.get("LENSHOUSE_FUZZ_EXAMPLES", EXAMPLES))


@pytest.mark.parametrize("mode", ["open", "auth"])
def test_no_operation_answers_a_server_error(served: dict, mode: str) -> None:
    app = served["apps"][mode]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {served['token']}"} if mode == "auth" else {}
    seen: dict[int, int] = {}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        strategy = operation.as_strategy()

        @settings(max_examples=_examples(), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=strategy)
        def run(case) -> None:
            case.headers = {**(case.headers or {}), **headers}
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}"
                                f" {response.text[:200]}")  # fmt: skip
            elif response.status_code >= 400:
                body = response.json()
                assert isinstance(body, dict) and "error" in body, response.text[:200]

        run()
    assert operations >= 12, "every route is in the schema"
    assert not failures, failures[:5]
    assert sum(seen.values()) >= operations * 5
    print(f"fuzz {mode}: {operations} operations, answers {dict(sorted(seen.items()))}")
