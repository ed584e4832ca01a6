"""Ingest: how many points per second go from an HTTP client in another
process through the durable log into raw data and every rollup tier, next to
what chDB itself can insert into a bare table on the same machine, in the
same run.

* **ceiling**: a separate process opens its own chDB, creates a MergeTree
  table with the raw table's columns, codecs and order but no rollups, and
  inserts 1M-row Arrow tables (``INSERT … SELECT * FROM Python(table)``, the
  loader's own method) back to back. Rows per second of insert time. A second
  ceiling does the same with the rollup tiers kept as lenshouse keeps them.
* **arrow**: a client process posts 1-second batches of the generator's fleet
  (every sensor, ``Content-Type: application/vnd.apache.arrow.stream``) as
  fast as the server acknowledges them, from ``senders`` threads, for the
  run's duration. Every point is unique (timestamps move on by one second per
  batch). Its end-to-end rate counts a point once it is durable *and* loaded
  into raw and the rollups: all points sent ÷ (sending time + the time the
  loader needed to finish), so a loader that falls behind shows.
* **json / lineproto**: the same, shorter, with smaller bodies. Bodies are
  encoded before the run (for a 10-second block of data) and moved on in time
  by rewriting the timestamps' leading digits, so the client spends almost no
  CPU and every point is still unique.
"""

from __future__ import annotations

import itertools
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lenshouse.bench.common import (
    BenchConfig,
    BenchServer,
    MachineCpu,
    process_cpu_seconds,
    relative_timeline,
    run_threads,
    sampler,
    spawn,
)
from lenshouse.bench.console import console

ARROW = "application/vnd.apache.arrow.stream"
INSERT_SETTINGS = "max_insert_threads = 1"
JSON = "application/json"
LINE = "text/plain"
CONTENT_TYPES = {"arrow": ARROW, "json": JSON, "lineproto": LINE}


def _start_ms(hours_back: float = 6.0) -> int:
    """A start far enough in the past that no run reaches the present, on a
    10-second boundary (the text formats rewrite timestamps by 10 s blocks)."""
    now = int(time.time() * 1000)
    return (now - int(hours_back * 3_600_000)) // 10_000 * 10_000


# -- the ceiling: bare chDB inserts, in its own process ---------------------------


