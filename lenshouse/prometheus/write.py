"""A decoded remote-write request → one point batch of the tenant.

Every sample is a point of its series' sensor, with Prometheus' ms timestamp.
Duplicates and late samples follow the store's rule for all writes: the first
value stored for a (sensor, ts) wins. Samples lenshouse cannot store are
counted, not stored: Prometheus' staleness marks (a series ended; lenshouse
keeps no such mark), other NaN and ±Inf values (a lens aggregates numbers),
and native histograms. A series whose labels the catalog cannot hold is
skipped and named in the answer (400), after the other series are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lenshouse.points import PointBatch
from lenshouse.prometheus.remote_write import WriteRequest
from lenshouse.prometheus.series import SeriesIds, check_series_labels


@dataclass
class Converted:
    batch: PointBatch
    non_finite: int = 0
    refused: list[str] = field(default_factory=list)  # why each skipped series was


def to_batch(req: WriteRequest, tenant: str, ids: SeriesIds) -> Converted:
    good, refused = [], []
    for s in req.series:
        problem = check_series_labels(s.labels)
        if problem is None:
            good.append(s)
        else:
            name = dict(s.labels).get("__name__", "")
            refused.append(f"series {name}{{{len(s.labels)} labels}}: {problem}")
    sensors = ids.ids(tenant, [s.labels for s in good]) if good else []
    n = np.array([len(s.ts) for s in good], np.int64)
    sensor = np.repeat(np.array(sensors, np.uint32), n)
    ts = np.concatenate([s.ts for s in good]) if good else np.empty(0, np.int64)
    value = np.concatenate([s.value for s in good]) if good else np.empty(0)
    finite = np.isfinite(value)
    dropped = int(len(value) - finite.sum())
    if dropped:
        sensor, ts, value = sensor[finite], ts[finite], value[finite]
    return Converted(PointBatch(tenant, sensor, ts, value), dropped, refused)
