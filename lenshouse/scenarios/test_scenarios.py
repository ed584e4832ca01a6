"""The fault-injection scenarios, at test scale, against real server processes."""

from __future__ import annotations

from pathlib import Path

import pytest

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
