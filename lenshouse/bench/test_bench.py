"""The bench harness end to end at tiny scale: every scenario runs, the report
files appear, and the numbers are positive and consistent. No speed is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import psutil
import pytest

from lenshouse.bench import peers
from lenshouse.bench.commands import SCENARIOS, run_bench
from lenshouse.bench.common import BenchConfig
from lenshouse.bench.ingest import _shift_text, _text_bodies
from lenshouse.bench.prepare import Dataset, chunks
from lenshouse.cluster import prometheus as prom_testing
from lenshouse.ingest.formats import decode_json, decode_line_protocol
from lenshouse.rollup.tiers import TIERS


def _ordered(lat: dict) -> bool:
    return 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_text_bodies_move_on_in_time_without_changing_anything_else() -> None:
    start = 1_767_225_600_000
    for fmt, decode, shape in (
        ("json", decode_json, "generator"),
        ("lineproto", decode_line_protocol, "generator"),
        ("json", decode_json, "float"),
        ("json_points", decode_json, "float"),
        ("lineproto", decode_line_protocol, "float"),
    ):
        body, n = _text_bodies(fmt, 3, 50, start, first_id=1, shape=shape)[4]
        a = decode(body, "t")
        b = decode(_shift_text(fmt, body, start, 7), "t")
        assert len(a) == len(b) == n == 150
        assert (b.ts - a.ts == 70_000).all()
        assert (a.sensor == b.sensor).all() and (a.value == b.value).all()
        if shape == "float":  # full precision: 17 significant digits survive
            assert len({round(v, 6) for v in a.value.tolist()}) > 100


def test_chunks_cover_the_dataset_once() -> None:
    ds = Dataset("x", "default", 5, 3, 10, 1_767_225_600_000, 250)
    batches = list(chunks(ds, chunk_points=1000))
    assert sum(len(b) for b in batches) == ds.points == 7500
    keys = {(int(s), int(t)) for b in batches for s, t in zip(b.sensor, b.ts)}
    assert len(keys) == ds.points
    assert min(t for _, t in keys) == ds.start_ms and max(t for _, t in keys) < ds.end_ms
    assert {s for s, _ in keys} == set(ds.ids)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    base = tmp_path_factory.mktemp("bench")
    out = base / "out"
    run_bench(list(SCENARIOS), BenchConfig.tiny(1), data=base / "data", out=out)
    return json.loads((out / "bench-report.json").read_text()), out


def test_report_files(report) -> None:
    doc, out = report
    for name in ("bench-report.json", "bench-report.md", "lens-latency.png", "ingest-rate.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "bench-report.md").read_text()
    assert "## Targets" in md and "## Ingest" in md and "## Storage" in md
    assert set(SCENARIOS) <= set(doc)
    assert {t["id"] for t in doc["targets"]} == {"1", "2", "3", "4", "5", "burst"}
    assert all(t["pass"] in (True, False, None) for t in doc["targets"])


def test_ingest_counts_every_point(report) -> None:
    ing = report[0]["ingest"]
    c = ing["ceiling"]
    assert c["rows"] == c["rows_in_table"] > 0 and c["rows_per_s"] > 0
    for fmt in ("arrow", "json", "lineproto", "lineproto_float", "json_float", "json_points_float"):
        d = ing[fmt]
        assert d["drained"], fmt
        assert d["points_sent"] == d["points_accepted"] == d["points_loaded"] > 0, fmt
        assert d["batches"] > 0 and not d["errors"]
        assert 0 < d["end_to_end_per_s"] <= d["accepted_per_s"]
        assert d["timeline"][-1]["loaded"] == d["points_loaded"]
    assert ing["ratio"] == pytest.approx(ing["arrow"]["end_to_end_per_s"] / c["rows_per_s"])
    v = ing["ceiling_with_rollups"]
    assert v["rollups"] and not c["rollups"]
    assert v["rows"] == v["rows_in_table"] > 0 and v["rows_per_s"] > 0
    assert v["rows_in_tiers"] == [v["rows"]] * len(TIERS) and c["rows_in_tiers"] == []
    assert ing["ratio_to_rollup_ceiling"] == pytest.approx(
        ing["arrow"]["end_to_end_per_s"] / v["rows_per_s"]
    )


def test_lens_numbers(report) -> None:
    lens = report[0]["lens"]
    for key in ("lens", "month"):
        wins = lens[key]["windows"]
        assert wins
        for w in wins.values():
            assert w["errors"] == 0 and w["requests"] > 0
            assert _ordered(w["latency_ms"])
            assert 0 < w["server_ms"]["p50"] <= w["latency_ms"]["max"]
            assert w["rows_read"]["p50"] > 0 and w["bound"] > 0
            assert 0 < w["buckets"] <= 2500
            assert w["points_in_window_mean"] > 0
    # reading system.events counts its own few hundred rows, nothing else moves it
    assert 0 <= lens["lens"]["counter_noise_rows"] < 2000


def test_mixed_concurrency_storage(report) -> None:
    doc = report[0]
    for key in ("mixed", "concurrency"):
        d = doc[key]
        assert d["requests"] > 0 and d["errors"] == 0, d["error_kinds"]
        assert _ordered(d["latency_ms"])
    m = doc["mixed"]
    assert m["ingest"]["points_sent"] > 0 and m["ingest"]["drained"]
    assert m["ingest"]["points_loaded"] == m["ingest"]["points_sent"]
    assert m["timeline"][-1]["loaded"] == m["ingest"]["points_sent"]
    st = doc["storage"]
    raw = st["after_optimize"]["raw"]
    assert raw["rows"] == st["points"] > 0
    assert 0 < st["raw_bytes_per_point"] < st["total_bytes_per_point"]
    for tier, next_tier in zip(list(st["after_optimize"])[1:], list(st["after_optimize"])[2:]):
        assert st["after_optimize"][tier]["rows"] >= st["after_optimize"][next_tier]["rows"] > 0
    fl = st["float"]
    assert fl["after_optimize"]["raw"]["rows"] == fl["points"] > 0
    assert fl["raw_bytes_per_point"] > st["raw_bytes_per_point"]  # doubles cost more than codes
    for d in (st, fl):
        assert d["data_dir"]["bytes"] >= d["data_dir"]["store_bytes"] > 0


def test_burst_measures_lenses_during_and_after_and_counts_parts(report) -> None:
    b = report[0]["burst"]
    for key in ("quiet", "single_during", "single_after", "clients_after"):
        assert b[key]["requests"] > 0 and b[key]["errors"] == 0, key
        assert _ordered(b[key]["latency_ms"]), key
    for key in ("burst1", "burst2"):
        d = b[key]
        assert d["points_per_s"] > 0 and d["timeline"], key
        assert all(s["parts_all"] >= s["parts_raw"] > 0 for s in d["timeline"])
        assert d["max_parts_all"] == max(s["parts_all"] for s in d["timeline"])
    rows = [t for t in report[0]["targets"] if t["id"] == "burst"]
    assert len(rows) == 3 and all(isinstance(t["pass"], bool) for t in rows)


def test_page_scenario_reports_the_pages_own_draw_times(tmp_path) -> None:
    out = tmp_path / "out"
    run_bench(["page"], BenchConfig.tiny(1), data=tmp_path / "data", out=out)
    doc = json.loads((out / "bench-report.json").read_text())
    pg = doc["page"]
    assert pg["first_draw_ms"]["n"] == 2 and pg["redraw_ms"]["n"] == 2 * 5
    for key in ("first_draw_ms", "redraw_ms"):
        d = pg[key]
        assert 0 < d["p50"] <= d["p95"] <= d["max"], key
    rows = [t for t in doc["targets"] if t["id"] == "page"]
    assert len(rows) == 2 and all(isinstance(t["pass"], bool) for t in rows)
    assert "lens page, 10 sensors × 2500 points" in (out / "bench-report.md").read_text()


@pytest.mark.skipif(
    not (peers.installed("victoriametrics") and peers.installed("influxdb")),
    reason="VictoriaMetrics and InfluxDB not installed (scripts/install-system-deps)",
)
def test_peers_scenario_gives_every_server_the_same_points(tmp_path) -> None:
    out = tmp_path / "out"
    cfg = BenchConfig.tiny(1)
    run_bench(["peers"], cfg, data=tmp_path / "data", out=out)
    doc = json.loads((out / "bench-report.json").read_text())
    pe = doc["peers"]
    sent = cfg.peers_clients * cfg.peers_data_s * cfg.format_batch_sensors * 1000
    assert set(pe["servers"]) == set(peers.PEERS)
    for name, s in pe["servers"].items():
        ing, lens = s["ingest"], s["lens"]
        # Each server holds every point sent, by its own count.
        assert ing["points"] == ing["stored"] == sent and not ing["errors"], name
        assert 0 < ing["points_per_s"] <= ing["acknowledged_per_s"], name
        # 240 ms buckets over the window: VictoriaMetrics' points fall at the
        # buckets' ends (one fewer), the others' at their starts.
        expect = math.ceil(lens["window_s"] * 1000 / peers.STEP_MS)
        assert lens["buckets"] in (expect, expect - 1), name
        assert _ordered(lens["single_ms"]) and lens["concurrent_ms"]["p50"] > 0, name
        assert s["disk"]["data_dir_bytes"] > 0, name
    assert pe["servers"]["lenshouse"]["disk"]["store_bytes_per_point"] > 0
    assert "sensor,id=1,kind=vibration,line=3,site=A value=" in pe["body"]["first_line"]
    rows = [t for t in doc["targets"] if t["id"] == "peers"]
    assert len(rows) == 4 and all(name in rows[0]["measured"] for name in peers.PEERS)


@pytest.mark.skipif(not prom_testing.available(), reason="Debian's prometheus is not installed")
def test_prometheus_scenario_counts_what_it_sent(tmp_path) -> None:
    out = tmp_path / "out"
    cfg = BenchConfig.tiny(1)
    run_bench(["prometheus"], cfg, data=tmp_path / "data", out=out)
    doc = json.loads((out / "bench-report.json").read_text())
    pr = doc["prometheus"]
    syn, real, q = pr["synthetic"], pr["real"], pr["query"]
    sent = cfg.prom_clients * cfg.prom_bodies * cfg.prom_series * cfg.prom_samples
    assert syn["samples"] == sent and not syn["errors"]
    assert 0 < syn["samples_per_s"] <= syn["acknowledged_per_s"]
    # The exporter's gauges, its counter and Prometheus' own 5 series per scrape.
    assert real["samples_per_s"] > 0 and real["prometheus_failed"] == 0
    # Every 2 s window of the 10 series holds points: one value per series and step.
    windows = int(q["window_s"] * 1000 // q["step_ms"]) + 1
    assert q["points"] == q["series"] * windows
    assert _ordered(q["query_range"]) and _ordered(q["lens"])
    rows = [t for t in doc["targets"] if t["id"] == "prometheus"]
    assert len(rows) == 3


def test_brief_runs_the_public_commands_and_reports_what_they_did(tmp_path) -> None:
    """``bench-brief`` at a tiny scale on an embedded server of its own: the
    generator's points are loaded, the load users' lenses are counted per
    window, and the CPU of each process role and the lag are reported."""
    out, doc = _brief(tmp_path, users=3, duration=6, warmup=4, port=18391)
    assert doc["mode"] == "embedded" and doc["offered_points_per_s"] == 2000
    assert doc["lenses"]["requests"] > 0 and doc["lenses"]["errors"] == 0, doc["errors"]
    assert sum(w["requests"] for w in doc["by_window"].values()) == doc["lenses"]["requests"]
    assert 0 < doc["loaded_points_per_s"] <= 2000 * 1.5
    assert {"server", "generator", "load"} <= set(doc["cpu_core_s"])
    assert doc["lens_core_ms_per_lens"] > 0
    # each lens's request-thread CPU as the server said it, per window and in all
    assert all(w["server_cpu_ms_per_lens"] > 0 for w in doc["by_window"].values())
    assert doc["lenses"]["server_cpu_ms_per_lens"] > 0
    assert doc["lag_s"]["max"] is not None
    # the whole machine's CPU over the span holds at least the processes measured in it
    m = doc["machine"]
    assert m["cores"] == psutil.cpu_count() and doc["lenses_yielded"] is None
    assert m["busy"] >= 0.9 * sum(doc["cpu_cores"].values()) - 0.05, (m, doc["cpu_cores"])
    assert 0 <= m["idle"] <= m["cores"] and m["busy"] + m["idle"] <= m["cores"] * 1.1
    text = (out / "brief.md").read_text()
    assert text.startswith("# The brief's workload, embedded") and "The machine:" in text


def test_brief_with_nobody_reading_measures_the_write_path_over_the_span(tmp_path) -> None:
    """``--users 0``: the same span is measured with no load users, and the CPU
    per 1M points is reported per role."""
    out, doc = _brief(tmp_path, users=0, duration=4, warmup=2, port=18392)
    assert doc["seconds"] >= 4 and doc["lenses"]["requests"] == 0
    assert 0 < doc["loaded_points_per_s"] <= 2000 * 1.5
    assert "load" not in doc["cpu_core_s"] and doc["cpu_core_s_per_1m_points"]["server"] > 0
    assert "(nobody read)" in (out / "brief.md").read_text()


def _brief(tmp_path, users: int, duration: int, warmup: int, port: int):
    """``bench-brief`` at a tiny scale on an embedded server of its own: its
    output directory and report."""
    from typer.testing import CliRunner

    from lenshouse.cli import app

    out = tmp_path / "brief"
    args = ["bench-brief", "--sensors", "20", "--rate-hz", "100", "--users", str(users),
            "--duration", str(duration), "--warmup", str(warmup), "--out", str(out),
            "--data", str(tmp_path / "data"), "--port", str(port)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "brief.json").read_text())
