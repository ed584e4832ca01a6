"""Maintenance: expire what each tenant's retention no longer keeps.

One run, in this order:

1. For every tenant and source, the cut its policy gives now (the start of the
   newest partition wholly past its keep). Where a cut is above the tenant's
   expiry mark, the mark moves up to it.
2. The new marks are written, and the run waits ``settle_s``: every reader
   (lens servers, loaders, the embedded engine) reads marks every few seconds,
   and from then on plans lenses below a mark from the tiers that hold them,
   so no lens ever reads what is about to go.
3. Each partition wholly below the marks of every tenant with data in it is
   dropped (cheap on every server); a partition shared with a tenant that still
   keeps it loses only the expired tenants' rows (a delete mutation). Tiers
   that share a table (a cluster's coarser tiers) drop a partition once every
   one of them has expired it; until then a tier expired alone loses its rows
   by a delete (which ClickHouse 18.16 leaves queued: its rows stay, unread,
   below the marks).

Marks never go down: lengthening a retention later keeps what is left, and
never pretends to hold what is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pyarrow as pa

from lenshouse.points import check_tenant
from lenshouse.retention.horizons import REFRESH_S, STALE_S, Horizons
from lenshouse.retention.policy import (
    ALL_TENANTS,
    SOURCES,
    Policy,
    merged,
    parse_policy,
    tier_of,
)
from lenshouse.storage.store import Store

# Readers refresh marks every REFRESH_S and trust them for STALE_S when a
# refresh fails; a lens read that began just before may retry for up to about
# 25 s more (the cluster store's read patience).
SETTLE_S = REFRESH_S + STALE_S + 30.0
HOUR_MS = 3_600_000
_NEG = -(2**62)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """One thing a run does to one partition of one source."""

    source: str
    partition: int
    lo: int
    hi: int
    kind: str  # "drop": the whole partition; "delete": the tenants' rows in it
    tenants: tuple[str, ...]
    bytes: int
    rows: int
    done: bool = True  # False: a delete the server finishes later

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "partition": self.partition,
            "from": self.lo,
            "to": self.hi,
            "kind": self.kind,
            "tenants": list(self.tenants),
            "bytes": self.bytes,
            "rows": self.rows,
            "done": self.done,
        }


@dataclass
class Report:
    marks: list[tuple[str, str, int]] = field(default_factory=list)  # written this run
    actions: list[Action] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    moved: list[tuple[str, int]] = field(default_factory=list)  # (table, partition) made cold

    @property
    def dropped_bytes(self) -> int:
        return sum(a.bytes for a in self.actions if a.kind == "drop")

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "marks": [{"tenant": t, "source": s, "before": b} for t, s, b in self.marks],
            "actions": [a.to_json() for a in self.actions],
            "dropped_bytes": self.dropped_bytes,
            "moved_cold": [{"table": t, "partition": p} for t, p in self.moved],
            "seconds": round(self.seconds, 3),
        }


# -- policies ------------------------------------------------------------------
def policy_rows(store: Store) -> dict[tuple[str, str], int | None]:
    """(tenant or "*", source) → keep in ms (None: forever), as stored."""
    out: dict[tuple[str, str], int | None] = {}
    for r in store.retention_rows().to_pylist():
        if r["source"] in SOURCES:
            out[(r["tenant"], r["source"])] = None if r["keep_ms"] < 0 else int(r["keep_ms"])
    return out


def policy_of(store: Store, tenant: str) -> Policy:
    return merged(policy_rows(store), tenant)


def set_policy(store: Store, tenant: str, keep: Mapping[str, str]) -> Policy:
    """Store ``keep`` ({"raw": "30d", ...}) for a tenant, or for every tenant
    ("*"); the result must keep coarser sources at least as long as finer."""
    if tenant != ALL_TENANTS:
        check_tenant(tenant)
    rows = policy_rows(store)
    current = merged(rows, tenant)
    parsed = parse_policy(keep, current)
    version = time.time_ns()
    table = pa.table({
        "tenant": pa.array([tenant] * len(parsed), pa.string()),
        "source": pa.array(list(parsed), pa.string()),
        "keep_ms": pa.array([-1 if v is None else v for v in parsed.values()], pa.int64()),
        "version": pa.array([version] * len(parsed), pa.int64()),
    })  # fmt: skip
    store.put_retention(table)
    if tenant == ALL_TENANTS:  # every tenant's own rows must still fit under it
        rows.update({(ALL_TENANTS, s): v for s, v in parsed.items()})
        for who in {t for t, _ in rows if t != ALL_TENANTS}:
            merged(rows, who)
    return policy_of(store, tenant)


def policies(store: Store) -> dict[str, Policy]:
    """The every-tenant policy ("*") and each tenant's own."""
    rows = policy_rows(store)
    who = {ALL_TENANTS} | {t for t, _ in rows}
    return {t: merged(rows, t) for t in sorted(who)}


# -- one run -------------------------------------------------------------------
def _marks(store: Store) -> dict[tuple[str, str], int]:
    return {(r["tenant"], r["source"]): int(r["before"]) for r in store.expiry_marks().to_pylist()}


