"""The cluster scenarios' report: ``scenario-report.md`` with the verdicts, and
a plot per fault (acknowledged points/s, ingest lag, lens latency, with the
fault window shaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lenshouse.scenarios.cluster import ClusterConfig, ClusterVerdict
from lenshouse.scenarios.faults import FAULTS


def _per_second(times: list[float], weights: list[float], end: float) -> tuple:
    edges = np.arange(0, int(end) + 2)
    sums, _ = np.histogram(times, bins=edges, weights=weights)
    return edges[:-1], sums


def plot(v: ClusterVerdict, path: Path) -> Path | None:
    """The fault's plot; None without matplotlib (``pip install lenshouse[bench]``)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = v.timeline
    end = max([t for t, _ in tl.acks] + [t for t, _ in tl.lag] + [tl.fault[1] + 1])
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    t, pts = _per_second([t for t, _ in tl.acks], [p for _, p in tl.acks], end)
    a1.step(t, pts / 1e3, where="post", color="tab:blue")
    a1.set_ylabel("acknowledged\nk points/s")
    if tl.write_failures:
        a1.plot(tl.write_failures, np.zeros(len(tl.write_failures)), "x", color="tab:red",
                label="failed write attempt")  # fmt: skip
        a1.legend(loc="upper right", fontsize=8)
    if tl.lag:
        lt, lag = zip(*tl.lag)
        a2.plot(lt, lag, ".-", color="tab:orange", ms=3)
    a2.set_ylabel("ingest lag (s)")
    ok = [(t, s) for t, s, status in tl.lens if status == 200]
    bad = [t for t, _, status in tl.lens if status != 200]
    if ok:
        secs = np.array([int(t) for t, _ in ok])
        lat = np.array([s for _, s in ok]) * 1000
        xs = np.unique(secs)
        a3.plot(
            xs,
            [np.percentile(lat[secs == x], 50) for x in xs],
            ".-",
            label="p50",
            color="tab:green",
            ms=3,
        )
        a3.plot(
            xs, [np.percentile(lat[secs == x], 99) for x in xs], label="p99", color="tab:purple"
        )
    if bad:
        a3.plot(bad, np.full(len(bad), 1.0), "x", color="tab:red", label="503 / no answer")
    a3.set_yscale("log")
    a3.set_ylabel("lens latency (ms)")
    a3.set_xlabel("seconds since the run started")
    a3.legend(loc="upper right", fontsize=8)
    for ax in (a1, a2, a3):
        ax.axvspan(*tl.fault, color="tab:red", alpha=0.12, lw=0)
        ax.grid(alpha=0.3)
    fig.suptitle(f"cluster/{v.name}: {FAULTS[v.name].what}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(verdicts: list[ClusterVerdict], cfg: ClusterConfig, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Cluster fault scenarios",
        "",
        f"Workload: {cfg.sensors} sensors × {cfg.rate_hz} Hz ({cfg.sensors * cfg.rate_hz:,}"
        f" points/s) through the middle layer (held 0.3 s, reordered, 10 % of batches"
        f" replayed 0.5–5 s later) to every gateway; {cfg.users} closed-loop lens users on"
        f" every lens server; faults held {cfg.fault_s:.0f} s after {cfg.before_s} s of"
        f" streaming, {cfg.after_s} s more after the lift, then until caught up.",
        "",
        "Lens checks: random lenses of both lens servers against the numpy oracle over"
        " the acknowledged points, after the run. Live checks: random lenses of data"
        " written and loaded before the run, asked by the lens users throughout and"
        " compared with the oracle on the spot (how many of them fell within the fault).",
        "",
        "| fault | what | lost | dup | wrong | lens checks | live checks (in fault) |"
        " write errors (s) | lens errors (s) | max lag (s) | recovery (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        exact, checked, inside = v.live
        lines.append(
            f"| {v.name} | {FAULTS[v.name].what} | {v.lost} | {v.dup} | {v.wrong} |"
            f" {v.checks_ok}/{v.checks} | {exact}/{checked} ({inside}) |"
            f" {v.write_errors_s} | {v.lens_errors_s} |"
            f" {v.max_lag_s:.1f} | {v.recovery_s:.1f} |"
        )
    lines += ["", "Verdicts:", "", "```", *(v.line() for v in verdicts), "```", ""]
    for v in verdicts:
        png = plot(v, out / f"cluster-{v.name}.png")
        shown = f"![{v.name}]({png.name})" if png else "(no plot: pip install lenshouse[bench])"
        lines += [f"## {v.name}", "", shown, ""]
        lines += [f"- {note}" for note in v.notes]
    path = out / "scenario-report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