def ceiling_process(
    path: str,
    seconds: float,
    sensors: int,
    rate_hz: int,
    batch_rows: int = 1_000_000,
    rollups: bool = False,
) -> dict:
    """Insert ``batch_rows``-row Arrow tables into a plain MergeTree for
    ``seconds``; with ``rollups``, into the raw table and their cells
    (computed as the loader does, and timed with the inserts) into the first
    tier, whose views fill the others: the share of the ceiling that keeping
    rollups costs, before HTTP, the log and dedup."""
    import chdb
    import numpy as np
    import pyarrow as pa

    from lenshouse.bench.prepare import fleet_chunk
    from lenshouse.generators.signals import Fleet
    from lenshouse.rollup.cells import cells
    from lenshouse.rollup.tiers import TIERS, tier_source
    from lenshouse.storage.cell_sql import tier_table_ddl, tier_view_ddl
    from lenshouse.storage.schema import raw_ddl

    Path(path).mkdir(parents=True, exist_ok=True)
    conn = chdb.connect(path)
    if rollups:
        conn.query(raw_ddl(0))
        for tier in TIERS:
            conn.query(tier_table_ddl(tier, 0))
            if tier_source(tier) is not None:
                conn.query(tier_view_ddl(tier))
        table = "raw"
    else:
        conn.query(raw_ddl(0, "plain"))  # the raw table's columns, codecs and merges
        table = "plain"
    fleet = Fleet(sensors=sensors, rate_hz=rate_hz, start_ms=_start_ms())
    per_batch_s = max(1, math.ceil(batch_rows / (sensors * rate_hz)))
    pool = []
    for i in range(4):
        b = fleet_chunk(fleet, i * per_batch_s, per_batch_s)
        pool.append(b)
    tenant = pa.DictionaryArray.from_arrays(np.zeros(len(pool[0]), np.int32), pa.array(["default"]))
    rows_total, insert_s, timeline = 0, 0.0, []
    cpu0 = process_cpu_seconds()
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < seconds:
        b = pool[k % 4]
        shift = (k // 4) * 4 * per_batch_s * 1000
        rows = pa.table(  # noqa: F841 - read by chDB's Python() table function
            {
                "tenant": tenant,
                "sensor": b.sensor,
                "ts": b.ts + shift,
                "value": b.value,
                "seq": np.full(len(b), k, np.uint64),
            }
        )
        t = time.monotonic()
        conn.query(f"INSERT INTO {table} SELECT * FROM Python(rows) SETTINGS {INSERT_SETTINGS}")
        if rollups:
            codes = np.zeros(len(b), np.int32)
            c = cells(codes, ["default"], b.sensor, b.ts + shift, b.value)  # noqa: F841
            conn.query(
                f"INSERT INTO {TIERS[0].table} SELECT * FROM Python(c) SETTINGS {INSERT_SETTINGS}"
            )
        dt = time.monotonic() - t
        insert_s += dt
        rows_total += len(b)
        timeline.append([round(t - t0, 3), len(b), round(dt, 4)])
        k += 1
    wall = time.monotonic() - t0
    cpu = process_cpu_seconds() - cpu0
    counted = int(conn.query(f"SELECT count() FROM {table}", "CSV").data().strip())
    in_tiers = [
        int(conn.query(f"SELECT sum(cnt) FROM {t.table}", "CSV").data().strip())
        for t in (TIERS if rollups else ())
    ]
    conn.close()
    return {
        "rows": rows_total,
        "rows_in_table": counted,
        "rows_in_tiers": in_tiers,
        "batch_rows": len(pool[0]),
        "inserts": k,
        "insert_seconds": insert_s,
        "wall_seconds": wall,
        "rows_per_s": rows_total / insert_s if insert_s > 0 else 0.0,
        "rows_per_wall_s": rows_total / wall if wall > 0 else 0.0,
        "rollups": rollups,
        "cpu_seconds": cpu,
        "timeline": timeline,
    }


# -- HTTP clients, in their own processes -----------------------------------------


def _post_as_fast_as_acked(
    url: str,
    seconds: float,
    senders: int,
    tenant: str,
    body_for: Callable[[int], tuple[bytes, int]],
    content_type: str,
    path: str = "/v1/write",
    bodies: int | None = None,
    encoding: str | None = None,
) -> dict:
    """``senders`` threads post ``body_for(k)`` (body, points) for k = 0, 1, …
    to ``path``, back to back for ``seconds`` (or until ``bodies`` are
    acknowledged); every acknowledgement is timed."""
    from lenshouse.generators.sender import SendStats, batch_client

    counter = itertools.count()
    lock = threading.Lock()
    acks: list[list[float]] = []  # [seconds since start, points, request seconds]
    stats = SendStats()
    errors: list[str] = []
    t0 = time.monotonic()
    stop_at = t0 + seconds

    def sender() -> None:
        with batch_client(url, tenant, stats, 120.0, timeout=120.0) as client:
            while time.monotonic() < stop_at:
                k = next(counter)
                if bodies is not None and k >= bodies:
                    return
                body, n = body_for(k)
                t = time.monotonic()
                try:
                    client.write_body(body, content_type, path=path, encoding=encoding)
                except (RuntimeError, TimeoutError) as e:
                    errors.append(str(e)[:200])
                    return
                done = time.monotonic()
                with lock:
                    acks.append([round(done - t0, 4), n, round(done - t, 4)])

    cpu0 = process_cpu_seconds()
    run_threads(sender, senders)
    elapsed = time.monotonic() - t0
    acks.sort()
    return {
        "points": sum(a[1] for a in acks),
        "batches": len(acks),
        "retries": stats.retries,
        "errors": errors,
        "elapsed": elapsed,
        "cpu_seconds": process_cpu_seconds() - cpu0,
        "acks": acks,
    }


def arrow_client(
    url: str,
    sensors: int,
    rate_hz: int,
    start_ms: int,
    seconds: float,
    senders: int = 2,
    tenant: str = "default",
) -> dict:
    """Post 1-second fleet batches as fast as they are acknowledged."""
    import numpy as np

    from lenshouse.generators.sender import encode_arrow
    from lenshouse.generators.signals import Fleet
    from lenshouse.points import PointBatch

    fleet = Fleet(sensors=sensors, rate_hz=rate_hz, start_ms=start_ms)
    pool = [fleet.second(k, tenant) for k in range(4)]

    def body_for(k: int) -> tuple[bytes, int]:
        b = pool[k % 4]
        shifted = PointBatch(tenant, b.sensor, b.ts + np.int64((k // 4) * 4000), b.value)
        return encode_arrow(shifted), len(shifted)

    return _post_as_fast_as_acked(url, seconds, senders, tenant, body_for, ARROW)


def _text_bodies(
    fmt: str, sensors: int, rate_hz: int, start_ms: int, first_id: int, shape: str = "generator"
) -> list:
    """Ten bodies, one per second of the first 10-second block. ``shape``
    "generator": the fleet's 16-bit signals, one tag; "float": full-precision
    floats (10 + sin + 0.05·N(0,1), printed ``%.17g``) and three tags."""
    import numpy as np
    import orjson

    from lenshouse.generators.signals import Fleet, full_precision

    fleet = Fleet(sensors=sensors, rate_hz=rate_hz, start_ms=start_ms, first_id=first_id)
    rng = np.random.default_rng(first_id)
    out = []
    for k in range(10):
        b = fleet.second(k)
        value = b.value
        if shape == "float":
            value = full_precision(b.sensor, b.ts, rng)
        if fmt == "json":
            body = orjson.dumps(
                {"sensor": b.sensor, "ts": b.ts, "value": value},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
        elif fmt == "json_points":
            body = orjson.dumps(
                {
                    "points": [
                        {"sensor": s, "ts": t, "value": v}
                        for s, t, v in zip(b.sensor.tolist(), b.ts.tolist(), value.tolist())
                    ]
                }
            )
        else:
            tags = ",kind=vibration,line=3,site=A" if shape == "float" else ""
            body = "".join(
                f"sensor,id={s}{tags} value={v:.17g} {t}\n"
                for s, t, v in zip(b.sensor.tolist(), b.ts.tolist(), value.tolist())
            ).encode()
        out.append((body, len(b)))
    return out


def _shift_text(fmt: str, body: bytes, start_ms: int, block: int) -> bytes:
    """Move a body of the first block ``block`` 10-second blocks on: rewrite the
    leading digits of every timestamp (the same width, so nothing else moves)."""
    if block == 0:
        return body
    old = str(start_ms // 10_000).encode()
    new = str(start_ms // 10_000 + block).encode()
    if len(new) != len(old):
        raise ValueError("timestamp width changed")
    if fmt == "json":
        return body.replace(b"[" + old, b"[" + new).replace(b"," + old, b"," + new)
    if fmt == "json_points":
        return body.replace(b'"ts":' + old, b'"ts":' + new)
    return body.replace(b" " + old, b" " + new)


def text_client(
    url: str,
    fmt: str,
    sensors: int,
    rate_hz: int,
    start_ms: int,
    seconds: float,
    senders: int = 1,
    tenant: str = "default",
    first_id: int = 1,
    shape: str = "generator",
    path: str = "/v1/write",
    bodies: int | None = None,
) -> dict:
    """Post JSON or line-protocol bodies (``sensors`` × 1 s each) to ``path``
    as fast as acknowledged: for ``seconds``, or ``bodies`` of them (the
    first ``bodies`` seconds of those sensors' data)."""
    encoded = _text_bodies(fmt, sensors, rate_hz, start_ms, first_id, shape)

    def body_for(k: int) -> tuple[bytes, int]:
        raw, n = encoded[k % 10]
        return _shift_text(fmt, raw, start_ms, k // 10), n

    content_type = CONTENT_TYPES["json" if fmt == "json_points" else fmt]
    out = _post_as_fast_as_acked(
        url, seconds, senders, tenant, body_for, content_type, path, bodies
    )
    return {**out, "body_bytes": len(encoded[0][0])}


# -- one phase against the server ---------------------------------------------------


def _phase(srv: BenchServer, child, drain_timeout: float, label: str) -> dict:
    """Sample the server while ``child`` (or a list of children) sends; then
    wait until all is loaded."""
    before = srv.ingest_counters()
    cpu0 = process_cpu_seconds()
    machine = MachineCpu()
    t0 = time.monotonic()
    with sampler(srv.ingest_counters, every=0.5) as samples:
        sent = _merged(
            [c.result(timeout=None) for c in (child if isinstance(child, list) else [child])]
        )
        t_sent = time.monotonic()
        drained = srv.wait_loaded(drain_timeout)
        t_loaded = time.monotonic()
    after = srv.ingest_counters()
    server_cpu = process_cpu_seconds() - cpu0
    machine_cores = machine.busy_cores()
    # The client's clock starts after its imports; align on its first ack.
    send_s = sent["elapsed"]
    drain_s = t_loaded - t_sent
    accepted = after["accepted"] - before["accepted"]
    loaded = after["loaded"] - before["loaded"]
    timeline = relative_timeline(samples, before)
    rate = sent["points"] / (send_s + drain_s) if send_s + drain_s > 0 else 0.0
    doc = {
        "points_sent": sent["points"],
        "points_accepted": accepted,
        "points_loaded": loaded,
        "batches": sent["batches"],
        "retries": sent["retries"],
        "errors": sent["errors"],
        "send_seconds": send_s,
        "drain_seconds": drain_s,
        "drained": drained,
        "accepted_per_s": sent["points"] / send_s if send_s > 0 else 0.0,
        "end_to_end_per_s": rate,
        "loaded_while_sending_per_s": _loaded_rate(timeline, t_sent - t0),
        "max_lag_s": max((s["lag_s"] for s in timeline), default=0.0),
        "server_cpu_seconds": server_cpu,
        "server_cores": server_cpu / (t_loaded - t0) if t_loaded > t0 else 0.0,
        "client_cpu_seconds": sent["cpu_seconds"],
        "client_cores": sent["cpu_seconds"] / send_s if send_s > 0 else 0.0,
        "machine_busy_cores": machine_cores,
        "timeline": timeline,
        "acks": sent["acks"],
    }
    for k in ("body_bytes",):
        if k in sent:
            doc[k] = sent[k]
    console.print(
        f"  {label}: {doc['points_sent']:,} points, accepted {doc['accepted_per_s']:,.0f}/s,"
        f" end to end {doc['end_to_end_per_s']:,.0f}/s (drain {drain_s:.1f} s),"
        f" cores: server {doc['server_cores']:.2f}, client {doc['client_cores']:.2f},"
        f" machine {machine_cores:.2f}"
    )
    return doc


def _merged(results: list[dict]) -> dict:
    """The clients' results as one sender's."""
    if len(results) == 1:
        return results[0]
    out = {**results[0]}
    for k in ("points", "batches", "retries", "cpu_seconds"):
        out[k] = sum(r[k] for r in results)
    out["elapsed"] = max(r["elapsed"] for r in results)
    out["errors"] = [e for r in results for e in r["errors"]]
    out["acks"] = sorted(a for r in results for a in r["acks"])
    return out


def _loaded_rate(timeline: list[dict], until: float, warmup: float = 5.0) -> float:
    """Loaded points per second between ``warmup`` and ``until`` (while sending)."""
    pts = [s for s in timeline if s["t"] <= until]
    if len(pts) < 2:
        return 0.0
    lo = next((s for s in pts if s["t"] >= min(warmup, until / 4)), pts[0])
    hi = pts[-1]
    return (hi["loaded"] - lo["loaded"]) / (hi["t"] - lo["t"]) if hi["t"] > lo["t"] else 0.0


# (result key, format): the full-precision float runs, each from several clients
# (their names and targets: lenshouse.bench.report.FLOAT_NAMES).
FLOAT_RUNS = (
    ("lineproto_float", "lineproto"),
    ("json_float", "json"),
    ("json_points_float", "json_points"),
)


def _text_phase(
    srv: BenchServer,
    cfg: BenchConfig,
    workdir: Path,
    start: int,
    fmt: str,
    key: str,
    clients: int,
    shape: str = "generator",
) -> dict:
    """``clients`` processes posting ``fmt`` bodies (tenant ``key``, each its
    own sensors), measured as one phase."""
    kids = [
        spawn(
            text_client,
            srv.url,
            fmt,
            cfg.format_batch_sensors,
            cfg.ingest_rate_hz,
            start,
            cfg.format_duration,
            1,
            key,
            1 + k * cfg.format_batch_sensors,
            shape,
            name=f"{key}-client-{k}",
            workdir=workdir,
        )
        for k in range(clients)
    ]
    return _phase(srv, kids, cfg.drain_timeout, key)


def run_ingest(cfg: BenchConfig, workdir: Path) -> dict:
    workdir = Path(workdir)
    console.rule("[bold]ingest")
    # 1. the ceilings, alone on the machine: a bare table, then with rollups
    seconds = cfg.ceiling_duration or cfg.duration
    ceiling = _ceiling(cfg, workdir, seconds, rollups=False)
    with_views = _ceiling(cfg, workdir, max(1, seconds // 3), rollups=True)
    out: dict = {"ceiling": ceiling, "ceiling_with_rollups": with_views}
    data = workdir / "ingest"
    shutil.rmtree(data, ignore_errors=True)
    start = _start_ms()
    with BenchServer(data, block_cache_mb=cfg.block_cache_mb) as srv:
        console.print(
            f"  Arrow over HTTP: {cfg.ingest_sensors} sensors × {cfg.ingest_rate_hz} Hz"
            f" per batch, {cfg.ingest_senders} senders, {cfg.duration} s…"
        )
        child = spawn(
            arrow_client,
            srv.url,
            cfg.ingest_sensors,
            cfg.ingest_rate_hz,
            start,
            cfg.duration,
            cfg.ingest_senders,
            "default",
            name="arrow-client",
            workdir=workdir,
        )
        out["arrow"] = _phase(srv, child, cfg.drain_timeout, "arrow")
        for fmt in ("json", "lineproto"):
            out[fmt] = _text_phase(srv, cfg, workdir, start, fmt, fmt, clients=1)
        # The same payloads as the peers were measured with: full-precision
        # floats, 100 sensors × 1 s a body, from several client processes.
        for key, fmt in FLOAT_RUNS:
            out[key] = _text_phase(
                srv, cfg, workdir, start, fmt, key, clients=cfg.format_clients, shape="float"
            )
    shutil.rmtree(data, ignore_errors=True)
    arrow = out["arrow"]["end_to_end_per_s"]
    out["ratio"] = arrow / ceiling["rows_per_s"] if ceiling["rows_per_s"] else 0.0
    views = with_views["rows_per_s"]
    out["ratio_to_rollup_ceiling"] = arrow / views if views else 0.0
    return out


def _ceiling(cfg: BenchConfig, workdir: Path, seconds: int, rollups: bool) -> dict:
    path = workdir / "ceiling"
    shutil.rmtree(path, ignore_errors=True)
    what = "with the rollups" if rollups else "bare"
    console.print(f"  chDB insert ceiling, {what} ({seconds} s)…")
    ceiling = spawn(
        ceiling_process,
        str(path),
        seconds,
        cfg.ingest_sensors,
        cfg.ingest_rate_hz,
        rollups=rollups,
        name="ceiling",
        workdir=workdir,
    ).result(timeout=seconds + 300)
    shutil.rmtree(path, ignore_errors=True)
    console.print(
        f"  ceiling, {what}: {ceiling['rows_per_s']:,.0f} rows/s of insert time"
        f" ({ceiling['rows']:,} rows in {ceiling['inserts']} inserts,"
        f" {ceiling['rows_per_wall_s']:,.0f} rows/s wall)"
    )
    return ceiling
