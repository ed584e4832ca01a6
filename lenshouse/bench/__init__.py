"""``lenshouse bench``: measured performance of a whole node on this machine.

Scenarios (each in :mod:`lenshouse.bench.<name>`): ``ingest`` (HTTP ingest
end to end against chDB's bare insert ceiling), ``lens`` (single-user lens
latency and rows read), ``mixed`` (live ingest plus closed-loop users),
``storage`` (bytes per point) and ``concurrency`` (clients with no think
time). :mod:`lenshouse.bench.report` turns the results into
``bench-report.json``, ``bench-report.md`` and plots.
"""

from lenshouse.bench.common import BenchConfig

__all__ = ["BenchConfig"]
