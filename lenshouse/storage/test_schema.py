"""The schema: a new store gets raw's merge setting, and so does an older one."""

from __future__ import annotations

from pathlib import Path

from lenshouse.storage.embedded import EmbeddedBackend
from lenshouse.storage.schema import RAW_MERGE_SETTINGS, create_schema, raw_ddl


def raw_engine(backend: EmbeddedBackend) -> str:
    t = backend.query("SELECT engine_full FROM system.tables WHERE name = 'raw'")
    return t.column("engine_full")[0].as_py()


def test_new_store_merges_raw_with_the_wider_selector(tmp_path: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "ch")
    try:
        create_schema(backend)
        assert RAW_MERGE_SETTINGS in raw_engine(backend)
    finally:
        backend.close()


def test_older_store_gets_the_merge_setting_and_keeps_its_rows(tmp_path: Path) -> None:
    backend = EmbeddedBackend(tmp_path / "ch")
    try:
        older = raw_ddl().replace(f", {RAW_MERGE_SETTINGS}", "")
        backend.execute(older)
        backend.execute("INSERT INTO raw VALUES ('default', 1, 1700000000000, 1.5, 0)")
        assert "merge_selector_base" not in raw_engine(backend)
        create_schema(backend)
        assert RAW_MERGE_SETTINGS in raw_engine(backend)
        n = backend.query("SELECT count() AS n FROM raw").column("n")[0].as_py()
        assert n == 1
    finally:
        backend.close()
