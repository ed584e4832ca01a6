"""A lens as asked and as answered: the request once checked and put on its
grid, the answer's series of buckets and their JSON and Arrow encodings, and
the parsing of what a client sends (sensors, aggregates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from lenshouse.lens.planner import Segment
from lenshouse.points import Invalid
from lenshouse.retention.horizons import Floor
from lenshouse.rollup.m4 import M4, M4_AGGS

AGGS = ("avg", "min", "max", "count")  # the default
ALL_AGGS = AGGS + M4_AGGS
MAX_SENSORS = 10


@dataclass
class Series:
    sensor: int
    t: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    m4: M4 | None = None  # when asked: each bucket's first, last, lowest and highest point

    @property
    def avg(self) -> np.ndarray:
        return self.sum / self.count

    def column(self, agg: str) -> np.ndarray:
        """One aggregate of every bucket (an M4 one only if the lens asked)."""
        if agg == "avg":
            return self.avg
        if agg in M4_AGGS:
            if self.m4 is None:
                raise ValueError(f"{agg}: this lens was read without M4 points")
            return getattr(self.m4, agg)
        return getattr(self, agg)


class Grid(NamedTuple):
    step: int
    origin: int = 0
    m4: bool = False  # read each bucket's M4 points too


@dataclass(frozen=True)
class LensRequest:
    """What a lens asks once checked and put on its grid: a tenant's sensors,
    the window of whole buckets, the buckets (``grid``) and the expiry floor
    the window meets (None while raw points hold its start)."""

    tenant: str
    sensors: list[int]
    start: int
    end: int
    grid: Grid
    floor: Floor | None = None


@dataclass
class Lens:
    start: int
    end: int
    step: int
    series: list[Series]
    segments: list[Segment] = field(default_factory=list)
    retries: int = 0
    floor: Floor | None = None  # set when expired sources raised the step
    origin: int = 0  # buckets start at origin + n·step
    watermark: int = 0  # the loads it reflects (Snapshot.watermark), for ETags

    def to_json(self, aggs: tuple[str, ...] = AGGS) -> dict:
        """The answer as a JSON-ready dict; columns stay numpy arrays (orjson
        writes them directly)."""
        out = []
        for s in self.series:
            item: dict = {"sensor": s.sensor, "t": np.ascontiguousarray(s.t)}
            for a in aggs:
                item[a] = np.ascontiguousarray(s.column(a))
            out.append(item)
        doc = {"start": self.start, "end": self.end, "step": self.step, "series": out}
        if self.floor is not None:
            doc["floor"] = self.floor.to_json()
        return doc

    def to_arrow(self, aggs: tuple[str, ...] = AGGS) -> pa.Table:
        """The answer as one Arrow table, a row per non-empty bucket in
        (sensor, t) order; start, end and step in the schema's metadata."""
        cols: dict[str, pa.Array] = {
            "sensor": pa.array(
                np.repeat(
                    np.array([s.sensor for s in self.series], np.uint32),
                    [len(s.t) for s in self.series],
                )
            ),
            "t": pa.array(_joined([s.t for s in self.series], np.int64)),
        }
        for a in aggs:
            kind = np.int64 if a == "count" or a.startswith("t") else np.float64
            parts = [s.column(a) for s in self.series]
            cols[a] = pa.array(_joined(parts, kind))
        meta = {"start": str(self.start), "end": str(self.end), "step": str(self.step)}
        if self.floor is not None:
            meta["floor"] = self.floor.reason
        return pa.table(cols).replace_schema_metadata(meta)


def _joined(parts: list[np.ndarray], kind: type) -> np.ndarray:
    return np.concatenate(parts).astype(kind, copy=False) if parts else np.empty(0, kind)


def parse_sensors(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise Invalid("sensors must be a comma-separated list of integer ids") from None
    if not 1 <= len(ids) <= MAX_SENSORS:
        raise Invalid(f"a lens takes 1 to {MAX_SENSORS} sensors, got {len(ids)}")
    if any(not 0 <= i < 2**32 for i in ids):
        raise Invalid("sensor ids are 0 .. 2^32-1")
    return list(dict.fromkeys(ids))


def parse_aggs(text: str | None) -> tuple[str, ...]:
    if not text:
        return AGGS
    aggs = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in aggs if a not in ALL_AGGS]
    if bad or not aggs:
        raise Invalid(f"agg must be a subset of {','.join(ALL_AGGS)}; got {text!r}")
    return aggs


def wants_m4(aggs: tuple[str, ...]) -> bool:
    return any(a in M4_AGGS for a in aggs)
