"""The lens page (static/index.html + assets/app.js) in a real headless Chromium.

Each test starts a node with known data, serves it with uvicorn on a loopback
port and drives the page with Playwright. The page exposes its measurements
on ``window.lenshouseStats`` and its controls on ``window.lenshouse``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from lenshouse.points import PointBatch

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HOUR = 3_600_000
KINDS = ("vibration", "temperature", "pressure")
REFUSED = "Failed to load resource: the server responded with a status of %d (Unprocessable Entity)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the lens page tests need Debian's chromium package "
            "(run scripts/install-system-deps as root)",
            pytrace=False,
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A page plus what it did: console errors and the lens requests it sent."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": 1400, "height": 800})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.lens: list[dict] = []  # the query of each /v1/lens request, parsed
        self.urls: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("request", self._on_request)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")

    def _on_request(self, req: Request) -> None:
        self.urls.append(req.url)
        url = urlsplit(req.url)
        if url.path != "/v1/lens":
            return
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.lens.append(
            {
                "sensors": [int(s) for s in q["sensors"].split(",")],
                "start": int(q["start"]),
                "end": int(q["end"]),
                "points": int(q["points"]),
            }
        )

    def open(self, query: str = "") -> None:
        self.page.goto(f"{self.base_url}/{query}")

    def renders(self) -> int:
        return self.page.evaluate("window.lenshouseStats.renders")

    def wait_renders(self, n: int) -> None:
        self.page.wait_for_function("n => window.lenshouseStats.renders >= n", arg=n)

    def stats(self) -> dict:
        return self.page.evaluate("window.lenshouseStats")

    def view(self) -> dict:
        return self.page.evaluate(
            "(() => { const v = window.lenshouse.view;"
            " return v && {start: v.start, end: v.end, step: v.step, ids: v.ids}; })()"
        )

    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.page.url).query).items()}

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Browser, live_server) -> Iterator[Tab]:
    t = Tab(browser, live_server.url)
    try:
        yield t
    finally:
        t.close()


def fill(node, sensors: int = 4, hours: float = 2.0, every_ms: int = 1000) -> int:
    """Write one point per ``every_ms`` for the last ``hours`` on sensors 1..n,
    register their labels, and wait until the lens can see it all.
    Returns the newest timestamp written."""
    now = int(time.time() * 1000) // 1000 * 1000
    ts = np.arange(now - int(hours * HOUR), now, every_ms, dtype=np.int64)
    ids = np.arange(1, sensors + 1)
    sensor_col = np.repeat(ids, len(ts))
    ts_col = np.tile(ts, sensors)
    phase = ts_col / 60_000.0 * (1 + 0.3 * sensor_col)
    values = 2.0 * sensor_col + np.sin(phase) * (1 + 0.2 * sensor_col)
    values += np.random.default_rng(7).normal(0, 0.3, len(values))
    lsn = node.ingestor.write_sync(PointBatch.from_columns("default", sensor_col, ts_col, values))
    for i in ids:
        node.catalog.put("default", int(i), {"kind": KINDS[i % 3], "line": f"L{i % 2}"})
    assert node.ingestor.wait_visible(lsn, 60), "the test data did not become visible"
    return int(ts[-1])


def canvas_pixels(page: Page, above_alpha: int) -> int:
    """Pixels of the chart's canvas more opaque than ``above_alpha`` (0-255)."""
    return page.evaluate(
        """a => {
            const c = document.querySelector('#chart canvas');
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lit = 0;
            for (let i = 0; i < px.length; i += 4) if (px[i + 3] > a) lit++;
            return lit;
        }""",
        above_alpha,
    )


def assert_no_console_errors(tab: Tab) -> None:
    assert tab.errors == [], "the page logged errors:\n" + "\n".join(tab.errors)