def run(
    store: Store,
    now_ms: int | None = None,
    settle_s: float = SETTLE_S,
    dry_run: bool = False,
    horizons: Horizons | None = None,
    say: Callable[[str], None] | None = None,
) -> Report:
    """Expire what the policies no longer keep; see the module's doc."""
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    say = say or (lambda _: None)
    rows = policy_rows(store)
    extents = store.extents().to_pylist()
    tenants = sorted({e["tenant"] for e in extents} | {t for t, _ in rows} - {ALL_TENANTS})
    marks = _marks(store)
    report = Report(dry_run=dry_run)
    for tenant in tenants:
        policy = merged(rows, tenant)
        for source in SOURCES:
            cut = policy.cut(source, now_ms, store.partition_ms(tier_of(source)))
            if cut is not None and cut > marks.get((tenant, source), _NEG):
                marks[(tenant, source)] = cut
                report.marks.append((tenant, source, cut))
    if report.marks and not dry_run:
        store.put_expiry(_mark_table(report.marks))
        if horizons is not None:
            horizons.refresh()
        say(f"wrote {len(report.marks)} expiry marks; waiting {settle_s:g} s for readers")
        time.sleep(settle_s)
    for source in SOURCES:
        report.actions += _actions(store, source, tenants, marks, extents)
    report.actions = _shared(store, report.actions)
    for i, a in enumerate(report.actions):
        say(f"{a.kind} {a.source} partition {a.partition} ({a.bytes} bytes) of {a.tenants}")
        if dry_run:
            continue
        tier = tier_of(source=a.source)
        if a.kind == "drop":
            store.drop_partition(tier, a.partition)
        else:
            done = [store.delete_range(tier, tenant, a.lo, a.hi) for tenant in a.tenants]
            report.actions[i] = replace(a, done=all(done))
    move_cold = getattr(store, "move_cold", None)
    if move_cold is not None and not dry_run:
        report.moved = move_cold(now_ms)
        if report.moved:
            say(f"moved {len(report.moved)} partitions to the cold volume")
    report.seconds = time.monotonic() - t0
    return report


def _mark_table(marks: list[tuple[str, str, int]]) -> pa.Table:
    return pa.table({
        "tenant": pa.array([t for t, _, _ in marks], pa.string()),
        "source": pa.array([s for _, s, _ in marks], pa.string()),
        "before": pa.array([b for _, _, b in marks], pa.int64()),
    })  # fmt: skip


def _actions(
    store: Store,
    source: str,
    tenants: list[str],
    marks: dict[tuple[str, str], int],
    extents: list[dict],
) -> list[Action]:
    """What to do to each partition of ``source`` that some tenant has expired."""
    tier = tier_of(source)
    size = store.partition_ms(tier)
    out = []
    for part in store.partitions(tier).to_pylist():
        p = int(part["partition"])
        lo, hi = p * size, (p + 1) * size
        expired = {t for t in tenants if marks.get((t, source), _NEG) >= hi}
        if not expired:
            continue
        # Extents come from the coarsest tier: a cell at t holds [t, t + 1 h).
        present = {e["tenant"] for e in extents if e["lo"] < hi and e["hi"] + HOUR_MS > lo}
        whole = present <= expired if present else expired == set(tenants)
        if whole:
            who = tuple(sorted(present or expired))
            out.append(
                Action(source, p, lo, hi, "drop", who, int(part["bytes"]), int(part["rows"]))
            )
            continue
        gone = tuple(t for t in sorted(expired & present) if store.rows_in(tier, t, lo, hi))
        if gone:
            out.append(Action(source, p, lo, hi, "delete", gone, 0, 0))
    return out


def _shared(store: Store, actions: list[Action]) -> list[Action]:
    """Drops of tiers that share a table: one drop of a partition that every
    tier sharing it has expired, deletes of the tier's rows otherwise."""
    sharing = set(store.tier_tables.shared)
    drops: dict[int, set[str]] = {}
    for a in actions:
        if a.kind == "drop" and a.source in sharing:
            drops.setdefault(a.partition, set()).add(a.source)
    out, dropped = [], set()
    for a in actions:
        if a.kind != "drop" or a.source not in sharing:
            out.append(a)
        elif drops[a.partition] != sharing:
            out.append(replace(a, kind="delete", bytes=0, rows=0))
        elif a.partition not in dropped:
            dropped.add(a.partition)
            out.append(a)
    return out


class Schedule:
    """Maintenance every ``every_s`` on a thread of its own, the first run
    ``first_s`` after start (the embedded server's ``--maintain-every``).

    Ownership: the thread alone writes ``last`` and ``error``; others read them."""

    def __init__(
        self, store: Store, horizons: Horizons, every_s: float, first_s: float = 60.0,
        settle_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.store, self.horizons = store, horizons
        self.every_s, self.first_s, self.settle_s = every_s, first_s, settle_s
        self.last: Report | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintain", daemon=True)

    def start(self) -> Schedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        wait = self.first_s
        while not self._stop.wait(wait):  # until the server stops
            wait = self.every_s
            try:
                self.last = run(self.store, settle_s=self.settle_s, horizons=self.horizons)
                self.error = None
                log.info("maintenance: %s", self.last.to_json())
            except Exception as e:  # a failed run is retried at the next interval
                self.error = str(e)
                log.warning("maintenance failed, next try in %.0f s: %s", wait, e)
