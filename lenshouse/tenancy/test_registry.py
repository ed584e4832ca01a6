"""The token registries: in a data directory's file and in a real keeper, and
the ``lenshouse tenant`` commands over them."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lenshouse.cluster import record
from lenshouse.cluster.testing import cluster_available
from lenshouse.coordination.zk import Paths, connect
from lenshouse.tenancy.keeper import KeeperRegistry
from lenshouse.tenancy.registry import ADMIN, FileRegistry, TenancyError


def _exercise(reg, other) -> None:
    """``reg`` writes, ``other`` (another process's view of the same store) reads."""
    a1 = reg.create("alpha")
    a2 = reg.create("alpha")
    b = reg.create("beta")
    admin = reg.create(ADMIN)
    deadline = time.monotonic() + 5
    while other.grant(admin) is None and time.monotonic() < deadline:  # the last made
        time.sleep(0.1)
    assert [other.grant(t) for t in (a1, a2, b, admin)] == ["alpha", "alpha", "beta", ADMIN]
    assert other.grant(a1 + "x") is None and other.grant("") is None
    assert sorted(other.tenants()) == sorted(["alpha", "beta", ADMIN])
    first = next(r for r in reg.tenants()["alpha"] if a1.startswith(f"lh_{r.id}_"))
    assert reg.revoke("alpha", first.id) == 1
    with pytest.raises(TenancyError, match="no token"):
        reg.revoke("alpha", first.id)
    with pytest.raises(TenancyError, match="tenant name"):
        reg.create("no spaces")
    deadline = time.monotonic() + 5
    while other.grant(a1) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert other.grant(a1) is None and other.grant(a2) == "alpha"
    assert reg.revoke("beta") == 1 and reg.revoke("beta") == 0
    deadline = time.monotonic() + 5
    while other.grant(b) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert other.grant(b) is None and other.grant(admin) == ADMIN


def test_the_file_registry_is_shared_through_its_file(tmp_path: Path) -> None:
    _exercise(FileRegistry(tmp_path), FileRegistry(tmp_path))


def test_a_damaged_tenants_file_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "tenants.json").write_text("{not json")
    with pytest.raises(TenancyError, match=r"tenants\.json"):
        FileRegistry(tmp_path)


@pytest.fixture
def keepers(cluster: dict) -> Iterator[tuple]:
    if not cluster_available():
        pytest.skip("ZooKeeper not installed")
    hosts = record.keeper_hosts(cluster)
    paths = Paths(f"t_{uuid.uuid4().hex[:10]}")
    a, b = connect(hosts), connect(hosts)
    try:
        yield KeeperRegistry(a, paths), KeeperRegistry(b, paths)
    finally:
        a.delete(paths.root, recursive=True)
        for zk in (a, b):
            zk.stop()
            zk.close()


def test_the_keeper_registry_is_shared_through_watches(keepers) -> None:
    _exercise(*keepers)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lenshouse.cli", "tenant", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_tenant_commands(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path)]
    made = _cli("create", "alpha", *data)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("lh_") and "shown once" in made.stderr
    assert FileRegistry(tmp_path).grant(token) == "alpha"
    again = _cli("create", "alpha", *data)
    assert again.returncode == 2 and "exists" in again.stderr
    unknown = _cli("token", "gamma", *data)
    assert unknown.returncode == 2 and "no tenant 'gamma'" in unknown.stderr
    second = _cli("token", "alpha", *data).stdout.strip()
    listed = _cli("list", *data)
    assert listed.returncode == 0 and token not in listed.stdout and "alpha" in listed.stdout
    token_id = token.split("_")[1]
    assert token_id in listed.stdout
    gone = _cli("revoke", "alpha", "--id", token_id, *data)
    assert gone.returncode == 0 and "revoked 1" in gone.stderr
    reg = FileRegistry(tmp_path)
    assert reg.grant(token) is None and reg.grant(second) == "alpha"
    bad = _cli("create", "bad name", *data)
    assert bad.returncode == 2 and "tenant name" in bad.stderr
    admin = _cli("admin", *data).stdout.strip()
    assert FileRegistry(tmp_path).grant(admin) == ADMIN
