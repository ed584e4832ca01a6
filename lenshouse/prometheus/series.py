"""Series → sensors: each distinct label set a tenant writes through remote
write is a sensor of the catalog, with those labels (``__name__`` included).

A new label set gets the id its hash names in the upper half of the id space
(2^31 … 2^32−1), or the next free one after it if that id is taken (by another
label set, or by a sensor written without labels). The catalog keeps the
mapping, so ids are stable across restarts: on first use of a tenant the
mapping is read back from it, and a label set always maps to the id it was
first given.

Ownership: one object per server, used by request threads; ``_ids`` and
``_taken`` are guarded by ``_lock``, which also serialises the allocation of
new ids (and their catalog insert) per process.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable

from lenshouse.prometheus.remote_write import Labels
from lenshouse.storage.catalog import Catalog, check_labels

BASE = 2**31
SPAN = 2**31


def labels_key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def preferred_id(labels: Labels) -> int:
    text = "\x00".join(f"{k}\x01{v}" for k, v in labels).encode()
    h = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
    return BASE + h % SPAN


class SeriesIds:
    def __init__(self, catalog: Catalog, in_use: Callable[[str], Iterable[int]]) -> None:
        """``in_use(tenant)``: ids holding points (labelled or not), which a
        new label set must not take."""
        self.catalog = catalog
        self.in_use = in_use
        self._lock = threading.Lock()
        self._ids: dict[str, dict[Labels, int]] = {}
        self._taken: dict[str, set[int]] = {}

    def ids(self, tenant: str, label_sets: list[Labels]) -> list[int]:
        """The sensor of each label set, registering new ones in the catalog
        first (so no point is stored under an id the catalog does not name)."""
        with self._lock:
            known = self._tenant(tenant)
            new: dict[int, dict[str, str]] = {}
            out = []
            for labels in label_sets:
                sensor = known.get(labels)
                if sensor is None:
                    sensor = self._allocate(tenant, labels)
                    new[sensor] = dict(labels)
                    known[labels] = sensor
                out.append(sensor)
            if new:
                try:
                    self.catalog.put_many(tenant, new)
                except Exception:
                    for labels in label_sets:  # not registered: forget them, so a retry registers
                        sensor = known.get(labels)
                        if sensor in new:
                            del known[labels]
                            self._taken[tenant].discard(sensor)
                    raise
            return out

    def _tenant(self, tenant: str) -> dict[Labels, int]:
        known = self._ids.get(tenant)
        if known is None:
            known, taken = {}, set(self.in_use(tenant))
            for entry in self.catalog.list(tenant):
                taken.add(entry["sensor"])
                known.setdefault(labels_key(entry["labels"]), entry["sensor"])
            self._ids[tenant], self._taken[tenant] = known, taken
        return known

    def _allocate(self, tenant: str, labels: Labels) -> int:
        taken = self._taken[tenant]
        sensor = preferred_id(labels)
        for _ in range(SPAN):  # bounded; ends at the first free id
            if sensor not in taken:
                break
            sensor = BASE + (sensor - BASE + 1) % SPAN
        taken.add(sensor)
        return sensor


def check_series_labels(labels: Labels) -> str | None:
    """Why a label set cannot name a sensor, or None."""
    try:
        check_labels(dict(labels))
    except ValueError as e:
        return str(e)
    if len({k for k, _ in labels}) != len(labels):
        return "a label name appears twice"
    return None
