"""The sensor catalog: which sensors exist per tenant, with their labels."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pyarrow as pa

from lenshouse.matchers import Matcher
from lenshouse.points import Invalid, check_tenant
from lenshouse.storage.store import Store

MAX_LABELS = 32


def check_labels(labels: object) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise Invalid("labels must be a JSON object of string keys and values")
    if len(labels) > MAX_LABELS:
        raise Invalid(f"at most {MAX_LABELS} labels per sensor")
    for k, v in labels.items():
        if not isinstance(v, str) or not k or len(k) > 64 or len(v) > 256:
            raise Invalid("labels must map names (1-64 chars) to string values (<= 256 chars)")
    return dict(labels)


class Catalog:
    def __init__(
        self, store: Store, series: Callable[[str], dict[int, dict[str, str]]] | None = None
    ) -> None:
        """``series(tenant)``: sensors whose labels are kept elsewhere (a
        cluster's remote-write series, in the keeper); labels the store's
        entry of the same id sets win."""
        self.store = store
        self.series = series

    def put(self, tenant: str, sensor: int, labels: dict[str, str]) -> None:
        self.put_many(tenant, {sensor: labels})

    def put_many(self, tenant: str, labels_of: dict[int, dict[str, str]]) -> None:
        """Register sensors with their labels, in one insert."""
        if not labels_of:
            return
        version = time.time_ns()
        table = pa.table(
            {
                "tenant": [check_tenant(tenant)] * len(labels_of),
                "sensor": pa.array(list(labels_of), pa.uint32()),
                "labels": [json.dumps(check_labels(v), sort_keys=True) for v in labels_of.values()],
                "version": pa.array([version] * len(labels_of), pa.int64()),
            }
        )
        self.store.put_sensors(table)

    def select(self, tenant: str, matchers: list[Matcher]) -> list[int]:
        """The ids of the tenant's sensors whose labels satisfy every matcher."""
        return [s["sensor"] for s in self.list(tenant, matchers)]

    def label_names(self, tenant: str) -> list[str]:
        return sorted({k for s in self.list(tenant) for k in s["labels"]})

    def label_values(self, tenant: str, name: str) -> list[str]:
        return sorted({s["labels"][name] for s in self.list(tenant) if name in s["labels"]})

    def list(self, tenant: str, matchers: list[Matcher] | None = None) -> list[dict]:
        rows = self.store.sensors_of(check_tenant(tenant))
        entries = {
            sensor: json.loads(labels)
            for sensor, labels in zip(
                rows.column("sensor").to_pylist(), rows.column("labels").to_pylist()
            )
        }
        if self.series is not None:  # under the catalog's own labels (loaders register
            for sensor, labels in self.series(tenant).items():  # ids on first write, bare)
                entries[sensor] = {**labels, **entries.get(sensor, {})}
        return [
            {"sensor": sensor, "labels": lab}
            for sensor, lab in sorted(entries.items())
            if not matchers or all(m.matches(lab) for m in matchers)
        ]
