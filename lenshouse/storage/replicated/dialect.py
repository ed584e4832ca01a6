"""What a ClickHouse server can do, read from its version.

The schema and the settings a store sends follow it: Debian's 18.16 lacks
codecs, ``SimpleAggregateFunction``, insert deduplication tokens and
aggregation in key order; the current LTS releases (25.8, 26.3) have them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    version: tuple[int, int]

    @classmethod
    def parse(cls, text: str) -> Dialect:
        m = re.match(r"(\d+)\.(\d+)", text)
        if not m:
            raise ValueError(f"not a ClickHouse version: {text!r}")
        return cls((int(m.group(1)), int(m.group(2))))

    @property
    def modern(self) -> bool:
        return self.version >= (21, 8)

    # Each capability is named for what the schema or a query uses it for.
    @property
    def codecs(self) -> bool:  # CODEC(...) on columns: 19.11
        return self.version >= (19, 11)

    @property
    def simple_aggregates(self) -> bool:  # SimpleAggregateFunction: 19.8
        return self.version >= (19, 8)

    @property
    def low_cardinality(self) -> bool:  # without the experimental flag: 19.0
        return self.version >= (19, 1)

    @property
    def dedup_token(self) -> bool:  # insert_deduplication_token: 22.2
        return self.version >= (22, 2)

    @property
    def aggregation_in_order(self) -> bool:  # optimize_aggregation_in_order: 20.4
        return self.version >= (20, 4)

    def settings(self, wanted: dict[str, int | str]) -> dict[str, int | str]:
        """``wanted`` without the settings this server does not know."""
        unknown = set()
        if not self.aggregation_in_order:
            unknown.add("optimize_aggregation_in_order")
        if not self.dedup_token:
            unknown |= {
                "insert_deduplication_token",
                "deduplicate_blocks_in_dependent_materialized_views",
            }
        return {k: v for k, v in wanted.items() if k not in unknown}


OLDEST = Dialect((18, 16))
CURRENT_LTS = Dialect((26, 3))
