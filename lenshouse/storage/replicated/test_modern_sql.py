"""What the cluster store sends a current server (25.8 / 26.3 LTS), checked
on chDB's engine (26.x), since no such server runs here: every DDL statement
and lens query is parsed (``formatQuery``), and the schema, with its
replicated engines swapped for their plain counterparts and no
``ON CLUSTER``, is executed for real: tables, views and a load fed through
them, folding to the same cells as the raw rows."""

from __future__ import annotations

import re

import chdb
import numpy as np
import pytest

from lenshouse.lens.planner import plan
from lenshouse.rollup.tiers import TIERS
from lenshouse.storage import queries
from lenshouse.storage.replicated import pinned, schema
from lenshouse.storage.replicated.dialect import CURRENT_LTS, OLDEST, Dialect


@pytest.fixture
def engine(tmp_path):
    # chDB runs one engine per process: open it for this test alone.
    conn = chdb.connect(str(tmp_path / "ch"))
    yield conn
    conn.close()


def parses(conn, sql: str) -> str:
    quoted = sql.replace("\\", "\\\\").replace("'", "\\'")
    return str(conn.query(f"SELECT formatQuery('{quoted}')", "TSV"))


def test_every_modern_statement_parses(engine) -> None:
    for sql in schema.statements(CURRENT_LTS, "lenshouse", "lh"):
        assert parses(engine, sql).startswith("CREATE"), sql


def test_lens_and_ingest_queries_parse(engine) -> None:
    pairs = [(1, 5), (1, 6), (2, 9)]
    step = 1000
    groups = [([1, 2], plan(1_700_000_000_000, 1_700_000_600_000, step))]
    sqls = [
        queries.lens("default", step, groups, max_seq=7).sql,
        queries.lens("default", step, groups, max_seq=7, hidden=(3, 5)).sql,
        queries.lens("default", step, groups, None, at=schema.TIER_TABLES).sql,  # cluster mode
        pinned.query("default", step, groups, 7, at=schema.TIER_TABLES),
        queries.extents(TIERS[-1], schema.TIER_TABLES),
        queries.points_about(TIERS[-1], "default", [1], 0, 10, "_local", schema.TIER_TABLES),
        queries.seen_keys("default", pairs, 4096, 3),
        queries.stored_values("default", pairs, 4096, 3),
        queries.extents(TIERS[-1]),
        queries.export("default", [1, 2], 0, 10, 3, 100),
        queries.export("default", [1, 2], 0, 10, 3, 100, hidden=(2,)),
        queries.export("default", [1, 2], 0, 10, 3, 100, after=(1, 5)),  # a continuation
        queries.sensors_of("default"),
        queries.erase_count(TIERS[0], "default", [1, 2], 1_700_000_000_050, 1_700_000_900_000),
        queries.edge_cells(TIERS[0], "default", [1], [(0, 50), (100, 3_600_000)]),
    ]
    for sql in sqls:
        assert parses(engine, sql).startswith("SELECT"), sql


def test_delete_statements_parse(engine) -> None:
    at = schema.TIER_TABLES
    for tier in (None, *TIERS):
        table = f"lh.{queries.source_table(tier, at)}_local"
        sql = queries.erase(
            table, tier, "default", [1, 2], 1_700_000_000_000, 1_700_003_600_000, at
        )
        assert parses(engine, sql).startswith("DELETE FROM"), sql
        sql = queries.delete_range(table, tier, "default", 0, 86_400_000, at=at)
        assert parses(engine, sql).startswith("ALTER TABLE"), sql


def plain(sql: str) -> str:
    """A cluster statement for one non-replicated server."""
    sql = sql.replace(" ON CLUSTER lenshouse", "")
    sql = re.sub(r"Replicated(\w+)\('[^']*', '\{replica\}'(?:, (\w+))?\)", r"\1(\2)", sql)
    sql = re.sub(r",\s*replicated_deduplication_window_seconds = \d+", "", sql)
    return sql.replace("replicated_deduplication_window", "non_replicated_deduplication_window")


def test_the_modern_schema_runs_and_its_views_fold_exactly(engine) -> None:
    conn = engine
    conn.query("CREATE DATABASE lh")
    for sql in schema.statements(CURRENT_LTS, "lenshouse", "lh"):
        if "ENGINE = Distributed" not in sql:
            conn.query(
                plain(sql).replace("SETTINGS index_granularity", "SETTINGS index_granularity")
            )
    rng = np.random.default_rng(1)
    ts = 1_700_000_000_000 + np.sort(
        rng.choice(7_200_000, 5000, replace=False)
    )  # unique, as stored
    value = rng.normal(size=5000)
    rows = ",".join(f"('t', 3, {t}, {v!r}, 1)" for t, v in zip(ts.tolist(), value.tolist()))
    conn.query(f"INSERT INTO lh.raw_local VALUES {rows}")
    # The loader's cells, as it stores them (with their load's seq).
    conn.query(
        "INSERT INTO lh.rollup_100ms_local SELECT tenant, sensor, intDiv(ts, 100) * 100,"
        " sum(value), count(), min(value), max(value), min((ts, value)), max((ts, value)),"
        " min((value, ts)), max((value, -ts)), 1 FROM lh.raw_local"
        " GROUP BY tenant, sensor, intDiv(ts, 100) * 100"
    )
    for tier in TIERS[1:]:
        r = tier.res_ms
        want = str(
            conn.query(
                f"SELECT intDiv(ts, {r}) AS c, count(), round(sum(value), 9), min(value),"
                " max(value), argMin(value, ts), argMax(value, ts), argMin(ts, (value, ts)),"
                f" argMax(ts, (value, -ts)) FROM lh.raw_local GROUP BY c ORDER BY c",
                "TSV",
            )
        )
        got = str(
            conn.query(
                f"SELECT intDiv(t, {r}) AS c, sum(cnt), round(sum(sum), 9), min(min), max(max),"
                " min(m4_first).2, max(m4_last).2, min(m4_low).2, -max(m4_high).2"
                f" FROM lh.{schema.TIER_TABLES.table(tier, '_local')}"
                f" WHERE {schema.TIER_TABLES.where(tier, '1')} GROUP BY c ORDER BY c",
                "TSV",
            )
        )
        assert got == want, tier
    # A delete as the cluster store sends it, on each shard's tables.
    lo, hi = int(ts[1000]), int(ts[3000])
    conn.query(queries.erase("lh.raw_local", None, "t", [3], lo, hi))
    left = str(conn.query("SELECT count() FROM lh.raw_local", "TSV")).strip()
    assert int(left) == 5000 - 2000


def test_dialects() -> None:
    assert Dialect.parse("18.16.1") == OLDEST and not OLDEST.codecs
    assert Dialect.parse("26.3.2.1").dedup_token and CURRENT_LTS.simple_aggregates
    settings = {"insert_deduplication_token": "x", "optimize_aggregation_in_order": 1, "a": 1}
    assert OLDEST.settings(settings) == {"a": 1}
    assert CURRENT_LTS.settings(settings) == settings
    old = "\n".join(schema.statements(OLDEST, "lenshouse", "lh"))
    assert "CODEC" not in old and "SimpleAggregateFunction" not in old
    assert "LowCardinality" not in old
