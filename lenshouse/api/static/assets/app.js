/* The lens page: pick sensors and a time window, draw each sensor's avg line
 * (or its raw line, from the buckets' M4 points) with its min–max band from
 * GET /v1/lens.
 *
 * Plain ES2020 with no build step; uPlot is vendored under assets/vendor so
 * the page works offline. The URL query string is the single source of
 * shareable state (see docs/lens-page.md). */
(() => {
  "use strict";

  const MAX_SENSORS = 10;
  const MAX_POINTS = 20000; // the server's MAX_BUCKETS
  const LIVE_MS = 1000;
  // The lens columns the raw line is drawn from, in m4Path's order.
  const M4_FIELDS = ["tfirst", "first", "tlast", "last", "tmin", "tmax"];
  const M4_AGGS = ["avg", "min", "max", "count", ...M4_FIELDS].join(",");
  const linearPath = uPlot.paths.linear();
  const DEFAULT_LAST = "1h";
  const PICKER_LIMIT = 500; // rows drawn in the picker; the search narrows the rest
  // Fixed y-axis width and right padding make the plot width (and so the point
  // count to ask for) known before the first chart exists.
  const Y_AXIS_PX = 64;
  const RIGHT_PAD_PX = 36; // room for the last time label, which centres on its tick
  // Duration units for the URL ("m" is minutes; a month is 30 days).
  const UNITS = { mo: 30 * 86400e3, d: 86400e3, h: 3600e3, m: 60e3, s: 1e3, ms: 1 };
  const PALETTE = [
    "#5794f2", "#73bf69", "#f2cc0c", "#f2495c", "#b877d9",
    "#ff9830", "#2fc4b2", "#ff8fd0", "#c8a27c", "#d8d9da",
  ];

  const $ = (id) => document.getElementById(id);
  const el = {
    wrap: $("chart-wrap"), chart: $("chart"), message: $("message"), legend: $("legend"),
    status: $("status"), windowLabel: $("window-label"), live: $("live"), notice: $("notice"),
    raw: $("raw"),
    presets: $("presets"), customToggle: $("custom-toggle"), customForm: $("custom-form"),
    customStart: $("custom-start"), customEnd: $("custom-end"),
    search: $("sensor-search"), list: $("sensor-list"), picked: $("picked-count"),
    labelNames: $("label-names"),
  };

  // Measurements the browser tests (and curious humans) read from the console.
  const stats = (window.lenshouseStats = {
    lensRequests: 0, renders: 0, lastLens: null, lastRender: null, history: [],
  });

  // ---------------------------------------------------------------- state --

  /* sensors: ids in pick order (the order also fixes each sensor's colour).
   * last: window length in ms when the window is relative to now, else null
   * and start/end hold an absolute window. live implies a relative window. */
  // What the URL asked for that the page could not take, said on the page.
  const urlProblems = [];
  const state = readUrl();
  let catalog = []; // [{sensor, labels, text}] from /v1/sensors
  let plot = null; // the uPlot instance; rebuilt only when the sensor set changes
  let plotKey = "";
  let view = null; // {start, end, step, counts, ids} of the lens on screen
  let hidden = new Set(); // sensors switched off in the legend
  let inflight = null; // AbortController of the lens request in flight
  let requestSeq = 0;
  let liveTimer = null;
  let panning = false;

  function parseDuration(text) {
    const m = /^(\d+(?:\.\d+)?)(mo|ms|d|h|m|s)$/.exec(String(text || "").trim());
    return m ? Math.round(Number(m[1]) * UNITS[m[2]]) : null;
  }

  function formatDuration(ms) {
    for (const [unit, size] of Object.entries(UNITS)) {
      if (ms % size === 0) return ms / size + unit;
    }
    return Math.round(ms) + "ms";
  }

  // Epoch ms, or anything Date.parse understands (so hand-written ISO links work).
  function parseTime(text) {
    if (text == null || text === "") return null;
    const n = /^-?\d+$/.test(text) ? Number(text) : Date.parse(text);
    return Number.isFinite(n) ? n : null;
  }

  function parseIds(text) {
    const ids = String(text || "")
      .split(",")
      .filter((s) => /^\s*\d+\s*$/.test(s)) // Number("") would be sensor 0
      .map(Number)
      .filter(isSensorId);
    return [...new Set(ids)].slice(0, MAX_SENSORS);
  }

  function isSensorId(n) {
    return Number.isInteger(n) && n >= 0 && n < 2 ** 32;
  }

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const s = { sensors: null, last: null, start: null, end: null, live: false, points: null, raw: false };
    if (q.has("sensors")) s.sensors = parseIds(q.get("sensors"));
    const start = parseTime(q.get("start"));
    const end = parseTime(q.get("end"));
    // "window" is taken as a synonym of "last" (?window=10m).
    const lastText = q.has("last") ? q.get("last") : q.get("window");
    const lastName = q.has("last") ? "last" : "window";
    if (start != null && end != null && end > start) {
      s.start = start;
      s.end = end;
    } else {
      if (q.has("start") || q.has("end")) {
        urlProblems.push(`start=${q.get("start") ?? ""}&end=${q.get("end") ?? ""} is not a window` +
          " (epoch ms or ISO times, end after start)");
      }
      const asked = parseDuration(lastText);
      if (lastText != null && asked == null) {
        urlProblems.push(`${lastName}=${lastText} is not a duration like 10s, 10m, 6h, 7d, 1mo`);
      }
      s.last = asked || parseDuration(DEFAULT_LAST);
    }
    s.live = q.get("live") === "1";
    s.raw = q.get("line") === "raw";
    if (s.live && s.last == null) s.last = s.end - s.start;
    const points = Number(q.get("points"));
    if (Number.isInteger(points) && points >= 1) s.points = Math.min(points, MAX_POINTS);
    return s;
  }

  // replaceState, not pushState: a live page would otherwise flood history.
  function writeUrl() {
    const parts = [`sensors=${(state.sensors || []).join(",")}`];
    if (state.last != null) parts.push(`last=${formatDuration(state.last)}`);
    else parts.push(`start=${Math.round(state.start)}`, `end=${Math.round(state.end)}`);
    if (state.live) parts.push("live=1");
    if (state.raw) parts.push("line=raw");
    if (state.points) parts.push(`points=${state.points}`);
    history.replaceState(null, "", `${location.pathname}?${parts.join("&")}`);
  }

  function currentWindow() {
    if (state.last == null) return { start: state.start, end: state.end };
    const end = Date.now();
    return { start: end - state.last, end };
  }

  // ------------------------------------------------------------- navigation --

  function setWindow(start, end) {
    start = Math.round(start);
    end = Math.max(Math.round(end), start + 1);
    Object.assign(state, { start, end, last: null });
    setLive(false, { quiet: true });
    navigated();
  }

  function setLast(ms) {
    Object.assign(state, { last: Math.max(10, Math.round(ms)), start: null, end: null });
    navigated();
  }

  function setRaw(on) {
    state.raw = on;
    el.raw.setAttribute("aria-pressed", String(on));
    writeUrl();
    refresh();
  }

  function setLive(on, { quiet = false } = {}) {
    if (on && state.last == null) {
      // Follow now with the width of the window on screen.
      Object.assign(state, { last: state.end - state.start, start: null, end: null });
    }
    state.live = on;
    el.live.setAttribute("aria-pressed", String(on));
    if (on && !liveTimer) liveTimer = setInterval(liveTick, LIVE_MS);
    if (!on && liveTimer) {
      clearInterval(liveTimer);
      liveTimer = null;
    }
    if (!quiet) navigated();
  }

  function navigated() {
    el.notice.hidden = true; // the user chose a window: the URL's problem is past
    writeUrl();
    renderWindowControls();
    refresh();
  }

  function shownWindow() {
    return view ? { start: view.start, end: view.end } : currentWindow();
  }

  function zoomOut() {
    const { start, end } = shownWindow();
    const w = end - start;
    if (state.live) return setLast(w * 2);
    const left = Math.floor(w / 2); // integer halves, so the new window is exactly 2w
    const right = w - left;
    const now = Date.now();
    // Zooming out of a window that ends in the past must not reach into the future.
    const shift = end <= now ? Math.max(0, end + right - now) : 0;
    setWindow(start - left - shift, end + right - shift);
  }

  function zoomIn() {
    const { start, end } = shownWindow();
    const w = end - start;
    if (state.live) return setLast(w / 2);
    setWindow(start + w / 4, end - w / 4);
  }

  function pan(fraction) {
    const { start, end } = shownWindow();
    const d = (end - start) * fraction;
    setWindow(start + d, end + d);
  }

  function liveTick() {
    // Skip ticks while the tab is hidden or the user drags: nobody looks, or
    // the redraw would fight the drag.
    if (document.hidden || panning) return;
    refresh({ background: true });
  }

  // ---------------------------------------------------------------- fetch --

  function requestedPoints() {
    if (state.points) return state.points;
    // About one bucket per pixel of plot width, like Grafana's maxDataPoints.
    const px = plot ? plot.bbox.width / uPlot.pxRatio : el.wrap.clientWidth - Y_AXIS_PX - RIGHT_PAD_PX;
    return Math.max(10, Math.min(MAX_POINTS, Math.round(px)));
  }

  /* background: a live tick. It never aborts or piles onto a request in
   * flight, so a slow server degrades the refresh rate instead of queueing. */
  async function refresh({ background = false } = {}) {
    if (background && inflight) return;
    if (inflight) inflight.abort();
    inflight = null;
    const ids = state.sensors || [];
    if (!ids.length) {
      clearChart();
      showMessage("info", "Pick up to 10 sensors on the left to draw them.");
      return;
    }
    const { start, end } = currentWindow();
    const points = requestedPoints();
    // The raw line needs each bucket's M4 points (first, last, and when the
    // lowest and highest values came): drawn through them, a bucket's line is
    // the one every raw point in it would draw.
    const agg = state.raw ? `&agg=${M4_AGGS}` : "";
    const url = `/v1/lens?sensors=${ids.join(",")}&start=${start}&end=${end}&points=${points}${agg}`;
    const ctl = new AbortController();
    const seq = ++requestSeq;
    inflight = ctl;
    stats.lensRequests++;
    try {
      const { res, body } = await fetchJson(url, ctl.signal, "The lens request failed.");
      if (seq !== requestSeq) return; // a newer request superseded this one
      const latency = Number(res.headers.get("X-Lens-Ms"));
      draw(body, ids, Number.isFinite(latency) ? latency : null, url, { start, end });
    } catch (err) {
      if (err.name === "AbortError" || seq !== requestSeq) return;
      showError(err);
    } finally {
      if (inflight === ctl) inflight = null;
    }
  }

  /** A request that failed in a way to tell the user about (not a bug of ours). */
  class RequestError extends Error {
    constructor(title, detail) {
      super(detail);
      this.title = title;
    }
  }

  async function fetchJson(url, signal, failTitle) {
    let res;
    try {
      res = await fetch(url, { signal, cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new RequestError("Cannot reach the lenshouse server.", String(err.message || err));
    }
    const body = await readJson(res);
    if (!res.ok) {
      const detail = body && typeof body.error === "string" ? body.error : "no details";
      throw new RequestError(failTitle, `The server answered HTTP ${res.status}: ${detail}`);
    }
    return { res, body };
  }

  // Error bodies should be JSON, but a proxy may answer HTML: keep a snippet.
  async function readJson(res) {
    const text = await res.text();
    try {
      return JSON.parse(text);
    } catch {
      return { error: text.slice(0, 200) || res.statusText };
    }
  }

  // ------------------------------------------------------------------ draw --

  /* The lens omits empty buckets, so series may differ in length. Put them on
   * one grid of every bucket in the window; null marks "no points here" and
   * draws as a gap rather than a made-up line. */
  function align(body, ids) {
    const { start, end, step } = body;
    const first = Math.floor(start / step);
    const n = Math.max(0, Math.floor((end - 1) / step) - first + 1);
    const xs = new Array(n);
    for (let i = 0; i < n; i++) xs[i] = (first + i) * step;
    const bySensor = new Map(body.series.map((s) => [s.sensor, s]));
    const data = [xs];
    const counts = [];
    const m4 = [];
    for (const id of ids) {
      const cols = [new Array(n).fill(null), new Array(n).fill(null), new Array(n).fill(null)];
      const count = new Array(n).fill(0);
      const s = bySensor.get(id);
      const pts = s && s.first ? M4_FIELDS.map(() => new Array(n).fill(null)) : null;
      for (let j = 0; s && j < s.t.length; j++) {
        const i = Math.floor(s.t[j] / step) - first;
        if (i < 0 || i >= n) continue;
        cols[0][i] = s.avg[j];
        cols[1][i] = s.min[j];
        cols[2][i] = s.max[j];
        count[i] = s.count[j];
        if (pts) M4_FIELDS.forEach((f, c) => (pts[c][i] = s[f][j]));
      }
      data.push(...cols);
      counts.push(count);
      m4.push(pts);
    }
    return { data, counts, m4: state.raw ? m4 : null };
  }

  /* The raw line of sensor k: through each bucket's first point, its lowest
   * and highest (in the order they came) and its last, at their own times;
   * broken where buckets are empty. uPlot calls this instead of drawing the
   * avg line while the page is in raw-line mode. */
  function m4Path(u, si, i0, i1) {
    const k = (si - 1) / 3;
    const pts = view && view.m4 && view.m4[k];
    if (!pts) return linearPath(u, si, i0, i1);
    const [tf, vf, tl, vl, tmin, tmax] = pts;
    const lo = u.data[si + 1];
    const hi = u.data[si + 2];
    const x = (t) => u.valToPos(t, "x", true);
    const y = (v) => u.valToPos(v, "y", true);
    const stroke = new Path2D();
    let open = false;
    for (let i = i0; i <= i1; i++) {
      if (tf[i] == null) {
        open = false;
        continue;
      }
      const low = [tmin[i], lo[i]];
      const high = [tmax[i], hi[i]];
      const inner = low[0] <= high[0] ? [low, high] : [high, low];
      for (const [t, v] of [[tf[i], vf[i]], ...inner, [tl[i], vl[i]]]) {
        if (open) stroke.lineTo(x(t), y(v));
        else stroke.moveTo(x(t), y(v));
        open = true;
      }
    }
    return { stroke, fill: null, clip: null, band: null, gaps: null, flags: 0 };
  }

  /* The answer covers whole buckets, so it may reach up to a step beyond the
   * window asked for; the view stays the window the user chose. */
  function draw(body, ids, latency, url, win) {
    const t0 = performance.now();
    const { data, counts, m4 } = align(body, ids);
    const t1 = performance.now();
    const rebuilt = ensurePlot(ids);
    view = { start: win.start, end: win.end, step: body.step, counts, ids, m4 };
    // batch() commits synchronously, so the time below includes the canvas redraw.
    plot.batch(() => {
      plot.setData(data, false);
      plot.setScale("x", { min: win.start, max: win.end });
    });
    const t2 = performance.now();
    const buckets = counts.reduce((sum, c) => sum + c.filter((k) => k > 0).length, 0);
    stats.renders++;
    stats.lastRender = { prepareMs: t1 - t0, ms: t2 - t1, rebuilt, series: ids.length, points: data[0].length, raw: !!m4 };
    stats.lastLens = { url, step: body.step, latencyMs: latency, start: body.start, end: body.end, buckets };
    stats.history.push({ step: body.step, start: body.start, end: body.end, ids: ids.slice() });
    if (stats.history.length > 50) stats.history.shift();
    updateLegend();
    renderStatus();
    renderWindowControls();
    if (buckets === 0) {
      showMessage("empty", `No data for ${ids.map((i) => "#" + i).join(", ")} in this window.`,
        "Try a wider window, or check that these sensors are being written.");
    } else {
      hideMessage();
    }
  }

  function clearChart() {
    if (plot) plot.destroy();
    plot = null;
    plotKey = "";
    view = null;
    el.legend.replaceChildren();
    el.status.textContent = "";
  }

  function colorOf(index) {
    return PALETTE[index % PALETTE.length];
  }

  function alpha(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${a})`;
  }

  // A new uPlot only when the sensor set changes; live refreshes reuse it.
  function ensurePlot(ids) {
    const key = ids.join(",");
    if (plot && plotKey === key) return false;
    if (plot) plot.destroy();
    hidden = new Set([...hidden].filter((id) => ids.includes(id)));
    plot = new uPlot(plotOptions(ids), [[], ...ids.flatMap(() => [[], [], []])], el.chart);
    plotKey = key;
    bindPlotEvents(plot);
    buildLegend(ids);
    return true;
  }

  function plotOptions(ids) {
    const axis = {
      stroke: "#8e99a8",
      font: "11px system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
      grid: { stroke: "rgba(255,255,255,0.06)", width: 1 },
      ticks: { stroke: "rgba(255,255,255,0.12)", width: 1, size: 4 },
    };
    const series = [{}];
    const bands = [];
    ids.forEach((id, k) => {
      const c = colorOf(k);
      const show = !hidden.has(id);
      const edge = { stroke: alpha(c, 0.35), width: 1, points: { show: false }, show };
      series.push({ label: `#${id} avg`, stroke: c, width: 1.5, show, paths: m4Path });
      series.push({ ...edge, label: `#${id} min` });
      series.push({ ...edge, label: `#${id} max` });
      bands.push({ series: [3 + 3 * k, 2 + 3 * k], fill: alpha(c, 0.14) });
    });
    return {
      ...chartSize(),
      ms: 1, // the lens speaks epoch milliseconds
      series,
      bands,
      legend: { show: false }, // our own legend shows avg, min, max, count per sensor
      scales: { x: { time: true, auto: false } },
      // Our time labels are wider than uPlot's defaults: ask for roomier ticks.
      axes: [{ ...axis, values: timeTicks, space: 90 }, { ...axis, size: Y_AXIS_PX }],
      padding: [14, RIGHT_PAD_PX, 0, 0],
      cursor: {
        drag: { x: true, y: false, setScale: false }, // we fetch a finer lens instead
        bind: { dblclick: () => null }, // our dblclick zooms out; uPlot's would autoscale
        // Hover dots on avg lines only: 30 dots for 10 sensors would be noise.
        points: {
          show: (u, si) => ((si - 1) % 3 === 0 ? document.createElement("div") : null),
          size: 9,
          width: 2,
          fill: (u, si) => colorOf((si - 1) / 3),
          stroke: () => "#161a21", // the panel colour, so the dot stands off its line
        },
      },
      select: { show: true },
      hooks: {
        setSelect: [onSelect],
        setCursor: [updateLegend],
      },
    };
  }

  function chartSize() {
    return { width: el.wrap.clientWidth, height: Math.max(200, el.wrap.clientHeight) };
  }

  function onSelect(u) {
    const { left, width } = u.select;
    if (width < 3) return; // a click, not a drag
    const a = u.posToVal(left, "x");
    const b = u.posToVal(left + width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    setWindow(a, b);
  }

  function bindPlotEvents(u) {
    u.over.addEventListener("dblclick", zoomOut);
    u.over.addEventListener("mouseleave", () => updateLegend());
  }

  /* Shift-drag pans. The listener sits on the wrapper in the capture phase so
   * it runs before uPlot's own mousedown and keeps it from starting a zoom. */
  function onPanStart(e) {
    if (!plot || !e.shiftKey || e.button !== 0 || !plot.over.contains(e.target)) return;
    e.stopPropagation();
    e.preventDefault();
    const { start, end } = shownWindow();
    const msPerPx = (end - start) / plot.over.clientWidth;
    const x0 = e.clientX;
    let delta = 0;
    panning = true;
    el.wrap.classList.add("panning");
    const move = (ev) => {
      delta = (x0 - ev.clientX) * msPerPx;
      plot.setScale("x", { min: start + delta, max: end + delta }); // instant feedback
    };
    const up = () => {
      window.removeEventListener("mousemove", move);
      panning = false;
      el.wrap.classList.remove("panning");
      if (Math.abs(delta) >= msPerPx) setWindow(start + delta, end + delta);
    };
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up, { once: true });
  }

  // ---------------------------------------------------------------- legend --

  function sensorInfo(id) {
    return catalog.find((s) => s.sensor === id);
  }

  function labelText(labels) {
    return Object.entries(labels || {})
      .map(([k, v]) => `${k}=${v}`)
      .join("  ");
  }

  function buildLegend(ids) {
    const head = document.createElement("thead");
    head.innerHTML =
      '<tr><th colspan="2" class="legend-time"></th>' +
      '<th class="num">avg</th><th class="num">min</th><th class="num">max</th>' +
      '<th class="num">count</th></tr>';
    const body = document.createElement("tbody");
    ids.forEach((id, k) => {
      const tr = document.createElement("tr");
      tr.dataset.sensor = id;
      tr.title = "Click to hide or show";
      tr.classList.toggle("off", hidden.has(id));
      const info = sensorInfo(id);
      tr.innerHTML =
        `<td class="swatch-cell"><span class="swatch" style="background:${colorOf(k)}"></span></td>` +
        `<td class="name"><b>#${id}</b> <span class="labels"></span></td>` +
        '<td class="num"></td><td class="num"></td><td class="num"></td><td class="num"></td>';
      tr.querySelector(".labels").textContent = info ? labelText(info.labels) : "";
      tr.addEventListener("click", () => toggleHidden(id, k, tr));
      body.appendChild(tr);
    });
    el.legend.replaceChildren(head, body);
  }

  function toggleHidden(id, k, tr) {
    const show = hidden.has(id);
    if (show) hidden.delete(id);
    else hidden.add(id);
    tr.classList.toggle("off", !show);
    plot.batch(() => {
      for (let i = 1; i <= 3; i++) plot.setSeries(3 * k + i, { show });
    });
  }

  /* Values under the cursor; with the cursor off the chart, each sensor's
   * latest bucket (what a live view wants to read). */
  function updateLegend() {
    if (!plot || !view) return;
    const idx = plot.cursor.idx;
    const rows = el.legend.tBodies[0] ? el.legend.tBodies[0].rows : [];
    const xs = plot.data[0];
    const timeCell = el.legend.querySelector(".legend-time");
    timeCell.textContent = idx == null ? "latest" : fmtTime(xs[idx], view.step);
    view.ids.forEach((id, k) => {
      const counts = view.counts[k];
      const i = idx == null ? lastIndex(counts) : idx;
      const cells = rows[k].cells;
      const has = i >= 0 && counts[i] > 0;
      cells[2].textContent = has ? fmtValue(plot.data[1 + 3 * k][i]) : "—";
      cells[3].textContent = has ? fmtValue(plot.data[2 + 3 * k][i]) : "—";
      cells[4].textContent = has ? fmtValue(plot.data[3 + 3 * k][i]) : "—";
      cells[5].textContent = has ? counts[i].toLocaleString() : "no data";
    });
  }

  function lastIndex(counts) {
    for (let i = counts.length - 1; i >= 0; i--) if (counts[i] > 0) return i;
    return -1;
  }

  // -------------------------------------------------------------- messages --

  function showMessage(kind, title, detail = "") {
    el.message.className = `message ${kind}`;
    el.message.replaceChildren();
    const t = document.createElement("div");
    t.className = "message-title";
    t.textContent = title;
    el.message.appendChild(t);
    if (detail) {
      const d = document.createElement("div");
      d.className = "message-detail";
      d.textContent = detail;
      el.message.appendChild(d);
    }
    el.message.hidden = false;
  }

  function hideMessage() {
    el.message.hidden = true;
  }

  function showError(err) {
    if (!(err instanceof RequestError)) console.error(err); // a bug here: keep its stack
    const title = err instanceof RequestError ? err.title : "The page could not draw the lens.";
    showMessage("error", title, err.message);
    el.status.textContent = "";
  }

  // ------------------------------------------------------------ formatting --

  function pad(n, w = 2) {
    return String(n).padStart(w, "0");
  }

  function fmtTime(ms, step = 1000) {
    const d = new Date(ms);
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return step < 1000 ? `${hms}.${pad(d.getMilliseconds(), 3)}` : hms;
  }

  function fmtDateTime(ms, step = 1000) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtTime(ms, step)}`;
  }

  /* x-axis labels in 24-hour local time, precise to the tick spacing; the date
   * goes on a second line at the first tick and wherever the day changes. */
  function timeTicks(u, splits, axisIdx, space, incr) {
    let prevDay = null;
    return splits.map((v) => {
      const d = new Date(v);
      const day = fmtDateTime(v).slice(0, 10);
      const newDay = day !== prevDay;
      prevDay = day;
      if (incr >= UNITS.d) return v === splits[0] ? day : day.slice(5);
      const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
      const t = incr >= UNITS.m ? hm : fmtTime(v, incr);
      return newDay ? `${t}\n${day}` : t;
    });
  }

  function humanDuration(ms) {
    const units = [["month", UNITS.mo], ["day", UNITS.d], ["h", UNITS.h], ["min", UNITS.m], ["s", UNITS.s]];
    for (const [name, size] of units) {
      if (ms >= size) {
        const v = Math.round((ms / size) * 10) / 10;
        const plural = (name === "day" || name === "month") && v !== 1 ? "s" : "";
        return `${v} ${name}${plural}`;
      }
    }
    return `${Math.round(ms)} ms`;
  }

  const numberFormat = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 5 });
  function fmtValue(v) {
    if (v == null) return "—";
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e9 || a < 1e-3) ? v.toExponential(3) : numberFormat.format(v);
  }

  // -------------------------------------------------------- window controls --

  function renderWindowControls() {
    const lastName = state.last == null ? null : formatDuration(state.last);
    for (const b of el.presets.querySelectorAll("button[data-last]")) {
      b.classList.toggle("active", b.dataset.last === lastName);
    }
    el.customToggle.classList.toggle("active", state.last == null);
    const { start, end } = view || currentWindow();
    const span = humanDuration(end - start);
    const prefix = state.last != null ? `Last ${humanDuration(state.last)}` : "Window";
    el.windowLabel.textContent = `${prefix} · ${fmtDateTime(start)} → ${fmtDateTime(end)}`;
    el.windowLabel.title = `${span}, local time`;
  }

  function renderStatus() {
    const lens = stats.lastLens;
    const r = stats.lastRender;
    const parts = [
      `step ${humanDuration(lens.step)}`,
      `${lens.buckets.toLocaleString()} buckets`,
      lens.latencyMs == null ? null : `lens ${lens.latencyMs.toFixed(1)} ms`,
      `draw ${r.ms.toFixed(1)} ms`,
    ];
    el.status.textContent = parts.filter(Boolean).join(" · ");
  }

  function toggleCustom(open = el.customForm.hidden) {
    el.customForm.hidden = !open;
    el.customToggle.setAttribute("aria-expanded", String(open));
    if (open) {
      const { start, end } = shownWindow();
      el.customStart.value = toLocalInput(start);
      el.customEnd.value = toLocalInput(end);
      el.customStart.focus();
    }
  }

  // The value format of <input type="datetime-local">, in local time.
  function toLocalInput(ms) {
    return fmtDateTime(ms).replace(" ", "T");
  }

  function applyCustom(e) {
    e.preventDefault();
    // datetime-local has no zone; new Date("YYYY-MM-DDTHH:MM:SS") reads it as local time.
    const start = new Date(el.customStart.value).getTime();
    const end = new Date(el.customEnd.value).getTime();
    if (!Number.isFinite(start) || !Number.isFinite(end) || end <= start) {
      showMessage("error", "The custom window is not valid.", "“To” must be after “From”.");
      return;
    }
    toggleCustom(false);
    setWindow(start, end);
  }

  // ---------------------------------------------------------------- picker --

  async function loadCatalog() {
    try {
      const { body } = await fetchJson("/v1/sensors", undefined, "Could not list sensors.");
      catalog = body.sensors.map((s) => ({
        ...s,
        text: `#${s.sensor} ${s.sensor} ${labelText(s.labels)}`.toLowerCase(),
      }));
    } catch (err) {
      if (!(err instanceof RequestError)) throw err;
      const li = emptyRow(`${err.title} ${err.message}`);
      li.classList.add("error");
      el.list.replaceChildren(li);
      return;
    }
    renderPicker();
    if (plot && view) {
      buildLegend(view.ids); // the labels arrived after the first lens
      updateLegend();
    }
  }

  /* Label matchers in the search box ({kind="x",site=~"A|B"}) are evaluated
     by the server, as lenses evaluate them; `matched` holds its answer for
     the text in `matchedFor` (null while none has arrived). */
  let matched = null;
  let matchedFor = null;
  let matchError = null;
  let matchTimer = null;

  function isMatcher(text) {
    return text.trim().startsWith("{");
  }

  function onSearch() {
    const text = el.search.value.trim();
    clearTimeout(matchTimer);
    if (!isMatcher(text)) {
      renderPicker();
      return;
    }
    matchTimer = setTimeout(() => runMatch(text), 200);
  }

  async function runMatch(text) {
    try {
      const { body } = await fetchJson(`/v1/sensors?match=${encodeURIComponent(text)}`,
        undefined, "These matchers cannot be read.");
      matched = new Set(body.sensors.map((s) => s.sensor));
      matchError = null;
    } catch (err) {
      if (!(err instanceof RequestError)) throw err;
      matched = new Set();
      matchError = err.message;
    }
    matchedFor = text;
    renderPicker();
  }

  async function loadLabelNames() {
    try {
      const { body } = await fetchJson("/v1/labels", undefined, "Could not list labels.");
      if (!body.labels.length) return;
      const frag = document.createDocumentFragment();
      frag.append("Labels: ");
      for (const name of body.labels.slice(0, 12)) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "link";
        b.textContent = name;
        b.title = `Select by ${name}: {${name}="…"}`;
        b.addEventListener("click", () => insertMatcher(name));
        frag.append(b, " ");
      }
      el.labelNames.replaceChildren(frag);
      el.labelNames.hidden = false;
    } catch (err) {
      if (!(err instanceof RequestError)) throw err;
    }
  }

  // Adds NAME="" to the matchers in the search box (starting them if needed).
  function insertMatcher(name) {
    const text = el.search.value.trim();
    const inner = isMatcher(text) ? text.replace(/^\{|\}$/g, "").trim() : "";
    const head = inner ? `{${inner},${name}="` : `{${name}="`;
    el.search.value = `${head}"}`;
    el.search.focus();
    el.search.setSelectionRange(head.length, head.length);
  }

  function pickMatched() {
    const ids = [...matched].sort((a, b) => a - b);
    if (ids.length <= MAX_SENSORS) setSensors(ids);
  }

  function renderPicker() {
    const picked = state.sensors || [];
    const text = el.search.value.trim();
    const byMatch = isMatcher(text);
    const terms = byMatch ? [] : text.toLowerCase().split(/\s+/).filter(Boolean);
    const known = new Set(catalog.map((s) => s.sensor));
    // Picked sensors missing from the catalog (e.g. from a shared URL) stay visible.
    const extra = picked.filter((id) => !known.has(id)).map((id) => ({ sensor: id, labels: null, text: `#${id} ${id}` }));
    const selected = byMatch && matchedFor === text ? matched : null;
    const rows = [...extra, ...catalog].filter((s) =>
      byMatch ? selected == null || selected.has(s.sensor) : terms.every((t) => s.text.includes(t)));
    const full = picked.length >= MAX_SENSORS;
    const frag = document.createDocumentFragment();
    if (selected != null) frag.appendChild(matchRow(selected.size));
    for (const s of rows.slice(0, PICKER_LIMIT)) frag.appendChild(pickerRow(s, picked, full));
    if (!rows.length) frag.appendChild(emptyRow(catalog.length ? "No sensor matches the search." :
      "No sensors yet. Write points, or register one with PUT /v1/sensors/{id}."));
    if (rows.length > PICKER_LIMIT) frag.appendChild(emptyRow(`… ${rows.length - PICKER_LIMIT} more; refine the search.`));
    el.list.replaceChildren(frag);
    el.picked.textContent = `${picked.length} / ${MAX_SENSORS} picked`;
  }

  function pickerRow(s, picked, full) {
    const li = document.createElement("li");
    const pos = picked.indexOf(s.sensor);
    li.className = pos >= 0 ? "picked" : "";
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = s.sensor;
    box.checked = pos >= 0;
    box.disabled = full && pos < 0;
    const sw = document.createElement("span");
    sw.className = "swatch";
    if (pos >= 0) sw.style.background = colorOf(pos);
    const name = document.createElement("span");
    name.className = "sid";
    name.textContent = `#${s.sensor}`;
    const labels = document.createElement("span");
    labels.className = "labels";
    labels.textContent = s.labels ? labelText(s.labels) || "no labels" : "not in catalog";
    label.append(box, sw, name, labels);
    li.appendChild(label);
    if (box.disabled) li.title = `At most ${MAX_SENSORS} sensors per lens`;
    return li;
  }

  // The first row under matchers: how many they select, and a button to draw them all.
  function matchRow(n) {
    const li = emptyRow(matchError ? matchError :
      n === 0 ? "These matchers select no sensor." :
      n > MAX_SENSORS ? `These matchers select ${n} sensors; a lens takes at most ${MAX_SENSORS}.` :
      `These matchers select ${n} sensor${n === 1 ? "" : "s"}.`);
    li.classList.add("match");
    if (matchError) li.classList.add("error");
    if (!matchError && n > 0 && n <= MAX_SENSORS) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link";
      b.id = "pick-matched";
      b.textContent = n === 1 ? "Draw it" : `Draw all ${n}`;
      b.addEventListener("click", pickMatched);
      li.append(" ", b);
    }
    return li;
  }

  function emptyRow(text) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = text;
    return li;
  }

  function onPick(e) {
    const box = e.target;
    if (box.type !== "checkbox") return;
    const id = Number(box.value);
    const picked = (state.sensors || []).filter((s) => s !== id);
    if (box.checked) picked.push(id);
    setSensors(picked);
  }

  function setSensors(ids) {
    state.sensors = ids.slice(0, MAX_SENSORS);
    renderPicker();
    writeUrl();
    refresh();
  }

  // ------------------------------------------------------------------ keys --

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, textarea, select")) return;
    const actions = {
      ArrowLeft: () => pan(-0.5),
      ArrowRight: () => pan(0.5),
      "-": zoomOut,
      _: zoomOut,
      "+": zoomIn,
      "=": zoomIn,
      l: () => setLive(!state.live),
      L: () => setLive(!state.live),
      r: () => setRaw(!state.raw),
      R: () => setRaw(!state.raw),
    };
    const act = actions[e.key];
    if (act) {
      e.preventDefault();
      act();
    }
  }

  // ------------------------------------------------------------------ init --

  function bindControls() {
    el.presets.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-last]");
      if (b) setLast(parseDuration(b.dataset.last));
    });
    el.customToggle.addEventListener("click", () => toggleCustom());
    el.customForm.addEventListener("submit", applyCustom);
    $("pan-left").addEventListener("click", () => pan(-0.5));
    $("pan-right").addEventListener("click", () => pan(0.5));
    $("zoom-out").addEventListener("click", zoomOut);
    $("zoom-in").addEventListener("click", zoomIn);
    el.live.addEventListener("click", () => setLive(!state.live));
    el.raw.addEventListener("click", () => setRaw(!state.raw));
    el.search.addEventListener("input", onSearch);
    $("clear-sensors").addEventListener("click", () => setSensors([]));
    el.list.addEventListener("change", onPick);
    el.wrap.addEventListener("mousedown", onPanStart, true);
    document.addEventListener("keydown", onKey);
    watchSize();
  }

  // Resize the canvas at once; refetch a little later since the point count follows the width.
  function watchSize() {
    let timer = null;
    let lastWidth = el.wrap.clientWidth;
    new ResizeObserver(() => {
      if (!plot) return;
      plot.setSize(chartSize());
      if (Math.abs(el.wrap.clientWidth - lastWidth) < 20) return;
      lastWidth = el.wrap.clientWidth;
      clearTimeout(timer);
      timer = setTimeout(() => refresh({ background: state.live }), 250);
    }).observe(el.wrap);
  }

  async function init() {
    bindControls();
    // The button shows the URL's live state at once; its timer starts once
    // the sensors are known (below).
    el.live.setAttribute("aria-pressed", String(state.live));
    el.raw.setAttribute("aria-pressed", String(state.raw));
    renderWindowControls();
    if (urlProblems.length) {
      el.notice.textContent = `${urlProblems.join("; ")}: showing the last ` +
        `${humanDuration(state.last)} instead.`;
      el.notice.hidden = false;
    }
    const defaultPick = state.sensors == null; // no sensors= in the URL at all
    if (!defaultPick) refresh();
    await loadCatalog();
    loadLabelNames();
    if (defaultPick) {
      state.sensors = catalog.length ? [catalog[0].sensor] : [];
      renderPicker();
      refresh();
    }
    writeUrl();
    setLive(state.live, { quiet: true });
  }

  // For debugging from the console and for the browser tests.
  window.lenshouse = {
    get plot() { return plot; },
    get view() { return view; },
    state,
    refresh,
    setWindow,
    setLast,
    setLive,
    setRaw,
    zoomOut,
    zoomIn,
    pan,
  };

  init();
})();
