"""Data preparation at full speed: generated sensor data written straight
into a node's ingest path (log, loader, raw and every rollup tier) in large
chunks, with no HTTP and no real-time pacing.

Chunks come from :func:`fleet_chunk`, which computes the same signal as
:meth:`Fleet.second <lenshouse.generators.signals.Fleet.second>` (sine plus
noise, quantised to the 16-bit ADC grid) for many seconds at once; only the
noise is drawn from a per-chunk random stream. A marker file per dataset
records what was written, so a bench re-run on the same ``--data`` skips it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lenshouse.bench.console import console
from lenshouse.generators.signals import Fleet, full_precision
from lenshouse.points import PointBatch


@dataclass(frozen=True)
class Dataset:
    """``sensors`` ids from ``first_id`` at ``rate_hz``, over [start_ms, end_ms)."""

    name: str
    tenant: str
    first_id: int
    sensors: int
    rate_hz: int
    start_ms: int
    seconds: int
    seed: int = 0
    exact: bool = False  # build each second with Fleet.second itself (slower, exact)
    # "adc": the fleet's 16-bit values; "float": full-precision 10 + sin + 0.05·N(0,1)
    values: str = "adc"

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.seconds * 1000

    @property
    def points(self) -> int:
        return self.sensors * self.rate_hz * self.seconds

    @property
    def ids(self) -> list[int]:
        return list(range(self.first_id, self.first_id + self.sensors))

    def fleet(self) -> Fleet:
        return Fleet(
            sensors=self.sensors,
            rate_hz=self.rate_hz,
            start_ms=self.start_ms,
            seed=self.seed,
            first_id=self.first_id,
        )


def check_loader(node) -> None:
    """Raise if the node's loader thread has died (it logs why), rather than
    waiting for loads that will never come."""
    if not node.ingestor.loader.running:
        raise RuntimeError("the loader thread stopped; see the log above for its error")


def fleet_chunk(fleet: Fleet, k0: int, n: int, tenant: str = "default") -> PointBatch:
    """Seconds ``k0 .. k0+n-1`` of every sensor in one batch, sensor-major."""
    p = fleet.params()
    k = np.arange(k0, k0 + n, dtype=np.int64)
    rel = (k[:, None] * 1000 + fleet.offsets_ms()[None, :]).ravel()  # ms since start
    t = rel / 1000.0
    signal = p["amp"][:, None] * np.sin(2 * np.pi * p["freq"][:, None] * t + p["phase"][:, None])
    signal += p["offset"][:, None]
    rng = np.random.default_rng((fleet.seed, k0, n, 7919))
    signal += rng.standard_normal(signal.shape) * (p["noise"][:, None] * fleet.lsb)
    half = 2 ** (fleet.bits - 1)
    code = np.clip(np.rint(signal / fleet.lsb), -half, half - 1)
    return PointBatch(
        tenant,
        np.repeat(fleet.ids, len(rel)),
        np.tile(fleet.start_ms + rel, fleet.sensors),
        (code * fleet.lsb).ravel(),
    )


def chunks(ds: Dataset, chunk_points: int = 1_000_000) -> Iterator[PointBatch]:
    if ds.values == "float":
        yield from _float_chunks(ds, chunk_points)
        return
    yield from _adc_chunks(ds, chunk_points)


def _float_chunks(ds: Dataset, chunk_points: int) -> Iterator[PointBatch]:
    """The fleet's sensors and timestamps with full-precision values, the
    shape the peers were compared on (lenshouse.bench.ingest)."""
    for i, b in enumerate(_adc_chunks(ds, chunk_points)):
        rng = np.random.default_rng((ds.seed, i))
        yield PointBatch(b.tenant, b.sensor, b.ts, full_precision(b.sensor, b.ts, rng))


def _adc_chunks(ds: Dataset, chunk_points: int) -> Iterator[PointBatch]:
    fleet = ds.fleet()
    per_second = ds.sensors * ds.rate_hz
    step = max(1, chunk_points // per_second)
    for k0 in range(0, ds.seconds, step):
        n = min(step, ds.seconds - k0)
        if not ds.exact:
            yield fleet_chunk(fleet, k0, n, ds.tenant)
            continue
        parts = [fleet.second(k, ds.tenant) for k in range(k0, k0 + n)]
        yield PointBatch(
            ds.tenant,
            np.concatenate([b.sensor for b in parts]),
            np.concatenate([b.ts for b in parts]),
            np.concatenate([b.value for b in parts]),
        )


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("points"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _marker(data_dir: Path, ds: Dataset) -> Path:
    return Path(data_dir) / f"dataset-{ds.name}.json"


def is_prepared(data_dir: Path, ds: Dataset) -> bool:
    m = _marker(data_dir, ds)
    return m.exists() and json.loads(m.read_text()).get("dataset") == asdict(ds)


def write_dataset(
    node,
    ds: Dataset,
    chunk_points: int = 1_000_000,
    max_queued: int = 8_000_000,
    progress: Progress | None = None,
) -> dict:
    """Write ``ds`` through ``node.ingestor.write_sync``, wait until it is all
    visible, and return what it cost. Chunks are generated in a thread ahead
    of the writer; the writer waits while the loader has ``max_queued`` points
    to do, so memory stays bounded."""
    if is_prepared(node.data_dir, ds):
        return {"dataset": asdict(ds), "skipped": True}
    ing = node.ingestor
    q: queue.Queue[PointBatch | None] = queue.Queue(maxsize=3)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for batch in chunks(ds, chunk_points):
                q.put(batch)
        except BaseException as e:  # surfaced below
            failure.append(e)
        finally:
            q.put(None)

    own = progress is None
    progress = progress or progress_bar()
    if own:
        progress.start()
    task = progress.add_task(f"prepare {ds.name}", total=ds.points)
    t0 = time.monotonic()
    written = 0
    loaded0 = ing.loader.stats.rows_loaded
    producer = threading.Thread(target=produce, name=f"gen-{ds.name}", daemon=True)
    producer.start()
    last_lsn = -1
    try:
        while (batch := q.get()) is not None:
            while ing.loader.stats.queued_rows > max_queued:
                check_loader(node)
                time.sleep(0.01)
            last_lsn = ing.write_sync(batch)
            written += len(batch)
            progress.update(task, completed=ing.loader.stats.rows_loaded - loaded0)
        if failure:
            raise failure[0]
        while not ing.wait_visible(last_lsn, timeout=0.25):
            check_loader(node)
            progress.update(task, completed=ing.loader.stats.rows_loaded - loaded0)
        progress.update(task, completed=ing.loader.stats.rows_loaded - loaded0)
    finally:
        if own:
            progress.stop()
    seconds = time.monotonic() - t0
    doc = {
        "dataset": asdict(ds),
        "points": written,
        "seconds": seconds,
        "points_per_s": written / seconds if seconds > 0 else 0.0,
        "skipped": False,
    }
    _marker(node.data_dir, ds).write_text(json.dumps(doc))
    return doc
