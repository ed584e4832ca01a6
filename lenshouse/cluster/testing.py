"""A cluster for tests of any package: ``with running_cluster(tmp_path) as doc: …``."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from lenshouse.cluster.processes import down, up
from lenshouse.cluster.record import DOC_NAME, Doc


def cluster_available() -> bool:
    """Whether ClickHouse and ZooKeeper are installed (scripts/install-system-deps)."""
    have_ch = shutil.which("clickhouse-server") or shutil.which("clickhouse")
    return bool(have_ch and shutil.which("java") and Path("/usr/share/java/zookeeper.jar").exists())


@contextlib.contextmanager
def running_cluster(
    tmp_dir: str | Path,
    shards: int = 2,
    replicas: int = 2,
    keepers: int = 3,
    *,
    server: bool = False,
) -> Iterator[Doc]:
    """Up a cluster in tmp_dir and yield its document; always down at exit, even when
    up failed half-way (whatever it started is on record in cluster.json)."""
    try:
        yield up(tmp_dir, shards, replicas, keepers, server=server)
    finally:
        if (Path(tmp_dir) / DOC_NAME).exists():
            down(tmp_dir)
