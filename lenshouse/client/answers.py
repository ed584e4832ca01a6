"""What the client sends and reads back: lens parameters, Arrow bodies, and
lens answers as numpy columns per sensor (shared by the sync and async client)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

ARROW = "application/vnd.apache.arrow.stream"
_BASIC = ("t", "avg", "min", "max", "count")
_M4 = ("first", "last", "tfirst", "tlast", "tmin", "tmax")


@dataclass
class Series:
    sensor: int
    t: np.ndarray  # bucket starts, epoch ms
    avg: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    # With ``m4=True``: each bucket's first and last point, and the times of
    # its lowest and highest value (the earliest, on a tie).
    first: np.ndarray | None = None
    last: np.ndarray | None = None
    tfirst: np.ndarray | None = None
    tlast: np.ndarray | None = None
    tmin: np.ndarray | None = None
    tmax: np.ndarray | None = None


@dataclass
class Lens:
    start: int
    end: int
    step: int
    series: list[Series]

    def __getitem__(self, sensor: int) -> Series:
        for s in self.series:
            if s.sensor == sensor:
                return s
        raise KeyError(sensor)


def ids_param(sensors: Iterable[int]) -> str:
    return ",".join(str(int(s)) for s in sensors)


def lens_params(
    sensors: Iterable[int] | None,
    start: int,
    end: int,
    points: int | None = None,
    step: int | None = None,
    match: str | None = None,
    m4: bool = False,
    answer: str = "arrow",
) -> dict[str, Any]:
    params: dict[str, Any] = {"start": start, "end": end, "format": answer}
    if m4:
        params["agg"] = ",".join(_BASIC[1:] + _M4)
    asked = [int(s) for s in sensors] if sensors is not None else []
    if asked:
        params["sensors"] = ids_param(asked)
    for k, v in (("points", points), ("step", step), ("match", match)):
        if v is not None:
            params[k] = v
    return params


def read_lens(body: bytes, sensors: Iterable[int] | None, m4: bool = False) -> Lens:
    """An Arrow lens answer as a :class:`Lens`: every sensor asked by id (one
    without points in the window has empty columns), then those only the
    matchers selected."""
    table = pa.ipc.open_stream(body).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    asked = [int(s) for s in sensors] if sensors is not None else []
    series = []
    for sensor in dict.fromkeys([*asked, *cols["sensor"].tolist()]):
        m = cols["sensor"] == sensor
        extra = {k: cols[k][m] for k in _M4} if m4 else {}
        series.append(Series(int(sensor), *(cols[k][m] for k in _BASIC), **extra))
    return Lens(int(meta["start"]), int(meta["end"]), int(meta["step"]), series)


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()
