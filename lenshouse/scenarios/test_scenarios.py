"""The fault-injection scenarios, at test scale, against real server processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenshouse.scenarios import faults
from lenshouse.scenarios.runner import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["replay", "crash", "late"])
def test_scenario_verdict_is_exact(name: str, tmp_path: Path) -> None:
    v = run(name, tmp_path / "data", small=True, seed=1, say=lambda *_: None)
    print(v.line(), *v.notes, sep="\n  ")
    assert v.lost == 0 and v.dup == 0 and v.wrong == 0, v.line()
    assert v.checks_ok == v.checks, v.notes
    assert v.stored == v.distinct > 0
    assert v.sent > v.distinct if name == "replay" else v.sent >= v.distinct
    if name == "crash":
        assert "5 of 5 kills hit a running stream" in v.notes[1], v.notes


def test_the_partition_finds_cgroup_v2_where_the_host_mounts_it() -> None:
    """Pure cgroup v2 hosts mount it at /sys/fs/cgroup, hybrid ones at
    .../unified; a cut process goes back to the group it came from."""
    pure = (
        "sysfs /sys sysfs rw 0 0\n"
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
    )
    hybrid = (
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
    )
    assert faults.cgroup2_mount(pure) == Path("/sys/fs/cgroup")
    assert faults.cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    assert faults.cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n") is None
    assert faults.cgroup_of("0::/system.slice/clickhouse.service\n") == (
        "/system.slice/clickhouse.service"
    )
    assert faults.cgroup_of("4:memory:/x\n0::/\n") == "/"
    assert faults.cgroup_of("4:memory:/x\n") == "/"