def test_page_draws_the_chosen_sensors(node, tab: Tab) -> None:
    fill(node, sensors=4)
    tab.open("?sensors=1,3,4&last=1h")
    tab.wait_renders(1)
    page = tab.page

    # One uPlot series per sensor for avg, min and max, plus the x series.
    assert page.evaluate("window.lenshouse.plot.series.length") == 1 + 3 * 3
    rows = page.locator("#legend tbody tr")
    assert rows.evaluate_all("rows => rows.map(r => Number(r.dataset.sensor))") == [1, 3, 4]
    assert tab.lens and tab.lens[-1]["sensors"] == [1, 3, 4]
    # About one bucket per pixel of plot width, like Grafana's maxDataPoints.
    plot_width = page.evaluate("window.lenshouse.plot.bbox.width / uPlot.pxRatio")
    assert abs(tab.lens[-1]["points"] - plot_width) <= 1
    # The legend shows real numbers and the status names step and latency.
    assert page.locator("#legend tbody tr").first.locator("td.num").first.inner_text() != "—"
    status = page.locator("#status").inner_text()
    assert re.fullmatch(r"step \d+ s · [\d,]+ buckets · lens [\d.]+ ms · draw [\d.]+ ms", status)
    assert page.locator("#message").is_hidden()
    # The canvas holds drawn pixels, not just the background.
    assert canvas_pixels(page, 0) > 10_000

    # The picker lists the catalog with labels, and its search filters by label.
    assert page.locator("#sensor-list li").count() == 4
    page.fill("#sensor-search", "vibration")
    shown = page.locator("#sensor-list input").evaluate_all("boxes => boxes.map(b => b.value)")
    assert shown == ["3"]
    page.fill("#sensor-search", "")
    page.locator("#sensor-search").blur()

    # Hover the middle of the chart so the screenshot shows values under the cursor.
    box = page.locator(".u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.62, box["y"] + box["height"] * 0.4)
    assert page.locator(".legend-time").inner_text() != "latest"
    # Everything, uPlot included, comes from the lenshouse server: no CDN.
    assert all(u.startswith(tab.base_url + "/") for u in tab.urls), tab.urls
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lens-page.png"))
    assert_no_console_errors(tab)


def test_without_sensors_in_the_url_the_first_one_is_picked(node, tab: Tab) -> None:
    fill(node, sensors=2)
    tab.open()
    tab.wait_renders(1)
    assert tab.lens[-1]["sensors"] == [1]
    assert tab.query() == {"sensors": "1", "last": "1h"}
    assert_no_console_errors(tab)


def test_drag_zooms_in_with_a_finer_step_and_dblclick_zooms_out(node, tab: Tab) -> None:
    fill(node, sensors=2)
    tab.open("?sensors=1,2&last=1h")
    tab.wait_renders(1)
    page = tab.page
    before = tab.view()
    box = page.locator(".u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2

    # Drag across a tenth of the plot: the page asks for a new lens on that window.
    page.mouse.move(box["x"] + box["width"] * 0.45, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.50, y, steps=4)
    page.mouse.move(box["x"] + box["width"] * 0.55, y, steps=4)
    page.mouse.up()
    tab.wait_renders(2)
    zoomed = tab.view()
    width = zoomed["end"] - zoomed["start"]
    assert 0.05 * HOUR < width < 0.15 * HOUR, zoomed
    assert zoomed["step"] < before["step"], (before, zoomed)
    assert before["start"] < zoomed["start"] < zoomed["end"] < before["end"]
    assert tab.lens[-1]["end"] - tab.lens[-1]["start"] == width
    query = tab.query()
    assert "live" not in query and "last" not in query
    assert (int(query["start"]), int(query["end"])) == (zoomed["start"], zoomed["end"])

    # Shift-drag pans: same width, earlier window.
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    tab.wait_renders(3)
    panned = tab.view()
    assert panned["end"] - panned["start"] == width
    assert panned["start"] < zoomed["start"]

    # Double-click doubles the window around its centre.
    page.mouse.dblclick(box["x"] + box["width"] / 2, y)
    page.wait_for_function(f"window.lenshouse.view.end - window.lenshouse.view.start > {width}")
    out = tab.view()
    assert out["end"] - out["start"] == 2 * width
    assert out["step"] >= panned["step"]
    assert_no_console_errors(tab)


def test_live_mode_refreshes_every_second_in_place(node, tab: Tab) -> None:
    fill(node, sensors=2)
    tab.open("?sensors=1,2&last=1m&live=1")
    tab.wait_renders(1)
    page = tab.page
    assert page.get_attribute("#live", "aria-pressed") == "true"
    page.evaluate("window.firstPlot = window.lenshouse.plot")
    renders, sent = tab.renders(), len(tab.lens)

    # Meanwhile new points arrive, as they would from sensors.
    now = int(time.time() * 1000)
    ts = np.arange(now, now + 2000, 100, dtype=np.int64)
    lsn = node.ingestor.write_sync(
        PointBatch.from_columns("default", np.ones(len(ts), np.uint32), ts, np.full(len(ts), 9.0))
    )
    node.ingestor.wait_visible(lsn)
    # A refresh a second: wait for three (a busy machine may stretch one, so
    # up to 8 s) and for two renders.
    deadline = time.monotonic() + 8
    while len(tab.lens) - sent < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    page.wait_for_function("n => window.lenshouseStats.renders >= n", arg=renders + 2)

    live = tab.lens[sent:]
    assert len(live) >= 2, f"only {len(live)} lens requests in live mode"
    assert tab.renders() >= renders + 2
    ends = [r["end"] for r in live]
    assert ends == sorted(ends) and ends[-1] - ends[0] >= 900, ends
    assert np.median(np.diff(ends)) < 2000, ends  # about one refresh a second
    assert all(r["end"] - r["start"] == 60_000 for r in live)
    # Updated in place: same chart object, no rebuild, so no flicker.
    assert page.evaluate("window.firstPlot === window.lenshouse.plot")
    assert tab.stats()["lastRender"]["rebuilt"] is False
    assert_no_console_errors(tab)

    # Leaving live stops the refreshes.
    page.click("#live")
    assert tab.query().get("live") is None
    page.wait_for_timeout(300)
    settled = len(tab.lens)
    page.wait_for_timeout(1500)
    assert len(tab.lens) == settled


def test_url_state_round_trips_through_a_reload(node, tab: Tab) -> None:
    fill(node, sensors=4)
    tab.open("?sensors=&last=1h")
    page = tab.page
    assert page.locator("#message").inner_text().startswith("Pick up to 10 sensors")

    # Pick sensors by clicking, then move the window with the buttons.
    for sensor in (4, 2):
        page.locator(f"#sensor-list input[value='{sensor}']").check()
    page.wait_for_function("window.lenshouse.view && window.lenshouse.view.ids.join() === '4,2'")
    n = tab.renders()
    page.click("#pan-left")
    tab.wait_renders(n + 1)
    before = tab.view()
    assert before["ids"] == [4, 2]
    assert before["end"] - before["start"] == HOUR
    query = tab.query()
    assert query["sensors"] == "4,2"
    assert (int(query["start"]), int(query["end"])) == (before["start"], before["end"])

    page.reload()
    tab.wait_renders(1)
    assert tab.view() == before
    assert page.locator("#sensor-list input:checked").evaluate_all(
        "boxes => boxes.map(b => Number(b.value))"
    ) == [2, 4]
    assert tab.lens[-1]["sensors"] == [4, 2]

    # A live view round-trips as its relative window.
    page.click("[data-last='10s']")
    page.click("#live")
    assert tab.query() == {"sensors": "4,2", "last": "10s", "live": "1"}
    page.reload()
    tab.wait_renders(1)
    assert page.get_attribute("#live", "aria-pressed") == "true"
    view = tab.view()
    assert view["end"] - view["start"] == 10_000
    assert view["end"] > before["end"]
    assert_no_console_errors(tab)


def test_empty_window_and_server_errors_are_shown(node, tab: Tab) -> None:
    fill(node, sensors=1, hours=0.1)
    page = tab.page
    tab.open("?sensors=1&start=1000000000000&end=1000003600000")
    tab.wait_renders(1)
    message = page.locator("#message")
    assert message.is_visible()
    assert message.inner_text().startswith("No data for #1 in this window.")
    assert page.locator("#legend tbody tr td.num").last.inner_text() == "no data"
    assert_no_console_errors(tab)

    # A failing lens shows the server's own message over the chart.
    page.route(
        lambda url: "/v1/lens?" in url,
        lambda route: route.fulfill(status=503, json={"error": "storage is unavailable (test)"}),
    )
    page.click("[data-last='1h']")
    page.wait_for_selector(".message.error")
    text = message.inner_text()
    assert "The lens request failed." in text
    assert "HTTP 503: storage is unavailable (test)" in text


def test_ten_sensors_of_2500_points_draw_and_redraw_in_place(node, tab: Tab) -> None:
    last = fill(node, sensors=10, hours=1.0)
    # 2500 one-second buckets, each holding one point of every sensor.
    end = last + 1000
    start = end - 2_500_000
    ids = ",".join(str(i) for i in range(1, 11))
    tab.open(f"?sensors={ids}&start={start}&end={end}&points=2500")
    tab.wait_renders(1)
    stats = tab.stats()
    assert stats["lastLens"]["step"] == 1000
    assert stats["lastLens"]["buckets"] == 10 * 2500
    assert stats["lastRender"]["points"] == 2500 and stats["lastRender"]["series"] == 10
    first = stats["lastRender"]

    # Redraws in place (what live mode does every second).
    in_place = []
    for i in range(3):
        tab.page.evaluate("window.lenshouse.refresh()")
        tab.wait_renders(2 + i)
        in_place.append(tab.stats()["lastRender"])
    assert first["rebuilt"]
    assert not any(r["rebuilt"] for r in in_place)
    assert all(r["points"] == 2500 and r["series"] == 10 for r in in_place)
    # How long drawing takes is measured by `lenshouse bench page`, not here.
    assert_no_console_errors(tab)


def test_a_window_the_page_cannot_take_is_said_on_the_page(node, tab: Tab) -> None:
    fill(node, sensors=2, hours=2.0)
    tab.open("?sensors=1&window=10m")  # "window" is a synonym of "last"
    tab.wait_renders(1)
    assert tab.page.locator("#notice").is_hidden()
    v = tab.view()
    assert v["end"] - v["start"] >= 10 * 60_000 and v["end"] - v["start"] < 11 * 60_000
    tab.open("?sensors=1&last=tenminutes")
    tab.wait_renders(1)
    notice = tab.page.locator("#notice")
    assert notice.is_visible()
    assert "last=tenminutes is not a duration" in notice.inner_text()
    assert "showing the last 1 h instead" in notice.inner_text()
    tab.page.click("[data-last='1d']")  # choosing a window clears it
    assert notice.is_hidden()
    assert_no_console_errors(tab)


def test_the_picker_selects_by_label_matchers(node, tab: Tab) -> None:
    fill(node, sensors=6, hours=1.0)
    tab.open("?sensors=2&last=1h")
    tab.wait_renders(1)
    names = tab.page.locator("#label-names button")
    names.first.wait_for()
    assert names.all_inner_texts() == ["kind", "line"]
    tab.page.click("#label-names button:text('line')")  # starts the matchers
    assert tab.page.input_value("#sensor-search") == '{line=""}'
    tab.page.fill("#sensor-search", '{line="L1"}')
    row = tab.page.locator(".sensor-list li.match")
    row.wait_for()
    assert "select 3 sensors" in row.inner_text()
    assert tab.page.locator(".sensor-list li:not(.match):not(.empty)").count() == 3
    ARTIFACTS.mkdir(exist_ok=True)
    tab.page.screenshot(path=str(ARTIFACTS / "page-matchers.png"))
    renders = tab.renders()
    tab.page.click("#pick-matched")
    tab.wait_renders(renders + 1)
    assert tab.page.evaluate("window.lenshouse.state.sensors") == [1, 3, 5]
    assert tab.query()["sensors"] == "1,3,5"
    tab.page.fill("#sensor-search", '{line=~"("}')
    tab.page.locator(".sensor-list li.match.error").wait_for()
    assert "is not a regex" in tab.page.locator(".sensor-list li.match").inner_text()
    # The browser itself logs the refused request; nothing else may be logged.
    assert tab.errors == [f"console: {REFUSED % 422}"], tab.errors
    tab.errors.clear()
    tab.page.fill("#sensor-search", "L0")  # words search again
    assert tab.page.locator(".sensor-list li.match").count() == 0
    assert_no_console_errors(tab)


def test_the_raw_line_is_drawn_through_each_buckets_m4_points(node, tab: Tab) -> None:
    """In raw-line mode the page asks for M4 points and draws each sensor's
    line through them: what it holds equals the lens's answer, and the line
    covers the buckets' spread, where the avg line is one thin line."""
    fill(node, sensors=2, hours=0.5, every_ms=50)  # ~40 points per bucket
    tab.open("?sensors=1,2&last=30m&line=raw")
    tab.wait_renders(1)
    page = tab.page
    lens_url = next(u for u in reversed(tab.urls) if "/v1/lens" in u)
    assert "first" in parse_qs(urlsplit(lens_url).query)["agg"][0]
    assert tab.stats()["lastRender"]["raw"] is True
    assert page.get_attribute("#raw", "aria-pressed") == "true"
    # What the page draws from is the lens's own M4 answer, bucket for bucket.
    held = page.evaluate(
        "(() => { const v = window.lenshouse.view; const xs = window.lenshouse.plot.data[0];"
        " return v.m4.map(p => xs.map((x, i) => p[0][i] == null ? null :"
        " [x, p[0][i], p[1][i], p[2][i], p[3][i], p[4][i], p[5][i]]).filter(r => r)); })()"
    )
    answer = page.evaluate("url => fetch(url).then(r => r.json())", lens_url)
    for rows, series in zip(held, answer["series"], strict=True):
        want = [
            [t, *(series[f][j] for f in ("tfirst", "first", "tlast", "last", "tmin", "tmax"))]
            for j, t in enumerate(series["t"])
        ]
        assert rows == want
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lens-page-raw.png"))
    raw_lit = canvas_pixels(page, 200)  # opaque: lines (the bands are translucent)

    page.click("#raw")  # back to the avg line
    tab.wait_renders(2)
    assert "line" not in tab.query() and tab.stats()["lastRender"]["raw"] is False
    assert "agg" not in parse_qs(urlsplit(tab.urls[-1]).query)
    avg_lit = canvas_pixels(page, 200)
    # The noise spreads each bucket's points: the raw line fills much of the band.
    assert raw_lit > 3 * avg_lit, (raw_lit, avg_lit)
    assert_no_console_errors(tab)
