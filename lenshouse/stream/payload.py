"""A batch as a log message: the points as an Arrow IPC stream (LZ4 frames),
the tenant in a header."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lenshouse.points import PointBatch

TENANT_HEADER = "Lh-Tenant"
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
