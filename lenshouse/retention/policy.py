"""Retention: how long each tenant keeps raw points and each rollup tier.

A *source* is raw points or one tier. Each keeps whole partitions (a day of
raw, of the 100 ms and 1 s tiers; 30 days of the coarser ones), so expiry
drops partitions, as Prometheus drops whole blocks. Finer sources may not be
kept longer than coarser ones: where raw points have gone, the tiers still
answer every lens at their resolution, exactly (see
:mod:`lenshouse.retention.horizons`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from lenshouse.points import Invalid
from lenshouse.rollup.tiers import DAY_MS, TIERS, Tier

RAW = "raw"
SOURCES: tuple[str, ...] = (RAW, *(t.name for t in TIERS))  # finest first
ALL_TENANTS = "*"  # a policy row for every tenant without its own
FOREVER = None

DEFAULT_KEEP: dict[str, int | None] = {
    RAW: 30 * DAY_MS,
    "100ms": 90 * DAY_MS,
    "1s": 365 * DAY_MS,
    "10s": FOREVER,
    "1m": FOREVER,
    "10m": FOREVER,
    "1h": FOREVER,
}

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
_UNITS["y"] = 365 * DAY_MS


def tier_of(source: str) -> Tier | None:
    """The tier a source names; None for raw points."""
    if source == RAW:
        return None
    for t in TIERS:
        if t.name == source:
            return t
    raise Invalid(f"no source {source!r}; sources are {', '.join(SOURCES)}")


def partition_ms(source: str) -> int:
    tier = tier_of(source)
    return DAY_MS if tier is None else tier.partition_ms


def resolution_ms(source: str) -> int:
    tier = tier_of(source)
    return 1 if tier is None else tier.res_ms


def parse_keep(text: str) -> int | None:
    """'30d', '90d', '1y', '12h' → milliseconds; 'forever' → None."""
    if text.strip().lower() in ("forever", "inf", "never"):
        return FOREVER
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d|w|y)\s*", text)
    if not m or int(m.group(1)) == 0:
        raise Invalid(f"keep {text!r}: give a duration like 30d, 90d, 1y, or forever")
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_keep(ms: int | None) -> str:
    if ms is None:
        return "forever"
    for unit in ("y", "d", "h", "m", "s"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Policy:
    """How long one tenant keeps each source (None: forever)."""

    keep: Mapping[str, int | None]

    def __post_init__(self) -> None:
        longest: int | None = 0
        for source in SOURCES:
            k = self.keep[source]
            if k is not None and (longest is None or k < longest):
                raise Invalid(
                    f"{source} would be kept {format_keep(k)}, less than a finer source"
                    f" ({format_keep(longest)}): keep coarser tiers at least as long"
                )
            longest = k
        if self.keep[RAW] is not None and self.keep[RAW] < DAY_MS:
            raise Invalid("raw points are kept at least 1d (they expire a day at a time)")

    def cut(self, source: str, now_ms: int, width: int | None = None) -> int | None:
        """Where the source expires now: the start of the newest partition
        (``width`` ms; the tier's own by default) wholly older than its keep
        (None: kept forever)."""
        k = self.keep[source]
        if k is None:
            return None
        p = partition_ms(source) if width is None else width
        return (now_ms - k) // p * p

    def to_json(self) -> dict[str, str]:
        return {s: format_keep(self.keep[s]) for s in SOURCES}


DEFAULT_POLICY = Policy(DEFAULT_KEEP)


def merged(rows: Mapping[tuple[str, str], int | None], tenant: str) -> Policy:
    """A tenant's policy: its own rows over the every-tenant rows over the defaults."""
    keep = dict(DEFAULT_KEEP)
    for who in (ALL_TENANTS, tenant):
        for source in SOURCES:
            if (who, source) in rows:
                keep[source] = rows[(who, source)]
    return Policy(keep)


def parse_policy(keep: Mapping[str, str], base: Policy = DEFAULT_POLICY) -> dict[str, int | None]:
    """{"raw": "30d", ...} checked; the sources it names, in ms (None: forever)."""
    if not isinstance(keep, Mapping) or not keep:
        raise Invalid('keep must be an object like {"raw": "30d", "100ms": "90d"}')
    out: dict[str, int | None] = {}
    for source, text in keep.items():
        tier_of(source)  # names a source
        if not isinstance(text, str):
            raise Invalid(f"keep of {source}: a duration string like 30d, or forever")
        out[source] = parse_keep(text)
    Policy({**base.keep, **out})  # checks the result
    return out
