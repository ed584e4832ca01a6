"""How the loader meets storage errors: a retryable one (the server or its
keeper away) is retried until the load lands once; a fatal one (the server
refuses the statement) stops the loader with a sentence that /healthz shows,
and the load stays in doubt, replayed whole on the next start."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from lenshouse.api.app import create_app
from lenshouse.node import Node
from lenshouse.points import PointBatch
from lenshouse.storage.embedded import EmbeddedBackend
from lenshouse.storage.errors import FatalError, RetryableError, classify

T0 = 1_700_000_000_000


def batch(n: int = 500) -> PointBatch:
    ts = T0 + np.arange(n, dtype=np.int64)
    return PointBatch.from_columns("default", np.full(n, 3, np.uint32), ts, ts * 0.25)


class FailingRaw(EmbeddedBackend):
    """Raw inserts fail ``times`` times with ``error`` before going through."""

    error: Exception = RetryableError("Code: 242. Table is in readonly mode")
    times = 3

    def insert(self, table: str, data, token: str | None = None) -> None:
        if table == "raw" and self.times > 0:
            self.times -= 1
            raise self.error
        super().insert(table, data, token)


def count(node: Node) -> int:
    return node.backend.query("SELECT count() AS n FROM raw").column("n")[0].as_py()


def test_classify_by_code() -> None:
    assert isinstance(
        classify("Code: 242. DB::Exception: Table is in readonly mode"), RetryableError
    )
    assert isinstance(
        classify("Code: 999. Coordination::Exception: Session expired"), RetryableError
    )
    assert isinstance(classify("Code: 62. DB::Exception: Syntax error"), FatalError)
    assert isinstance(classify("Code: 47. Missing columns: 'x'"), FatalError)
    assert isinstance(classify("Connection refused", network=True), RetryableError)
    assert classify("Code: 60. Table default.nope doesn't exist").code == 60


def test_retryable_errors_are_retried_and_the_load_lands_once(tmp_path: Path) -> None:
    backend = FailingRaw(tmp_path / "data" / "clickhouse")
    with Node(tmp_path / "data", backend=backend, flush_interval=0.02) as node:
        lsn = node.ingestor.write_sync(batch())
        assert node.ingestor.wait_visible(lsn, 30)
        assert node.ingestor.loader.stats.insert_errors == 3
        assert count(node) == 500
        assert node.ingestor.loader.failure is None


def test_a_fatal_error_stops_the_loader_and_healthz_says_why(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = FailingRaw(data / "clickhouse")
    backend.error = FatalError("Code: 47. DB::Exception: Missing columns: 'seq'")
    backend.times = 1
    node = Node(data, backend=backend, flush_interval=0.02).start()
    try:
        node.ingestor.write_sync(batch())
        deadline = time.monotonic() + 10
        while node.ingestor.loader.failure is None:
            assert time.monotonic() < deadline, "the loader kept retrying a fatal error"
            time.sleep(0.02)
        assert "Missing columns" in node.ingestor.loader.failure
        assert node.ingestor.loader.stats.insert_errors == 0  # not retried
        with TestClient(create_app(node)) as client:
            r = client.get("/healthz")
            assert r.status_code == 503
            assert r.json()["status"] == "failed" and "Missing columns" in r.json()["error"]
    finally:
        node.stop()
    # The load stayed in doubt: the next start replays it, and it lands once.
    with Node(data, flush_interval=0.02) as again:
        assert count(again) == 500
