"""The lens engine: plans a lens, runs it as one ClickHouse query, and checks
that no load changed what it read while it ran."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lenshouse.ingest.visibility import Snapshot, Visibility
from lenshouse.lens.planner import Segment, plan, raw_span
from lenshouse.lens.steps import bucket_count, choose_step
from lenshouse.points import BadInput, check_tenant
from lenshouse.storage.backend import Backend

AGGS = ("avg", "min", "max", "count")
MAX_SENSORS = 10
MAX_BUCKETS = 20_000
# A load in flight holds back rollups from its oldest point on; past this much
# raw reading it is cheaper to wait for the load to finish.
MAX_HEAD_RAW_MS = 30_000
# Reads that may race a load before a lens reads with loads held back.
OPTIMISTIC_READS = 3
MAX_EXPORT_ROWS = 50_000_000


@dataclass
class Series:
    sensor: int
    t: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @property
    def avg(self) -> np.ndarray:
        return self.sum / self.count


@dataclass
class Lens:
    start: int
    end: int
    step: int
    series: list[Series]
    segments: list[Segment] = field(default_factory=list)
    retries: int = 0

    def to_json(self, aggs: tuple[str, ...] = AGGS) -> dict:
        out = []
        for s in self.series:
            item: dict = {"sensor": s.sensor, "t": s.t.tolist()}
            for a in aggs:
                item[a] = (s.avg if a == "avg" else getattr(s, a)).tolist()
            out.append(item)
        return {"start": self.start, "end": self.end, "step": self.step, "series": out}


def parse_sensors(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput("sensors must be a comma-separated list of integer ids", 422) from None
    if not 1 <= len(ids) <= MAX_SENSORS:
        raise BadInput(f"a lens takes 1 to {MAX_SENSORS} sensors, got {len(ids)}", 422)
    if any(not 0 <= i < 2**32 for i in ids):
        raise BadInput("sensor ids are 0 .. 2^32-1", 422)
    return list(dict.fromkeys(ids))


def parse_aggs(text: str | None) -> tuple[str, ...]:
    if not text:
        return AGGS
    aggs = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in aggs if a not in AGGS]
    if bad or not aggs:
        raise BadInput(f"agg must be a subset of {','.join(AGGS)}; got {text!r}", 422)
    return aggs


class LensEngine:
    def __init__(self, backend: Backend, visibility: Visibility) -> None:
        self.backend = backend
        self.visibility = visibility

    def resolve_step(self, start: int, end: int, points: int | None, step: int | None) -> int:
        if end <= start:
            raise BadInput(f"end ({end}) must be after start ({start})", 422)
        if step is not None:
            if step < 1:
                raise BadInput("step must be at least 1 ms", 422)
            if bucket_count(start, end, step) > MAX_BUCKETS:
                raise BadInput(f"step {step} gives more than {MAX_BUCKETS} buckets", 422)
            return step
        points = 2500 if points is None else points
        if not 1 <= points <= MAX_BUCKETS:
            raise BadInput(f"points must be 1..{MAX_BUCKETS}", 422)
        return choose_step(start, end, points)

    def lens(
        self,
        sensors: list[int],
        start: int,
        end: int,
        points: int | None = None,
        step: int | None = None,
        tenant: str | None = None,
    ) -> Lens:
        tenant = check_tenant(tenant)
        step = self.resolve_step(start, end, points, step)
        for attempt in range(OPTIMISTIC_READS):
            snap = self.visibility.snapshot()
            cut = self._head_cut(snap, tenant, start, end)
            segments = plan(start, end, step, cut)
            extra_raw = raw_span(segments) - raw_span(plan(start, end, step)) if cut else 0
            if extra_raw > MAX_HEAD_RAW_MS:
                break  # cheaper to read with loads held back than to read that much raw
            # Raw rows of a load in flight are hidden by their seq; with none in
            # flight, the cheaper unfiltered read is checked afterwards instead.
            table = self.backend.query(
                self._sql(tenant, sensors, step, segments, snap.committed_seq if cut else None)
            )
            if self._still_valid(snap, tenant, segments, raw_checked=cut is None):
                return self._result(table, sensors, start, end, step, segments, attempt)
        with self.visibility.quiet():
            segments = plan(start, end, step)
            table = self.backend.query(self._sql(tenant, sensors, step, segments, None))
        return self._result(table, sensors, start, end, step, segments, OPTIMISTIC_READS)

    def export(
        self, sensors: list[int], start: int, end: int, tenant: str | None = None
    ) -> pa.Table:
        """Raw points of completed loads in [start, end), ordered by sensor and time."""
        if end <= start:
            raise BadInput(f"end ({end}) must be after start ({start})", 422)
        tenant = check_tenant(tenant)
        seq = self.visibility.snapshot().committed_seq
        ids = ",".join(map(str, sensors))
        return self.backend.query(
            f"SELECT sensor, ts, value FROM raw WHERE tenant = '{tenant}' AND sensor IN ({ids})"
            f" AND ts >= {start} AND ts < {end} AND seq <= {seq} ORDER BY sensor, ts"
            f" LIMIT {MAX_EXPORT_ROWS + 1}"
        ).select(["sensor", "ts", "value"])

    @staticmethod
    def _head_cut(snap: Snapshot, tenant: str, start: int, end: int) -> int | None:
        cuts = [s.min_ts for s in snap.inflight if s.touches(tenant, start, end)]
        return min(cuts) if cuts else None

    def _still_valid(
        self, snap: Snapshot, tenant: str, segments: list[Segment], raw_checked: bool
    ) -> bool:
        """False if a load begun during the read wrote rows it used: rollup cells,
        and raw rows too when they were read without a seq filter."""
        newer = self.visibility.started_since(snap)
        if newer is None:
            return False
        return not any(
            span.touches(tenant, seg.lo, seg.hi)
            for span in newer
            for seg in segments
            if seg.tier is not None or raw_checked
        )

    @staticmethod
    def _sql(
        tenant: str, sensors: list[int], step: int, segments: list[Segment], max_seq: int | None
    ) -> str:
        """One query over all segments; raw rows up to ``max_seq`` when given."""
        ids = ",".join(map(str, sensors))
        where = f"tenant = '{tenant}' AND sensor IN ({ids})"
        parts = []
        raw = [s for s in segments if s.tier is None]
        if raw and (max_seq is None or max_seq >= 0):
            ranges = " OR ".join(f"(ts >= {s.lo} AND ts < {s.hi})" for s in raw)
            seq = "" if max_seq is None else f" AND seq <= {max_seq}"
            parts.append(
                "SELECT sensor, ts AS t, value AS s, toUInt64(1) AS c, value AS mn, value AS mx"
                f" FROM raw WHERE {where}{seq} AND ({ranges})"
            )
        by_tier: dict[str, list[Segment]] = {}
        for s in segments:
            if s.tier is not None:
                by_tier.setdefault(s.tier.table, []).append(s)
        for table, segs in by_tier.items():
            ranges = " OR ".join(f"(t >= {s.lo} AND t < {s.hi})" for s in segs)
            parts.append(
                "SELECT sensor, t, sum AS s, cnt AS c, min AS mn, max AS mx"
                f" FROM {table} WHERE {where} AND ({ranges})"
            )
        if not parts:
            parts.append(
                "SELECT toUInt32(0) AS sensor, toInt64(0) AS t, 0.0 AS s, toUInt64(0) AS c,"
                " 0.0 AS mn, 0.0 AS mx WHERE 0"
            )
        union = " UNION ALL ".join(parts)
        return (
            f"SELECT sensor, intDiv(t, {step}) AS b, sum(s) AS sum, sum(c) AS cnt,"
            f" min(mn) AS min, max(mx) AS max FROM ({union})"
            " GROUP BY sensor, b ORDER BY sensor, b"  # measured: faster than unordered
        )

    @staticmethod
    def _result(
        table: pa.Table,
        sensors: list[int],
        start: int,
        end: int,
        step: int,
        segments: list[Segment],
        retries: int,
    ) -> Lens:
        cols = {name: table.column(name).to_numpy() for name in table.column_names}
        series = []
        for sensor in sensors:
            m = cols["sensor"] == sensor
            series.append(
                Series(
                    sensor,
                    cols["b"][m].astype(np.int64) * step,
                    cols["sum"][m],
                    cols["cnt"][m].astype(np.int64),
                    cols["min"][m],
                    cols["max"][m],
                )
            )
        return Lens(start, end, step, series, segments, retries)
