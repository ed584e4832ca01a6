"""The head holds exactly the loaded points at or after ``lo``, per load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lenshouse.lens.head import EVICT_SLACK_MS, Head, buckets
from lenshouse.lens.oracle import brute_force

NOW = 1_800_000_000_000


def rows(sensor, ts, value, tenant: str = "default") -> pa.Table:
    n = len(ts)
    return pa.table(
        {
            "tenant": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([tenant])),
            "sensor": np.asarray(sensor, np.uint32),
            "ts": np.asarray(ts, np.int64),
            "value": np.asarray(value, np.float64),
        }
    )


def head(seconds: float = 10) -> Head:
    h = Head(seconds, clock=lambda: NOW / 1000)
    h.open(None)
    return h


def test_reads_only_loads_up_to_the_given_seq_and_in_time_order() -> None:
    h = head()
    h.add(1, rows([1, 2, 1], [NOW - 5, NOW - 4, NOW - 9], [1.0, 2.0, 3.0]))
    h.add(2, rows([1], [NOW - 7], [4.0]))  # a late point between the first load's
    boundary, pts = h.read("default", [1, 2], NOW - 20_000, NOW + 1, max_seq=1, align=1)
    assert boundary == NOW - 10_000
    assert pts[1].points()[0].tolist() == [NOW - 9, NOW - 5]
    assert pts[2].points()[1].tolist() == [2.0]
    _, pts = h.read("default", [1], NOW - 20_000, NOW + 1, max_seq=2, align=1)
    assert pts[1].points()[0].tolist() == [NOW - 9, NOW - 7, NOW - 5]
    assert pts[1].points()[1].tolist() == [3.0, 4.0, 1.0]


def test_the_boundary_is_aligned_and_nothing_below_it_is_returned() -> None:
    h = head()
    h.add(1, rows([1] * 4, [NOW - 10_500, NOW - 9_999, NOW - 9_000, NOW], [1, 2, 3, 4]))
    boundary, pts = h.read("default", [1], NOW - 60_000, NOW + 1, max_seq=1, align=4096)
    assert boundary % 4096 == 0 and NOW - 10_000 <= boundary < NOW - 10_000 + 4096
    assert (pts[1].points()[0] >= boundary).all() and NOW in pts[1].points()[0].tolist()


def test_tenants_are_apart_and_eviction_keeps_the_slack() -> None:
    h = head(1)
    h.add(1, rows([1], [NOW - 1_000 - EVICT_SLACK_MS - 1], [1.0]))  # already past the slack
    h.add(2, rows([1], [NOW - 500], [2.0], tenant="other"))
    assert h.points == 1
    assert h.read("default", [1], NOW - 1000, NOW + 1, 9, 1)[1][1].points()[0].size == 0
    assert h.read("other", [1], NOW - 1000, NOW + 1, 9, 1)[1][1].points()[1].tolist() == [2.0]


def test_after_a_restart_it_claims_nothing_at_or_below_what_was_stored() -> None:
    h = Head(10, clock=lambda: NOW / 1000)
    h.open(NOW + 60_000)  # storage already holds a point a minute ahead
    assert h.lo() == NOW + 60_001


def test_buckets_equal_the_oracle() -> None:
    rng = np.random.default_rng(0)
    ts = np.sort(rng.choice(np.arange(NOW, NOW + 50_000), 5_000, replace=False))
    value = rng.normal(0, 1, len(ts))
    for step in (1, 7, 40, 1000):
        b, s, c, mn, mx = buckets(ts, value, step)
        e = brute_force(ts, value, NOW, NOW + 50_000, step)
        assert (b * step == e.t).all() and (c == e.count).all()
        assert np.allclose(s, e.sum) and (mn == e.min).all() and (mx == e.max).all()


def test_a_boundary_past_the_window_falls_back_to_a_finer_grid() -> None:
    """Coarse steps have chunks longer than the head: the head then takes over
    at the coarsest grid (chunk/2, chunk/4, … down to the step) inside the window."""
    h = head()
    h.add(1, rows([1, 1, 1], [NOW - 9_000, NOW - 7_000, NOW - 1], [1.0, 2.0, 3.0]))
    boundary, pts = h.read("default", [1], NOW - 3_600_000, NOW - 500, 1, align=128_000, step=2000)
    assert h.lo() == NOW - 10_000
    assert boundary == NOW - 8_000  # 8 s grid; the 16, 32, 64 and 128 s grids pass the end
    assert pts[1].points()[1].tolist() == [2.0]


def test_memory_stays_bounded_with_late_pieces() -> None:
    now = [NOW]
    h = Head(1, clock=lambda: now[0] / 1000)
    h.open(None)
    for i in range(1000):  # every 100 ms: a fresh point and one 900 ms late
        now[0] += 100
        h.add(i, rows([1, 1], [now[0] - 900, now[0] - 10], [1.0, 2.0]))
    held = 2 * (1000 + EVICT_SLACK_MS) // 100  # both kinds within span + slack
    assert held <= h.points <= held + 2 * 64  # plus at most one sweep's worth
    _, pts = h.read("default", [1], now[0] - 1000, now[0] + 1, 999, 1)
    sent = [t - d for t in range(now[0] - 99_900, now[0] + 1, 100) for d in (900, 10)]
    assert sorted(pts[1].points()[0].tolist()) == sorted(t for t in sent if t >= now[0] - 1000)


def test_over_its_memory_bound_the_head_gives_up_its_oldest_part() -> None:
    h = Head(10, clock=lambda: NOW / 1000, max_bytes=100 * 16)
    h.open(None)
    ts = np.arange(NOW - 9_990, NOW, 50)  # 200 points over 10 s
    h.add(1, rows(np.ones(len(ts)), ts, np.arange(len(ts), dtype=float)))
    assert h.bytes <= 100 * 16
    assert h.lo() > NOW - 10_000  # it now answers less far back …
    _, pts = h.read("default", [1], NOW - 10_000, NOW + 1, 1, 1)
    assert pts[1].points()[0].tolist() == [t for t in ts.tolist() if t >= h.lo()]  # … but all of it


def test_buckets_from_kept_page_buckets_equal_the_oracle() -> None:
    """Whole pages answer from the buckets they keep, folded where a page edge
    cuts a bucket; a page holding a load newer than the reader's from points."""
    rng = np.random.default_rng(7)
    h = head(30)
    sent = []  # (seq, ts, value)
    for seq in range(1, 9):  # in order, then late loads over the same seconds
        lo = NOW - 25_000 + (seq - 1) * 3_000 if seq <= 6 else NOW - 24_000
        ts = np.sort(rng.choice(np.arange(lo, lo + 5_000), 800, replace=False))
        ts = np.setdiff1d(ts, [t for _, t, _ in sent])  # one point per time, as stored
        value = rng.normal(0, 10, len(ts))
        h.add(seq, rows(np.ones(len(ts)), ts, value))
        sent += [(seq, int(t), float(v)) for t, v in zip(ts, value)]
    for step, origin, max_seq in [(7, 0, 8), (25, 3, 8), (1000, 0, 5), (4, 1, 7), (333, 0, 8)]:
        start = (NOW - 25_000 - origin) // step * step + origin
        end = (NOW - origin) // step * step + origin
        for _ in range(2):  # computed, then kept
            _, parts = h.read("default", [1], start, end, max_seq, align=step, step=step)
            b, s, c, mn, mx = parts[1].buckets(step, origin)
            got = [(seq, t, v) for seq, t, v in sent if seq <= max_seq and start <= t < end]
            ts = np.array(sorted(t for _, t, _ in got))
            value = np.array([v for _, _, v in sorted(got, key=lambda x: x[1])])
            e = brute_force(ts, value, start, end, step, origin)
            assert (b * step + origin == e.t).all() and (c == e.count).all()
            assert np.allclose(s, e.sum) and (mn == e.min).all() and (mx == e.max).all()


def test_a_read_part_stays_as_read_while_loads_fill_its_pages() -> None:
    """Readers slice pages without the lock: later loads append past what a
    read saw, or build new pages, but never rewrite it."""
    h = head()
    h.add(1, rows([1] * 3, [NOW - 3_000, NOW - 2_000, NOW - 1_000], [1.0, 2.0, 3.0]))
    _, before = h.read("default", [1], NOW - 4_000, NOW + 1, 9, 1)
    h.add(2, rows([1] * 2, [NOW - 500, NOW - 400], [4.0, 5.0]))  # appended in place
    h.add(3, rows([1], [NOW - 2_500], [6.0]))  # late: a new version of the page
    h.erase("default", [1], NOW - 2_100, NOW - 1_900)
    assert before[1].points()[1].tolist() == [1.0, 2.0, 3.0]
    _, after = h.read("default", [1], NOW - 4_000, NOW + 1, 9, 1)
    assert after[1].points()[1].tolist() == [1.0, 6.0, 3.0, 4.0, 5.0]
