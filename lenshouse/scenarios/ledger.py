"""What a scenario sent, what the server acknowledged, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lenshouse.client import Client, Lens, LenshouseError
from lenshouse.generators.sender import SendStats, batch_client, encode_arrow
from lenshouse.lens.oracle import brute_force, mismatch
from lenshouse.points import PointBatch


class JsonSeries:
    """A lens series from JSON, shaped like the engine's for the oracle check."""

    def __init__(self, doc: dict) -> None:
        self.sensor = doc["sensor"]
        self.t = np.asarray(doc["t"], np.int64)
        self.count = np.asarray(doc["count"], np.int64)
        self.min = np.asarray(doc["min"], np.float64)
        self.max = np.asarray(doc["max"], np.float64)
        self.avg = np.asarray(doc["avg"], np.float64)
        if "tfirst" in doc:  # the M4 points, when the lens asked for them
            for name in ("tfirst", "tlast", "tmin", "tmax"):
                setattr(self, name, np.asarray(doc[name], np.int64))
            for name in ("first", "last"):
                setattr(self, name, np.asarray(doc[name], np.float64))


@dataclass
class Ledger:
    tenant: str = "default"
    token: str | None = None  # the bearer token its requests carry (tenant's or admin's)
    sent_points: int = 0
    acked: list[PointBatch] = field(default_factory=list)
    stats: SendStats = field(default_factory=SendStats)
    _distinct: tuple | None = None

    def client(self, url: str | list[str], give_up_after: float = 180.0, **kw) -> Client:
        """A client that sends this ledger's batches until acknowledged, its
        retries counted in the ledger's stats."""
        return batch_client(url, self.tenant, self.stats, give_up_after, self.token, **kw)

    def reader(self, url: str, retries: int = 5) -> Client:
        """A client that reads as this ledger's tenant."""
        return Client(url, token=self.token, tenant=self.tenant, timeout=120.0, retries=retries)

    def send(self, client: Client, batch: PointBatch) -> None:
        """POST until acknowledged (``client``: from :meth:`client`), then
        remember the batch as accepted."""
        self.sent_points += len(batch)
        client.write_body(encode_arrow(batch))
        self.acked.append(batch)
        self._distinct = None

    def distinct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Acknowledged keys with their first value, sorted by (sensor, ts)."""
        if self._distinct is None:
            s = np.concatenate([b.sensor for b in self.acked]).astype(np.int64)
            t = np.concatenate([b.ts for b in self.acked])
            v = np.concatenate([b.value for b in self.acked])
            order = np.lexsort((np.arange(len(t)), t, s))  # stable: first arrival first
            s, t, v = s[order], t[order], v[order]
            first = np.concatenate(([True], (np.diff(s) != 0) | (np.diff(t) != 0)))
            self._distinct = (s[first], t[first], v[first])
        return self._distinct


@dataclass
class Verdict:
    name: str
    sent: int
    distinct: int
    stored: int
    lost: int
    dup: int
    wrong: int
    checks_ok: int
    checks: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.dup == 0 and self.wrong == 0 and self.checks_ok == self.checks
        )

    def line(self) -> str:
        return (
            f"scenario {self.name}: sent={self.sent} distinct={self.distinct} stored={self.stored}"
            f" lost={self.lost} dup={self.dup} wrong={self.wrong}"
            f" lens_checks={self.checks_ok}/{self.checks} {'exact' if self.ok else 'FAILED'}"
        )


def fetch_stored(
    url: str, tenant: str, sensors: list[int], start: int, end: int, token: str | None = None
):
    """Every stored point of the sensors in [start, end), through the export
    (ten sensors a request, every continuation followed)."""
    with Client(url, token=token, tenant=tenant, timeout=120.0) as client:
        parts = [client.export(sensors[i : i + 10], start, end) for i in range(0, len(sensors), 10)]
    t = pa.concat_tables(parts)
    return (t.column("sensor").to_numpy().astype(np.int64), t.column("ts").to_numpy(),
            t.column("value").to_numpy())  # fmt: skip


def lens_checks(
    url: str, ledger: Ledger, rng: np.random.Generator, n: int
) -> tuple[int, list[str]]:
    """``n`` random lenses compared with the oracle over acknowledged points."""
    s, t, v = ledger.distinct()
    sensors = np.unique(s)
    lo, hi = int(t.min()), int(t.max()) + 1
    ok, problems = 0, []
    with ledger.reader(url, retries=0) as client:
        for _ in range(n):
            params = random_lens(rng, sensors, lo, hi)
            try:
                lens = ask(client, params)
            except LenshouseError as e:
                problems.append(f"lens {params}: HTTP {e}"[:300])
                continue
            bad = check_answer(lens, s, t, v)
            if bad:
                problems.append(f"lens {params} {bad}")
            ok += bad is None
    return ok, problems


def random_lens(rng: np.random.Generator, sensors: np.ndarray, lo: int, hi: int) -> dict:
    """Query parameters of a random lens: 1–10 sensors, a window around
    [lo, hi), 10–3000 points."""
    a = int(rng.integers(lo - 1000, hi))
    b = int(rng.integers(a + 1, hi + 2000))
    pick = rng.choice(sensors, size=min(len(sensors), int(rng.integers(1, 11))), replace=False)
    return {"sensors": [int(x) for x in pick], "start": a, "end": b,
            "points": int(rng.integers(10, 3000))}  # fmt: skip


def ask(client: Client, params: dict) -> Lens:
    """The lens of :func:`random_lens`'s parameters."""
    return client.lens(params["sensors"], params["start"], params["end"], points=params["points"])


def check_answer(lens: Lens, s: np.ndarray, t: np.ndarray, v: np.ndarray) -> str | None:
    """What is wrong with a lens answer against the oracle over the distinct
    points (s, t, v), or None if every series is exact."""
    for series in lens.series:
        m = s == series.sensor
        expected = brute_force(t[m], v[m], lens.start, lens.end, lens.step)
        bad = mismatch(series, expected)
        if bad:
            return f"sensor {series.sensor}: {bad}"
    return None


def verdict(name: str, url: str, ledger: Ledger, rng: np.random.Generator, checks: int) -> Verdict:
    s, t, v = ledger.distinct()
    ss, st, sv = fetch_stored(url, ledger.tenant, np.unique(s).tolist(), int(t.min()),
                              int(t.max()) + 1, ledger.token)  # fmt: skip
    ids = np.unique(np.concatenate([s, ss]))
    key = (np.searchsorted(ids, s) << 42) + t
    skey = (np.searchsorted(ids, ss) << 42) + st
    ukey, first_idx, counts = np.unique(skey, return_index=True, return_counts=True)
    pos = np.minimum(np.searchsorted(ukey, key), max(len(ukey) - 1, 0))
    present = (ukey[pos] == key) if len(ukey) else np.zeros(len(key), bool)
    lost = int((~present).sum())
    dup = int((counts - 1).sum())
    extra = int(len(ukey) - present.sum())  # stored keys never acknowledged
    wrong = int((sv[first_idx[pos[present]]] != v[present]).sum()) + extra
    ok, problems = lens_checks(url, ledger, rng, checks)
    return Verdict(name, ledger.sent_points, len(t), len(st), lost, dup, wrong, ok, checks,
                   problems[:5])  # fmt: skip
