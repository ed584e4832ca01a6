"""The bench report: targets with pass/fail, a table on the terminal,
``bench-report.json`` (everything measured), ``bench-report.md`` (a summary)
and PNG plots (latency percentiles per window, ingest rate and lag over time).

A target passes only on the measured numbers of this run, against the
project's stated targets (docs/performance.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from lenshouse.bench.common import clean
from lenshouse.bench.console import console
from lenshouse.generators.load import parse_mix

INGEST_MIN_RATE = 3_200_000
INGEST_MIN_RATIO = 0.8  # of the bare insert ceiling, measured in the same run
LENS_P50_MS = 15.0
LENS_P95_MS = 50.0
MIXED_P95_MS = 200.0
MIXED_P99_MS = 500.0
MIXED_MAX_LAG_S = 2.0
MIXED_MIN_INGEST_SHARE = 0.95  # "ingest keeps up"
RAW_MAX_BYTES_PER_POINT = 1.7
ROLLUP_MAX_SHARE = 0.10
FLAT_FACTOR = 2.0  # "latency does not grow with the window": 31 d within 2× of 1 h
CONCURRENCY_P50_MS = 100.0
# Full-precision floats: the best peer's bytes a point (VictoriaMetrics, lossy).
FLOAT_MAX_BYTES_PER_POINT = 5.8
DATA_DIR_MAX_RATIO = 1.2  # the whole data directory against the store's parts, at rest
# Lenses within 10 s after a 30 s burst of maximal ingest.
BURST_SINGLE_P95_MS = 50.0
BURST_CLIENTS_P50_MS = 150.0
BURST_MAX_PARTS = 3000  # ClickHouse refuses inserts at parts_to_throw_insert (3000 a partition)
# Full-precision float payloads from several clients (the peers' comparison),
# with the rate each format must reach end to end.
FLOAT_NAMES = {
    "lineproto_float": "line protocol, floats, 4 tags",
    "json_float": "JSON columns, floats",
    "json_points_float": "JSON points, floats",
}
FLOAT_MIN_RATE = {"lineproto_float": 1_500_000, "json_float": 2_000_000,
                  "json_points_float": 2_000_000}  # fmt: skip
PAGE_DRAW_MS = 100.0  # the lens page: 10 sensors x 2500 points, drawn
# Next to the peers: line protocol end to end, and 10 sensors x 10 min at a
# 240 ms step (no tier divides it), 1 client and 20.
LINE_MIN_PER_S = FLOAT_MIN_RATE["lineproto_float"]
PEERS_STEP_P50_MS = 30.0
PEERS_STEP_CLIENTS_P50_MS = 300.0


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M/s"


def _ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.0f} ms" if x >= 10 else f"{x:.1f} ms"


def _views_line(ing: dict) -> list[str]:
    v = ing.get("ceiling_with_rollups")
    if not v:
        return []
    return [
        "",
        f"The same inserts with the rollup tiers kept as lenshouse keeps them:"
        f" {v['rows_per_s']:,.0f} rows/s of insert time"
        f" ({v['rows_per_s'] / ing['ceiling']['rows_per_s']:.2f} × bare)."
        f" Arrow end to end / that = **{ing['ratio_to_rollup_ceiling']:.2f}**.",
    ]


def evaluate(results: dict) -> list[dict]:
    """One row per target: what was asked, what was measured, pass/fail/info."""
    rows: list[dict] = []
    ing = results.get("ingest")
    if ing:
        rate = ing["arrow"]["end_to_end_per_s"]
        ceiling = ing["ceiling"]["rows_per_s"]
        ratio = ing["ratio"]
        rows.append(
            {
                "id": "1",
                "name": "ingest, Arrow over HTTP, end to end",
                "target": f"≥ {_fmt_rate(INGEST_MIN_RATE)} and ≥ {INGEST_MIN_RATIO} × ceiling",
                "measured": f"{_fmt_rate(rate)} = {ratio:.2f} × ceiling {_fmt_rate(ceiling)}",
                "pass": rate >= INGEST_MIN_RATE and ratio >= INGEST_MIN_RATIO,
            }
        )
        views = ing.get("ceiling_with_rollups")
        if views:
            rows.append(
                {
                    "id": "1",
                    "name": "ingest vs chDB inserting with the rollups",
                    "target": "reported",
                    "measured": f"{ing['ratio_to_rollup_ceiling']:.2f} × "
                    f"{_fmt_rate(views['rows_per_s'])}"
                    f" ({views['rows_per_s'] / ceiling:.2f} × bare)",
                    "pass": None,
                }
            )
        for fmt in ("json", "lineproto", *FLOAT_NAMES):
            if fmt in ing:
                rows.append(
                    {
                        "id": "1",
                        "name": f"ingest, {FLOAT_NAMES.get(fmt, fmt)} over HTTP, end to end",
                        "target": f"≥ {_fmt_rate(FLOAT_MIN_RATE[fmt])}"
                        if fmt in FLOAT_MIN_RATE
                        else "reported",
                        "measured": _fmt_rate(ing[fmt]["end_to_end_per_s"]),
                        "pass": ing[fmt]["end_to_end_per_s"] >= FLOAT_MIN_RATE[fmt]
                        if fmt in FLOAT_MIN_RATE
                        else None,
                    }
                )
    lens = results.get("lens")
    if lens:
        for key, label in (("lens", "1 kHz"), ("lens_m4", "1 kHz with M4"), ("month", "10 Hz")):
            if key not in lens:
                continue
            wins = lens[key]["windows"]
            for name, w in wins.items():
                if "rows_read" not in w:
                    rows.append(
                        {
                            "id": "2",
                            "name": f"lens {label} {name}",
                            "target": "answers",
                            "measured": f"{w['errors']} errors",
                            "pass": False,
                        }
                    )
                    continue
                lat = w["latency_ms"]
                alat = w.get("arrow", {}).get("latency_ms", {})
                rows.append(
                    {
                        "id": "2",
                        "name": f"lens {label}, 10 sensors, {name}",
                        "target": f"p50 ≤ {LENS_P50_MS:g} ms, p95 ≤ {LENS_P95_MS:g} ms,"
                        " rows read ≤ 50 × buckets × sensors",
                        "measured": f"JSON p50 {_ms(lat['p50'])} p95 {_ms(lat['p95'])};"
                        f" Arrow p50 {_ms(alat.get('p50'))} p95 {_ms(alat.get('p95'))};"
                        f" rows {w['rows_read']['p50']:,.0f} ≤ {w['bound']:,}",
                        "pass": w["within_bound"]
                        and w["errors"] == 0
                        and lat["p50"] <= LENS_P50_MS
                        and lat["p95"] <= LENS_P95_MS,
                    }
                )
        wins = lens["month"]["windows"]
        names = [n for n in wins if "latency_ms" in wins[n] and wins[n]["requests"]]
        if len(names) >= 2:
            first, last = wins[names[0]]["latency_ms"], wins[names[-1]]["latency_ms"]
            rows.append(
                {
                    "id": "2",
                    "name": f"lens latency flat from {names[0]} to {names[-1]} (10 Hz data)",
                    "target": f"p50({names[-1]}) ≤ {FLAT_FACTOR:g} × p50({names[0]})",
                    "measured": f"{_ms(last['p50'])} vs {_ms(first['p50'])}",
                    "pass": last["p50"] <= FLAT_FACTOR * first["p50"],
                }
            )
    mixed = results.get("mixed")
    if mixed:
        lat = mixed["latency_ms"]
        ingm = mixed["ingest"]
        rows.append(
            {
                "id": "3",
                "name": f"mixed: {mixed['config']['users']} users + live ingest",
                "target": f"p95 ≤ {MIXED_P95_MS:g} ms, p99 ≤ {MIXED_P99_MS:g} ms, 0 errors,"
                f" ingest ≥ {MIXED_MIN_INGEST_SHARE:.0%} of {_fmt_rate(ingm['target_per_s'])},"
                f" lag ≤ {MIXED_MAX_LAG_S:g} s",
                "measured": f"p95 {_ms(lat['p95'])} p99 {_ms(lat['p99'])},"
                f" {mixed['errors']} errors,"
                f" ingest {_fmt_rate(ingm['loaded_per_s_during_users'])},"
                f" max lag {ingm['max_lag_s']:.2f} s",
                "pass": mixed["errors"] == 0
                and lat["p95"] <= MIXED_P95_MS
                and lat["p99"] <= MIXED_P99_MS
                and ingm["loaded_per_s_during_users"]
                >= MIXED_MIN_INGEST_SHARE * ingm["target_per_s"]
                and ingm["max_lag_s"] <= MIXED_MAX_LAG_S,
            }
        )
    st = results.get("storage")
    if st:
        rows.append(
            {
                "id": "4",
                "name": "storage per point (after OPTIMIZE FINAL)",
                "target": f"raw ≤ {RAW_MAX_BYTES_PER_POINT} B, rollups ≤ {ROLLUP_MAX_SHARE:.0%}"
                " of raw, lossless",
                "measured": f"raw {st['raw_bytes_per_point']:.2f} B + rollups"
                f" {st['rollup_bytes_per_point']:.2f} B = {st['total_bytes_per_point']:.2f} B",
                "pass": st["raw_bytes_per_point"] <= RAW_MAX_BYTES_PER_POINT
                and st["rollup_bytes_per_point"] <= ROLLUP_MAX_SHARE * st["raw_bytes_per_point"],
            }
        )
        fl = st.get("float")
        if fl:
            rows.append({
                "id": "4",
                "name": "storage per point, full-precision floats (after OPTIMIZE FINAL)",
                "target": f"total ≤ {FLOAT_MAX_BYTES_PER_POINT} B (the best peer's), lossless",
                "measured": f"raw {fl['raw_bytes_per_point']:.2f} B + rollups"
                f" {fl['rollup_bytes_per_point']:.2f} B = {fl['total_bytes_per_point']:.2f} B"
                " (entropy of the noise alone: 5.84 B)",
                "pass": fl["total_bytes_per_point"] <= FLOAT_MAX_BYTES_PER_POINT,
            })  # fmt: skip
        for label, d in (("16-bit", st), ("floats", fl)):
            if not d or "data_dir" not in d:
                continue
            dd = d["data_dir"]
            rows.append({
                "id": "4",
                "name": f"data directory / store files, {d['settle_s']:.0f} s after ingest"
                f" ({label})",
                "target": f"≤ {DATA_DIR_MAX_RATIO}×",
                "measured": f"{dd['ratio']:.2f}× ({dd['bytes']:,} / {dd['store_bytes']:,} B;"
                f" log {dd['log_bytes']:,} B)",
                "pass": dd["ratio"] <= DATA_DIR_MAX_RATIO,
            })  # fmt: skip
    cc = results.get("concurrency")
    if cc:
        lat = cc["latency_ms"]
        rows.append(
            {
                "id": "5",
                "name": f"concurrency: {cc['config']['users']} clients, no think time",
                "target": f"0 errors, p50 ≤ {CONCURRENCY_P50_MS:.0f} ms",
                "measured": f"p50 {_ms(lat['p50'])} p95 {_ms(lat['p95'])},"
                f" {cc['errors']} errors, {cc['throughput_rps']:.1f} req/s",
                "pass": cc["errors"] == 0 and lat["p50"] <= CONCURRENCY_P50_MS,
            }
        )
    rows += _burst_rows(results.get("burst"))
    rows += _peers_rows(results.get("peers"))
    rows += _prometheus_rows(results.get("prometheus"))
    mo = results.get("month")
    if mo:
        n = mo["dataset"]["points"]
        for when in ("before", "after"):
            for name, w in mo[f"lens_{when}"]["windows"].items():
                lat = w["latency_ms"]
                rows.append({
                    "id": "month",
                    "name": f"month of {n:,} points, lens {name} ({when} retention)",
                    "target": "rows read ≤ 50 × buckets × sensors",
                    "measured": f"p50 {_ms(lat.get('p50'))} p95 {_ms(lat.get('p95'))};"
                    f" rows {w.get('rows_read', {}).get('p50', float('nan')):,.0f}"
                    f" ≤ {w.get('bound', 0):,}",
                    "pass": bool(w.get("within_bound")) and w["errors"] == 0,
                })  # fmt: skip
        ret = mo["retention"]
        rows.append({
            "id": "month",
            "name": "retention over the month (raw kept 7 d)",
            "target": "lens counts = points written, before and after",
            "measured": f"{ret['dropped_partitions']} partitions ({ret['dropped_bytes']:,} B)"
            f" dropped in {ret['seconds']:.1f} s; counted {mo['counted_before']:,} /"
            f" {mo['counted_after']:,} of {n:,}",
            "pass": mo["counted_before"] == n == mo["counted_after"],
        })  # fmt: skip
    pg = results.get("page")
    if pg:
        for key, label in (("first_draw_ms", "first draw (new chart)"), ("redraw_ms", "redraw")):
            d = pg[key]
            rows.append(
                {
                    "id": "page",
                    "name": f"lens page, 10 sensors × 2500 points: {label}",
                    "target": f"p95 < {PAGE_DRAW_MS:.0f} ms",
                    "measured": f"p50 {_ms(d['p50'])} p95 {_ms(d['p95'])} max {_ms(d['max'])}"
                    f" ({d['n']} draws)",
                    "pass": d["p95"] < PAGE_DRAW_MS,
                }
            )
    return rows


def _burst_rows(b: dict | None) -> list[dict]:
    """Issue targets of the burst scenario (lenses after maximal ingest)."""
    if not b:
        return []
    one, after, clients = b["burst1"], b["single_after"], b["clients_after"]
    p95, p50 = after["latency_ms"]["p95"], clients["latency_ms"]["p50"]
    return [
        {
            "id": "burst",
            "name": f"single user, in the seconds after a {b['burst_seconds']} s burst"
            f" ({_fmt_rate(one['points_per_s'])} points/s)",
            "target": f"p95 ≤ {BURST_SINGLE_P95_MS:.0f} ms, 0 errors",
            "measured": f"p50 {_ms(after['latency_ms']['p50'])} p95 {_ms(p95)}"
            f" ({after['requests']} lenses, {after['errors']} errors); during the burst"
            f" p95 {_ms(b['single_during']['latency_ms']['p95'])}; quiet p50"
            f" {_ms(b['quiet']['latency_ms']['p50'])}",
            "pass": after["errors"] == 0 and p95 <= BURST_SINGLE_P95_MS,
        },
        {
            "id": "burst",
            "name": f"{clients['users']} clients, no think time, after a burst",
            "target": f"p50 ≤ {BURST_CLIENTS_P50_MS:.0f} ms, 0 errors",
            "measured": f"p50 {_ms(p50)} p95 {_ms(clients['latency_ms']['p95'])},"
            f" {clients['errors']} errors, {clients['throughput_rps']:.1f} req/s",
            "pass": clients["errors"] == 0 and p50 <= BURST_CLIENTS_P50_MS,
        },
        {
            "id": "burst",
            "name": "parts during and after the bursts",
            "target": f"bounded: ≤ {BURST_MAX_PARTS} active parts in all tables",
            "measured": f"max {max(one['max_parts_all'], b['burst2']['max_parts_all'])},"
            f" raw max {max(one['max_parts_raw'], b['burst2']['max_parts_raw'])};"
            f" lag ≤ {max(one['max_lag_s'], b['burst2']['max_lag_s']):.1f} s",
            "pass": max(one["max_parts_all"], b["burst2"]["max_parts_all"]) <= BURST_MAX_PARTS,
        },
    ]


def _peers_rows(pe: dict | None) -> list[dict]:
    """lenshouse next to VictoriaMetrics and InfluxDB on the same bytes (issue targets 1, 2, 4)."""
    if not pe:
        return []
    servers = {k: v for k, v in pe["servers"].items() if v.get("installed")}
    lh = servers.get("lenshouse")
    others = {k: v for k, v in servers.items() if k != "lenshouse"}
    if not lh:
        return []
    missing = [k for k, v in pe["servers"].items() if not v.get("installed")]
    note = f" ({', '.join(missing)} not installed)" if missing else ""

    def each(fn) -> str:
        return ", ".join(f"{k} {fn(v)}" for k, v in servers.items()) + note

    rate = lh["ingest"]["points_per_s"]
    best_rate = max([LINE_MIN_PER_S, *(v["ingest"]["points_per_s"] for v in others.values())])
    lens = lh["lens"]
    disk = lh["disk"]["data_dir_bytes_per_point"]
    best_disk = min((v["disk"]["data_dir_bytes_per_point"] for v in others.values()), default=None)
    width = f"{lens['window_s']:.0f} s"
    return [
        {
            "id": "peers",
            "name": f"line protocol, the same float bytes ({pe['clients']} clients)",
            "target": f"≥ {_fmt_rate(LINE_MIN_PER_S)} and ≥ every peer's rate",
            "measured": each(lambda v: _fmt_rate(v["ingest"]["points_per_s"])),
            "pass": rate >= best_rate,
        },
        {
            "id": "peers",
            "name": f"lens 10 sensors × {width}, {pe['step_ms']} ms buckets, 1 client",
            "target": f"lenshouse p50 ≤ {PEERS_STEP_P50_MS:.0f} ms",
            "measured": each(lambda v: _ms(v["lens"]["single_ms"]["p50"])),
            "pass": lens["single_ms"]["p50"] <= PEERS_STEP_P50_MS,
        },
        {
            "id": "peers",
            "name": f"the same lens, {lens['users']} clients, p50",
            "target": f"lenshouse p50 ≤ {PEERS_STEP_CLIENTS_P50_MS:.0f} ms",
            "measured": each(lambda v: _ms(v["lens"]["concurrent_ms"]["p50"])),
            "pass": lens["concurrent_ms"]["p50"] <= PEERS_STEP_CLIENTS_P50_MS,
        },
        {
            "id": "peers",
            "name": f"disk per point, whole data directory {lh['disk']['settle_s']:.0f} s after",
            "target": "≤ the best peer's (lenshouse lossless)",
            "measured": each(lambda v: f"{v['disk']['data_dir_bytes_per_point']:.2f} B"),
            "pass": None if best_disk is None else disk <= best_disk,
        },
    ]


def _prometheus_rows(pr: dict | None) -> list[dict]:
    """Figures the ecosystem issue asks to report; it sets no targets."""
    if not pr:
        return []
    syn, real, q = pr["synthetic"], pr["real"], pr["query"]
    rows = [
        {
            "id": "prometheus",
            "name": f"remote write, {syn['samples_per_body']:,} samples a body, until loaded",
            "target": "reported",
            "measured": f"{_fmt_rate(syn['samples_per_s'])} samples"
            f" (acknowledged {_fmt_rate(syn['acknowledged_per_s'])})",
            "pass": None,
        },
        {
            "id": "prometheus",
            "name": f"query_range {q['series']} series × {q['window_s'] / 3600:.2g} h,"
            f" step {q['step_ms'] / 1000:g} s, p50 / p95",
            "target": "reported",
            "measured": f"{_ms(q['query_range']['p50'])} / {_ms(q['query_range']['p95'])}"
            f" (lens on the grid {_ms(q['lens']['p50'])})",
            "pass": None,
        },
    ]
    if real.get("series"):
        rows.insert(
            1,
            {
                "id": "prometheus",
                "name": f"a real Prometheus remote-writing {real['series']:,} series each second",
                "target": "every sample received",
                "measured": f"{_fmt_rate(real['samples_per_s'])} samples,"
                f" {real['server_cores']:.2f} server cores,"
                f" {real['prometheus_failed']:.0f} failed",
                "pass": real["prometheus_failed"] == 0,
            },
        )
    return rows


def _verdict(p: bool | None) -> str:
    return "info" if p is None else ("PASS" if p else "FAIL")


def print_summary(targets: list[dict]) -> None:
    t = Table(title="lenshouse bench")
    for col in ("#", "what", "target", "measured", "verdict"):
        t.add_column(col, overflow="fold")
    for r in targets:
        v = _verdict(r["pass"])
        style = {"PASS": "green", "FAIL": "red", "info": "cyan"}[v]
        t.add_row(r["id"], r["name"], r["target"], r["measured"], f"[{style}]{v}[/{style}]")
    console.print(t)


# -- plots -----------------------------------------------------------------------


def _rates(timeline: list[dict], key: str, span: float = 2.0) -> tuple[list[float], list[float]]:
    """Rate of ``key`` over trailing ``span``-second windows (loads come ~1/s)."""
    ts, rs = [], []
    j = 0
    for b in timeline:
        while timeline[j]["t"] < b["t"] - span:
            j += 1
        a = timeline[j]
        if b["t"] - a["t"] >= span * 0.75:
            ts.append(b["t"])
            rs.append((b[key] - a[key]) / (b["t"] - a["t"]))
    return ts, rs


def plot_latency(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    lens = results.get("lens")
    if lens:
        panels.append(("single user, 10 sensors, 1 kHz data", lens["lens"]["windows"]))
        if "lens_m4" in lens:
            panels.append(("the same, with M4 points", lens["lens_m4"]["windows"]))
        panels.append(("single user, 10 sensors, 10 Hz data", lens["month"]["windows"]))
    if results.get("mixed"):
        panels.append(("mixed: users + live ingest", results["mixed"]["by_window"]))
    if results.get("concurrency"):
        panels.append(("concurrency, no think time", results["concurrency"]["by_window"]))
    panels = [(title, wins) for title, wins in panels if wins]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    from matplotlib.ticker import ScalarFormatter

    for ax, (title, wins) in zip(axes[0], panels):
        names = sorted(
            (n for n in wins if wins[n].get("latency_ms")), key=lambda n: parse_mix(n)[0].ms
        )
        qs = ("p50", "p95", "p99")
        width = 0.8 / len(qs)
        top = 1.0
        for i, q in enumerate(qs):
            vals = [wins[n]["latency_ms"].get(q) or 0.0 for n in names]
            top = max([top, *vals])
            bars = ax.bar([x + i * width for x in range(len(names))], vals, width, label=q)
            ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=7)
        ax.set_xticks([x + width for x in range(len(names))], names)
        ax.set_yscale("log")
        ax.set_ylim(1, top * 2)
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel("latency, ms (client)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_ingest(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    ing = results.get("ingest")
    if ing:
        panels.append(("ingest, Arrow over HTTP, flat out", ing["arrow"]["timeline"], ing))
    if results.get("mixed"):
        panels.append(("mixed: live ingest under lens load", results["mixed"]["timeline"], None))
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    for ax, (title, tl, ingest) in zip(axes[:, 0], panels):
        for key, label in (("accepted", "acknowledged (durable)"), ("loaded", "loaded (visible)")):
            ts, rs = _rates(tl, key, span=2.0 if ingest else 5.0)  # live: one batch a second
            ax.plot(ts, [r / 1e6 for r in rs], label=label, lw=1.2)
        if ingest:
            for key, ls, label in (
                ("ceiling", "--", "chDB bare insert ceiling"),
                ("ceiling_with_rollups", "-.", "chDB insert with rollups"),
            ):
                if key in ingest:
                    rate = ingest[key]["rows_per_s"] / 1e6
                    ax.axhline(rate, color="grey", ls=ls, lw=1, label=label)
            ax.axhline(INGEST_MIN_RATE / 1e6, color="red", ls=":", lw=1, label="target 3.2M/s")
        else:
            m = results["mixed"]
            ax.axvspan(m["users_started_s"], m["users_ended_s"], color="orange", alpha=0.1)
        ax.set_ylabel("million points / s")
        ax.set_xlabel("seconds")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        lag = ax.twinx()
        lag.plot([s["t"] for s in tl], [s["lag_s"] for s in tl], color="black", lw=0.8, alpha=0.6)
        lag.set_ylabel("ingest lag, s (black)")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- files -----------------------------------------------------------------------


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(results: dict, targets: list[dict], images: list[str]) -> str:
    meta = results.get("meta", {})
    out = [
        "# lenshouse bench report",
        "",
        f"- date: {meta.get('date', '')}",
        f"- command: `{meta.get('command', '')}`",
        f"- machine: {meta.get('machine', {})}",
        f"- code: {meta.get('git', {})}",
        "",
        "## Targets",
        "",
        _md_table(
            ["#", "what", "target", "measured", "verdict"],
            [
                [r["id"], r["name"], r["target"], r["measured"], _verdict(r["pass"])]
                for r in targets
            ],
        ),
    ]
    ing = results.get("ingest")
    if ing:
        rows = []
        for fmt in ("arrow", "json", "lineproto", *FLOAT_NAMES):
            if fmt in ing:
                d = ing[fmt]
                rows.append(
                    [
                        fmt,
                        f"{d['points_sent']:,}",
                        f"{d['send_seconds']:.1f}",
                        f"{d['accepted_per_s']:,.0f}",
                        f"{d['loaded_while_sending_per_s']:,.0f}",
                        f"{d['drain_seconds']:.1f}",
                        f"{d['end_to_end_per_s']:,.0f}",
                        f"{d['max_lag_s']:.1f}",
                        f"{d['server_cores']:.2f}",
                    ]
                )
        c = ing["ceiling"]
        out += [
            "",
            "## Ingest",
            "",
            f"chDB bare insert ceiling: {c['rows_per_s']:,.0f} rows/s of insert time"
            f" ({c['rows']:,} rows in {c['inserts']} inserts of {c['batch_rows']:,},"
            f" {c['rows_per_wall_s']:,.0f} rows/s wall). Arrow end to end / ceiling ="
            f" **{ing['ratio']:.2f}**.",
            *_views_line(ing),
            "",
            _md_table(
                [
                    "format",
                    "points",
                    "send s",
                    "acked/s",
                    "loaded/s while sending",
                    "drain s",
                    "end to end/s",
                    "max lag s",
                    "server cores",
                ],
                rows,
            ),
        ]
    lens = results.get("lens")
    if lens:
        out += ["", "## Lens, single user, no ingest", ""]
        kinds = (
            ("lens", "10 sensors, 1 kHz"),
            ("lens_m4", "10 sensors, 1 kHz, with the M4 points (agg=…,first,last,tmin,tmax)"),
            ("month", "10 sensors, 10 Hz"),
        )
        for key, label in kinds:
            if key not in lens:
                continue
            rows = []
            for name, w in lens[key]["windows"].items():
                if "rows_read" not in w:
                    rows.append([name, "–", "–", "–", "–", "–", "–", "–", "–", f"{w['errors']}"])
                    continue
                rows.append(
                    [
                        name,
                        f"{w['step_ms']:,}",
                        _ms(w["latency_ms"]["p50"]),
                        _ms(w["latency_ms"]["p95"]),
                        _ms(w["server_ms"]["p50"]),
                        _ms(w.get("arrow", {}).get("latency_ms", {}).get("p50")),
                        _ms(w.get("arrow", {}).get("latency_ms", {}).get("p95")),
                        f"{w['rows_read']['p50']:,.0f} / {w['rows_read']['max']:,.0f}",
                        f"{w['bound']:,}",
                        f"{w['errors']}",
                    ]
                )
            out += [
                f"**{label}**, random unaligned windows, points=2500:",
                "",
                _md_table(
                    [
                        "window",
                        "step ms",
                        "p50",
                        "p95",
                        "server p50",
                        "Arrow p50",
                        "Arrow p95",
                        "rows read p50 / max",
                        "50×buckets×sensors",
                        "errors",
                    ],
                    rows,
                ),
                "",
            ]
    for key, title in (("mixed", "Mixed"), ("concurrency", "Concurrency")):
        d = results.get(key)
        if not d:
            continue
        rows = [
            [
                w,
                f"{v['requests']}",
                f"{v['errors']}",
                _ms(v["latency_ms"]["p50"]),
                _ms(v["latency_ms"]["p95"]),
                _ms(v["latency_ms"]["p99"]),
                _ms(v["server_ms"]["p50"]),
            ]
            for w, v in d["by_window"].items()
        ]
        lat = d["latency_ms"]
        rows.append(
            [
                "all",
                f"{d['requests']}",
                f"{d['errors']}",
                _ms(lat["p50"]),
                _ms(lat["p95"]),
                _ms(lat["p99"]),
                _ms(d["server_ms"]["p50"]),
            ]
        )
        out += [
            "",
            f"## {title}",
            "",
            f"{d['config']['users']} users, think {d['config']['think']} s,"
            f" {d['throughput_rps']:.1f} requests/s; the load generator itself used"
            f" {d.get('client_cores', 0):.2f} cores of the same machine.",
            "",
            _md_table(["window", "requests", "errors", "p50", "p95", "p99", "server p50"], rows),
        ]
        cache = d.get("block_cache")
        if cache and cache["hit_ratio"] is not None:
            out += [
                "",
                f"ClickHouse's uncompressed cache ({cache['size_mb']:g} MB):"
                f" {cache['hits']:,} hits, {cache['misses']:,} misses"
                f" ({cache['hit_ratio']:.0%} of block reads).",
            ]
        if key == "mixed":
            i = d["ingest"]
            out += [
                "",
                f"Ingest during the users: {i['accepted_per_s_during_users']:,.0f} acked/s,"
                f" {i['loaded_per_s_during_users']:,.0f} loaded/s (target"
                f" {i['target_per_s']:,}/s); lag p95 {i['p95_lag_s']:.2f} s,"
                f" max {i['max_lag_s']:.2f} s.",
            ]
    st = results.get("storage")
    if st:
        rows = [
            [
                name,
                f"{v['rows']:,}",
                f"{v['parts']}",
                f"{v['bytes_on_disk']:,}",
                f"{v['bytes_per_point']:.3f}",
            ]
            for name, v in st["after_optimize"].items()
        ]
        cols = ", ".join(f"{k} {v['bytes_per_point']:.2f}" for k, v in st["raw_columns"].items())
        out += [
            "",
            "## Storage",
            "",
            f"{st['points']:,} points of the generator's fleet, after OPTIMIZE FINAL"
            " (bytes on disk per raw point):",
            "",
            _md_table(["table", "rows", "parts", "bytes on disk", "bytes / raw point"], rows),
            "",
            f"Raw columns, compressed bytes per point: {cols}.",
        ]
    out += _md_peers(results.get("peers"))
    if images:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in images]
    return "\n".join(out) + "\n"


def _md_peers(pe: dict | None) -> list[str]:
    if not pe:
        return []
    rows = []
    for name, s in pe["servers"].items():
        if not s.get("installed"):
            rows.append([name, "not installed", "", "", "", "", "", ""])
            continue
        ing, lens, disk = s["ingest"], s["lens"], s["disk"]
        store = disk["store_bytes_per_point"]
        rows.append(
            [
                name,
                f"{ing['stored']:,} / {ing['points']:,}",
                _fmt_rate(ing["points_per_s"]),
                _fmt_rate(ing["acknowledged_per_s"]),
                f"{lens['buckets']}",
                f"{_ms(lens['single_ms']['p50'])} / {_ms(lens['single_ms']['p95'])}",
                f"{_ms(lens['concurrent_ms']['p50'])} ({lens['concurrent_per_s']:.1f}/s)",
                f"{disk['data_dir_bytes_per_point']:.2f}"
                + (f" (store {store:.2f})" if store is not None else ""),
            ]
        )
    body = pe["body"]
    users = next((s["lens"]["users"] for s in pe["servers"].values() if "lens" in s), 0)
    header = ["server", "stored / sent", "points/s", "acknowledged/s", "buckets"]
    header += ["1 client p50 / p95", f"{users} clients p50", "bytes/point on disk"]
    return [
        "",
        "## Peers: the same line-protocol bytes",
        "",
        f"{pe['clients']} clients, each {pe['data_s']} s of its {body['sensors']} sensors'"
        f" data in bodies of {body['bytes']:,} bytes (first line: `{body['first_line']}`);"
        f" lenses of 10 sensors in {pe['step_ms']} ms buckets.",
        "",
        _md_table(header, rows),
    ]


def write_report(results: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = evaluate(results)
    results["targets"] = targets
    files = {"json": out / "bench-report.json", "md": out / "bench-report.md"}
    images = []
    for name, fn in (("lens-latency.png", plot_latency), ("ingest-rate.png", plot_ingest)):
        try:
            if fn(results, out / name):
                images.append(name)
                files[name] = out / name
        except ImportError:
            console.print(f"[yellow]{name}: plots need matplotlib (pip install lenshouse[bench])")
            break
        except Exception as e:  # a plot must not lose the measurements
            console.print(f"[yellow]plot {name} failed: {e}[/yellow]")
    files["json"].write_text(json.dumps(clean(results), indent=1))
    files["md"].write_text(markdown(results, targets, images))
    print_summary(targets)
    return files
