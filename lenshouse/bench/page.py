"""The lens page's drawing time in a real headless Chromium.

A server holds 10 sensors × 1 h at 1 Hz; the page is opened on a window of
2500 one-second buckets of all ten (25,000 buckets, the brief's widest lens).
Each round opens a fresh tab (the first draw builds the chart) and then asks
it to redraw in place a few times (what live mode does every second). The
page measures itself (``window.lenshouseStats``: the chart's draw and the
alignment of the series before it); the figures are those, not wall time
around Playwright, so the browser's start and the lens request are not in
them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lenshouse.bench.common import BenchConfig, BenchServer
from lenshouse.bench.console import console

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PAGE_SENSORS = 10
PAGE_POINTS = 2500
REDRAWS = 5


def _fill(srv: BenchServer, now_ms: int) -> None:
    from lenshouse.client import Client

    ts = np.arange(now_ms - 3_600_000, now_ms, 1000, dtype=np.int64)
    ids = np.arange(1, PAGE_SENSORS + 1)
    sensor_col = np.repeat(ids, len(ts))
    ts_col = np.tile(ts, PAGE_SENSORS)
    values = 2.0 * sensor_col + np.sin(ts_col / 60_000.0 * (1 + 0.3 * sensor_col))
    values += np.random.default_rng(7).normal(0, 0.3, len(values))
    with Client(srv.url) as lh:
        lh.write(sensor=sensor_col, ts=ts_col, value=values)
    if not srv.wait_visible(60):
        raise RuntimeError("the page's data did not become visible in 60 s")


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
    }


def run_page(cfg: BenchConfig, workdir: Path) -> dict:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # a test extra, not a runtime dependency
        raise RuntimeError("bench page needs playwright: pip install 'lenshouse[test]'") from e
    if not CHROMIUM.exists():
        raise RuntimeError(f"bench page needs {CHROMIUM} (Debian's chromium package)")
    rounds = max(1, cfg.page_rounds)
    first: list[float] = []
    redraw: list[float] = []
    now = int(time.time() * 1000) // 1000 * 1000
    end = now
    start = end - PAGE_POINTS * 1000
    ids = ",".join(str(i) for i in range(1, PAGE_SENSORS + 1))
    query = f"?sensors={ids}&start={start}&end={end}&points={PAGE_POINTS}"
    with BenchServer(workdir / "page") as srv, sync_playwright() as p:
        _fill(srv, now)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(rounds):
                f, r = _one_round(browser, f"{srv.url}/{query}")
                first.append(f)
                redraw.extend(r)
        finally:
            browser.close()
    out = {
        "config": {"sensors": PAGE_SENSORS, "points": PAGE_POINTS, "rounds": rounds},
        "first_draw_ms": _stats(first),
        "redraw_ms": _stats(redraw),
    }
    console.print(
        f"page: first draw p50 {out['first_draw_ms']['p50']:.1f} ms"
        f" max {out['first_draw_ms']['max']:.1f} ms; in-place redraw"
        f" p50 {out['redraw_ms']['p50']:.1f} ms max {out['redraw_ms']['max']:.1f} ms"
    )
    return out


def _one_round(browser, url: str) -> tuple[float, list[float]]:
    """One fresh tab: its first draw, then ``REDRAWS`` in-place redraws (ms)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 800})
    try:
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        page.wait_for_function("window.lenshouseStats && window.lenshouseStats.renders >= 1")
        s = page.evaluate("window.lenshouseStats")
        if s["lastRender"]["points"] != PAGE_POINTS or s["lastRender"]["series"] != PAGE_SENSORS:
            raise RuntimeError(f"the page drew {s['lastRender']}, not 10 × 2500 points")
        first = s["lastRender"]["ms"] + s["lastRender"]["prepareMs"]
        redraws = []
        for i in range(REDRAWS):
            page.evaluate("window.lenshouse.refresh()")
            page.wait_for_function("n => window.lenshouseStats.renders >= n", arg=2 + i)
            r = page.evaluate("window.lenshouseStats.lastRender")
            redraws.append(r["ms"] + r["prepareMs"])
        return first, redraws
    finally:
        ctx.close()
