"""The first tier's cells, computed in the loader, equal a brute-force fold of
the same points: runs of one sensor, interleaved sensors, several tenants,
points out of order and repeated keys alike; the M4 pairs fold as ClickHouse
folds tuples."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lenshouse.lens.visibility import footprint_keys
from lenshouse.rollup.cells import cells, footprint_points

T0 = 1_700_000_000_000


def fold(codes, sensor, ts, value, res) -> dict[tuple[int, int, int], tuple]:
    """Per (tenant code, sensor, cell start): sum, count, min, max and the M4
    pairs (min of (t, v), max of (t, v), min of (v, t), max of (v, -t)), point
    by point."""
    out: dict[tuple[int, int, int], list] = {}
    for c, s, t, v in zip(codes.tolist(), sensor.tolist(), ts.tolist(), value.tolist()):
        cell = out.setdefault(
            (c, s, t // res * res), [0.0, 0, v, v, (t, v), (t, v), (v, t), (v, -t)]
        )
        cell[0] += v
        cell[1] += 1
        cell[2] = min(cell[2], v)
        cell[3] = max(cell[3], v)
        cell[4] = min(cell[4], (t, v))
        cell[5] = max(cell[5], (t, v))
        cell[6] = min(cell[6], (v, t))
        cell[7] = max(cell[7], (v, -t))
    return {k: tuple(v) for k, v in out.items()}


def as_dict(table, tenants) -> dict[tuple[int, int, int], tuple]:
    code = table.column("tenant").combine_chunks().indices.to_numpy()
    names = table.column("tenant").to_pylist()
    assert names == [tenants[c] for c in code]
    names = ("sensor", "t", "sum", "cnt", "min", "max")
    pairs = [
        [(p["1"], p["2"]) for p in table.column(n).to_pylist()]
        for n in ("m4_first", "m4_last", "m4_low", "m4_high")
    ]
    rows = zip(code.tolist(), *(table.column(n).to_pylist() for n in names), *pairs)
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}


@st.composite
def points(draw):
    n = draw(st.integers(0, 400))
    layout = draw(st.sampled_from(["runs", "interleaved", "shuffled"]))
    tenants = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sensor = rng.integers(1, 6, n).astype(np.uint32)
    ts = T0 + rng.integers(0, 3_000, n).astype(np.int64)
    if layout == "runs":  # as senders batch them: sensor-major, time order
        order = np.lexsort((ts, sensor))
        sensor, ts = sensor[order], ts[order]
    elif layout == "interleaved":
        ts = np.sort(ts)
    value = rng.integers(-(2**15), 2**15, n) / 8.0  # 16-bit ADC codes: sums are exact
    codes = rng.integers(0, tenants, n).astype(np.int32)
    return codes, [f"t{i}" for i in range(tenants)], sensor, ts, value


@settings(max_examples=150, deadline=None)
@given(points(), st.sampled_from([1, 7, 100, 1000]))
def test_cells_equal_a_point_by_point_fold(data, res) -> None:
    codes, tenants, sensor, ts, value = data
    table = cells(codes, tenants, sensor, ts, value, res)
    assert as_dict(table, tenants) == fold(codes, sensor, ts, value, res)
    # One row per cell, sorted by key, as the tier table orders them.
    key = list(
        zip(
            table.column("tenant").combine_chunks().indices.to_pylist(),
            table.column("sensor").to_pylist(),
            table.column("t").to_pylist(),
        )
    )
    assert key == sorted(set(key))


@settings(max_examples=100, deadline=None)
@given(points())
def test_footprint_from_cells_covers_every_point(data) -> None:
    codes, tenants, sensor, ts, value = data
    table = cells(codes, tenants, sensor, ts, value)
    fcode, fsensor, fts = footprint_points(table)
    for i in range(len(tenants)):
        exact = footprint_keys(sensor[codes == i], ts[codes == i])
        from_cells = footprint_keys(fsensor[fcode == i], fts[fcode == i])
        assert np.isin(exact, from_cells).all()
        # A superset by at most the neighbours of keys the points have (a
        # 100 ms cell may straddle two footprint cells), so no other sensor.
        near = np.concatenate([exact - np.uint64(1), exact, exact + np.uint64(1)])
        assert np.isin(from_cells, near).all()
