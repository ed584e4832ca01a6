"""The token buckets of the quotas, on a clock the test moves."""

from __future__ import annotations

import pytest

from lenshouse.tenancy.quotas import BURST_S, Limiter, Quotas


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_holds_its_burst_refills_at_its_rate_and_is_per_tenant() -> None:
    clock = Clock()
    q = Limiter(10.0, clock)  # 10 a second, 20 in the bucket
    assert all(q.take("a") == 0 for _ in range(int(10 * BURST_S)))
    assert q.take("a") == 1 and q.refused == 1  # empty: 0.1 s to the next, rounded up
    assert q.take("b") == 0  # another tenant's bucket is full
    clock.now += 0.5  # 5 tokens back
    assert all(q.take("a") == 0 for _ in range(5))
    assert q.take("a") == 1


def test_a_batch_larger_than_the_bucket_passes_once_and_leaves_a_debt() -> None:
    clock = Clock()
    q = Limiter(100.0, clock)  # 200 in the bucket
    assert q.take("a", 1000) == 0  # never refused for good
    assert q.take("a", 1) == 9  # 800 in debt + 1: 8.01 s, rounded up
    clock.now += 8.0
    assert q.take("a", 1) == 1
    clock.now += 1.0
    assert q.take("a", 1) == 0


def test_zero_is_no_limit_and_negative_quotas_are_refused() -> None:
    q = Limiter(0.0)
    assert all(q.take("a", 10**9) == 0 for _ in range(100))
    with pytest.raises(ValueError):
        Quotas(points_per_s=-1)
