"""A batch as a log message: the points as an Arrow IPC stream (LZ4 frames),
the tenant in a header. A delete is a message of kind ``erase`` whose body is
``{"sensors": [...], "start": ms, "end": ms}``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from lenshouse.points import Erasure, PointBatch

TENANT_HEADER = "Lh-Tenant"
KIND_HEADER = "Lh-Kind"
ERASE = "erase"
SCHEMA = pa.schema([("sensor", pa.uint32()), ("ts", pa.int64()), ("value", pa.float64())])
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def encode(batch: PointBatch) -> bytes:
    rb = pa.RecordBatch.from_arrays(
        [pa.array(batch.sensor), pa.array(batch.ts), pa.array(batch.value)], schema=SCHEMA
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA, options=_OPTIONS) as w:
        w.write_batch(rb)
    return sink.getvalue().to_pybytes()


def decode(data: bytes, tenant: str) -> PointBatch:
    """The batch of a message written by :func:`encode` (already validated by
    the gateway that published it)."""
    table = pa.ipc.open_stream(data).read_all()
    if table.schema != SCHEMA:
        raise ValueError(f"log message has schema {table.schema}, expected {SCHEMA}")

    def col(name: str, kind: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(kind, copy=False)

    return PointBatch(
        tenant, col("sensor", np.uint32), col("ts", np.int64), col("value", np.float64)
    )


def encode_erasure(erasure: Erasure) -> bytes:
    doc = {"sensors": erasure.sensor.tolist(), "start": erasure.start, "end": erasure.end}
    return json.dumps(doc).encode()


def decode_message(data: bytes, headers: dict[str, str] | None) -> PointBatch | Erasure:
    """A log message's batch or delete, by its headers."""
    headers = headers or {}
    tenant = headers.get(TENANT_HEADER, "default")
    if headers.get(KIND_HEADER) == ERASE:
        doc = json.loads(data)
        sensors = np.array(doc["sensors"], np.uint32)
        return Erasure(tenant, sensors, int(doc["start"]), int(doc["end"]))
    return decode(data, tenant)
