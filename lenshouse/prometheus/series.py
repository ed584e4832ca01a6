"""Series → sensors: each distinct label set a tenant writes through remote
write is a sensor of the catalog, with those labels (``__name__`` included).
:class:`SeriesIds` keeps the mapping in the store's catalog (the embedded
server); :class:`KeeperSeriesIds` in the keeper, where every gateway of a
cluster allocates alike and the lens servers read the labels back.

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
import json
import threading
from collections.abc import Callable, Iterable

from kazoo.exceptions import NodeExistsError, NoNodeError

from lenshouse.coordination.zk import keeper_errors
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
    """Each tenant's label sets and the sensor ids they were given.

    Ownership: any request thread calls ``ids``; ``_lock`` guards ``_ids`` and
    ``_taken`` (read, filled and rolled back under it, the catalog write too,
    so two requests never give one id to two label sets)."""

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


class KeeperSeriesIds:
    """The cluster's mapping: one znode per series, ``<root>/series/<tenant>/<id>``
    holding its labels (JSON). Creating the znode of an id claims it, so two
    gateways that see a new label set at once agree on its id, and two label
    sets whose hashes name the same id get different ones. Ids of sensors
    written without labels are not known here: in a cluster, ids from 2^31 on
    belong to remote-write series.

    Ownership: request threads; ``_ids`` and ``_labels`` guarded by ``_lock``."""

    def __init__(self, zk, root: str) -> None:
        self.zk = zk
        self.root = f"{root}/series"
        self._lock = threading.Lock()
        self._ids: dict[str, dict[Labels, int]] = {}
        self._labels: dict[str, tuple[int, dict[int, dict[str, str]]]] = {}

    def ids(self, tenant: str, label_sets: list[Labels]) -> list[int]:
        out = []
        for labels in label_sets:
            with self._lock:
                sensor = self._ids.setdefault(tenant, {}).get(labels)
            if sensor is None:
                with keeper_errors("claiming a series id"):  # a 503: the client retries
                    sensor = self._claim(tenant, labels)
                with self._lock:
                    self._ids[tenant][labels] = sensor
            out.append(sensor)
        return out

    def _claim(self, tenant: str, labels: Labels) -> int:
        data = json.dumps(dict(labels), sort_keys=True).encode()
        sensor = preferred_id(labels)
        for _ in range(SPAN):  # bounded; ends at this label set's znode or a free id
            path = f"{self.root}/{tenant}/{sensor}"
            try:
                self.zk.create(path, data, makepath=True)
                return sensor
            except NodeExistsError:
                try:
                    held, _ = self.zk.get(path)
                except NoNodeError:
                    continue  # removed meanwhile: claim it again
                if held == data:
                    return sensor
            sensor = BASE + (sensor - BASE + 1) % SPAN
        raise RuntimeError("no free series id")  # 2^31 series of one tenant

    def labels_of(self, tenant: str) -> dict[int, dict[str, str]]:
        """Every series of the tenant and its labels; read again only when a
        series was added (the tenant znode's child version moved)."""
        path = f"{self.root}/{tenant}"
        with keeper_errors("reading the series' labels"):
            stat = self.zk.exists(path)
            if stat is None:
                return {}
            with self._lock:
                known = self._labels.get(tenant)
            if known is not None and known[0] == stat.cversion:
                return known[1]
            found = dict(known[1]) if known else {}
            for child in self.zk.get_children(path):
                sensor = int(child)
                if sensor not in found:
                    data, _ = self.zk.get(f"{path}/{child}")
                    found[sensor] = json.loads(data)
        with self._lock:
            self._labels[tenant] = (stat.cversion, found)
        return found


def check_series_labels(labels: Labels) -> str | None:
    """Why a label set cannot name a sensor, or None."""
    try:
        check_labels(dict(labels))
    except ValueError as e:
        return str(e)
    if len({k for k, _ in labels}) != len(labels):
        return "a label name appears twice"
    return None
