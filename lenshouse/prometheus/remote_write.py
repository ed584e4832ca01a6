"""Prometheus remote-write (protocol 1.0): snappy-compressed ``WriteRequest``
protobuf messages, decoded to series of samples.

The message types are built from a descriptor here rather than generated
code: only the fields lenshouse reads are declared (``prompb/types.proto`` and
``remote.proto`` of Prometheus: a series' labels and samples, and its native
histograms, which are counted and skipped). Other fields (exemplars,
metadata) parse as unknown fields and are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cramjam
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from lenshouse.points import BadInput, TooLarge, Unsupported

CONTENT_TYPE = "application/x-protobuf"
# Prometheus marks a series that disappeared with this NaN (value/value.go):
# an end-of-series mark, not a sample.
STALE_NAN_BITS = 0x7FF0000000000002
MAX_DECODED_BYTES = 512 << 20

Labels = tuple[tuple[str, str], ...]  # sorted by name, as Prometheus sends them


@dataclass(frozen=True)
class RemoteSeries:
    labels: Labels
    ts: np.ndarray  # int64 epoch ms
    value: np.ndarray  # float64


@dataclass(frozen=True)
class WriteRequest:
    series: list[RemoteSeries]
    stale_markers: int  # samples that were Prometheus' staleness marks
    histograms: int  # native-histogram samples (not stored)


def _message_classes():
    f = descriptor_pb2.FileDescriptorProto(name="lenshouse_prompb.proto", package="lhprompb")
    f.syntax = "proto3"
    rep, opt = (
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    T = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, label, kind, type_name in fields:
            fd = m.field.add(name=fname, number=number, label=label, type=kind)
            if type_name:
                fd.type_name = type_name

    message("Label", ("name", 1, opt, T.TYPE_STRING, ""), ("value", 2, opt, T.TYPE_STRING, ""))
    message("Sample", ("value", 1, opt, T.TYPE_DOUBLE, ""), ("timestamp", 2, opt, T.TYPE_INT64, ""))
    message(
        "TimeSeries",
        ("labels", 1, rep, T.TYPE_MESSAGE, ".lhprompb.Label"),
        ("samples", 2, rep, T.TYPE_MESSAGE, ".lhprompb.Sample"),
        ("histograms", 4, rep, T.TYPE_BYTES, ""),  # only counted
    )
    message("WriteRequest", ("timeseries", 1, rep, T.TYPE_MESSAGE, ".lhprompb.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"lhprompb.{name}"))
        for name in ("WriteRequest", "TimeSeries", "Label", "Sample")
    }


_CLASSES = _message_classes()
_WriteRequest = _CLASSES["WriteRequest"]


def decode_write_request(body: bytes, content_encoding: str | None = "snappy") -> WriteRequest:
    """A remote-write body → its series; 400 for a body that is not one."""
    if (content_encoding or "").strip().lower() != "snappy":
        raise Unsupported(
            f"remote write bodies are snappy-compressed (Content-Encoding: snappy);"
            f" got {content_encoding!r}"
        )
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:  # cramjam raises its own DecompressionError
        raise BadInput(f"body is not snappy block-compressed: {e}") from None
    if len(raw) > MAX_DECODED_BYTES:
        raise TooLarge(f"decompressed body exceeds {MAX_DECODED_BYTES} bytes")
    msg = _WriteRequest()
    try:
        msg.ParseFromString(raw)
    except Exception as e:  # google.protobuf.message.DecodeError
        raise BadInput(f"body is not a Prometheus WriteRequest: {e}") from None
    series, stale, histograms = [], 0, 0
    for ts in msg.timeseries:
        histograms += len(ts.histograms)
        n = len(ts.samples)
        if not n:
            continue
        value = np.fromiter((s.value for s in ts.samples), np.float64, n)
        stamp = np.fromiter((s.timestamp for s in ts.samples), np.int64, n)
        marks = value.view(np.uint64) == STALE_NAN_BITS
        if marks.any():
            stale += int(marks.sum())
            value, stamp = value[~marks], stamp[~marks]
        labels = tuple(sorted((lab.name, lab.value) for lab in ts.labels))
        series.append(RemoteSeries(labels, stamp, value))
    return WriteRequest(series, stale, histograms)


def encode_write_request(series: list[RemoteSeries]) -> bytes:
    """The snappy-compressed body Prometheus would send for ``series``; for
    clients, the load generator and tests."""
    msg = _WriteRequest()
    for s in series:
        ts = msg.timeseries.add()
        for name, value in s.labels:
            ts.labels.add(name=name, value=value)
        for t, v in zip(s.ts.tolist(), s.value.tolist()):
            ts.samples.add(value=v, timestamp=t)
    return bytes(cramjam.snappy.compress_raw(msg.SerializeToString()))


def stale_nan() -> float:
    """Prometheus' staleness marker as a float."""
    return struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
