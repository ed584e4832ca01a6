"""The capacity plan's arithmetic, retention's caps on it, and the command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lenshouse.cli import app as cli
from lenshouse.deploy import capacity as c


def _by_name(lines: list[c.Line]) -> dict[str, float]:
    return {x.what: x.value for x in lines}


def test_disk_follows_the_rate_the_cells_and_retention() -> None:
    month = _by_name(c.plan(c.Fleet(1000, 1000, 30), shards=2, replicas=2))
    raw = 1000 * 1000 * 30 * 86_400 * c.RAW_BYTES["adc16"]
    assert month["raw"] == pytest.approx(raw)
    assert month["100ms"] == pytest.approx(1000 * 30 * 864_000 * c.CELL_BYTES["100ms"])
    total = sum(month[s] for s in ("raw", "100ms", "1s", "10s", "1m", "10m", "1h"))
    assert month["disk per ClickHouse server"] == pytest.approx(total / 2)
    assert month["disk, whole cluster"] == pytest.approx(total * 2)
    # A year: raw points are kept 30 days, 100 ms cells 90, 1 s cells 365.
    year = _by_name(c.plan(c.Fleet(1000, 1000, 365), shards=2, replicas=2))
    assert year["raw"] == pytest.approx(month["raw"])
    assert year["100ms"] == pytest.approx(month["100ms"] * 3)
    assert year["1s"] == pytest.approx(month["1s"] * 365 / 30)
    floats = _by_name(c.plan(c.Fleet(1000, 1000, 30, "float"), 2, 2))
    assert floats["raw"] / month["raw"] == pytest.approx(7.30 / 1.688)
    embedded = _by_name(c.plan(c.Fleet(100, 1000, 1), shards=1, replicas=1))
    assert embedded["memory: head"] == 100 * 1000 * 65 * 20
    assert "CPU: clickhouse" not in embedded


def test_the_command_prints_every_figure_with_its_source() -> None:
    r = CliRunner().invoke(cli, ["capacity", "--sensors", "1000", "--rate-hz", "1000",
                                 "--days", "30", "--shards", "2", "--replicas", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "disk per ClickHouse server" in r.output and "2.32 TB" in r.output
    assert "bench storage" in r.output
    bad = CliRunner().invoke(cli, ["capacity", "--values", "int8"])
    assert bad.exit_code == 2
