"""The cluster fault matrix at small scale (5 s faults, 10,000 points/s, 4
lens users) on the test cluster's whole topology: every fault must lose,
double and alter nothing, and leave lenses exact. The report is written and
its plots rendered, as ``lenshouse scenario cluster --all`` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenshouse.cluster.testing import cluster_available
from lenshouse.scenarios import cluster as scenarios
from lenshouse.scenarios import cluster_report
from lenshouse.scenarios.faults import FAULTS, iptables_works

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cluster_available(), reason="ClickHouse/ZooKeeper not installed"),
]

VERDICTS: list[scenarios.ClusterVerdict] = []


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault(name: str, topology: dict) -> None:
    if FAULTS[name].needs_iptables and not iptables_works():
        pytest.skip("needs iptables and cgroup v2 (root)")
    v = scenarios.run_fault(Path(topology["dir"]), FAULTS[name], scenarios.SMALL, say=print)
    VERDICTS.append(v)
    assert v.ok, v.line() + " " + "; ".join(v.notes)
    assert v.lost == v.dup == v.wrong == 0 and v.stored == v.distinct
    assert v.timeline.acks and v.timeline.fault[1] >= v.timeline.fault[0]
    exact, checked, inside = v.live  # lenses of settled data, checked while it ran
    assert checked > 0 and exact == checked
    fault = FAULTS[name]
    if not fault.instant and fault.lenses_answer:
        assert inside > 0, "no lens was checked while the fault was on"


def test_report(tmp_path: Path) -> None:
    if not VERDICTS:
        pytest.skip("no fault ran")
    path = cluster_report.write(VERDICTS, scenarios.SMALL, tmp_path)
    text = path.read_text()
    for v in VERDICTS:
        assert f"| {v.name} |" in text and v.line() in text
        png = tmp_path / f"cluster-{v.name}.png"
        assert png.stat().st_size > 10_000, png


@pytest.mark.parametrize(("users", "checks", "ok"), [(0, [], True), (4, [], False),
                                                     (4, [(1.0, True)], True),
                                                     (4, [(1.0, False)], False)])  # fmt: skip
def test_a_run_with_users_needs_live_checks_and_one_without_asks_none(users, checks, ok) -> None:
    tl = scenarios.Timeline(checks=checks)
    v = scenarios.ClusterVerdict("f", 10, 10, 10, 0, 0, 0, 5, 5, timeline=tl, users=users)
    assert v.ok is ok
