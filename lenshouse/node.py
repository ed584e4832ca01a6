"""A lenshouse node: storage, ingest and lenses over one data directory.

The data directory holds the write-ahead log and the loader's progress; the
store is chDB inside it by default, or a ClickHouse cluster (``store=``)."""

from __future__ import annotations

from pathlib import Path

from lenshouse.ingest.ingestor import Ingestor
from lenshouse.lens.engine import LensEngine
from lenshouse.lens.head import Head
from lenshouse.priority import BACKGROUND_NICE, Renicer
from lenshouse.retention.horizons import Horizons
from lenshouse.storage.backend import BLOCK_CACHE_MB, Backend
from lenshouse.storage.catalog import Catalog
from lenshouse.storage.embedded import EmbeddedBackend
from lenshouse.storage.store import EmbeddedStore, Store
from lenshouse.storage.tiering import Tiering

DEFAULT_DATA_DIR = Path("lenshouse-data")


class Node:
    def __init__(
        self,
        data_dir: Path = DEFAULT_DATA_DIR,
        backend: Backend | None = None,
        store: Store | None = None,
        flush_interval: float = 1.0,
        fsync: bool = True,
        query_connections: int = 4,
        dedup_pages: int = 65_536,
        lens_cache_mb: float = 256,
        block_cache_mb: float = BLOCK_CACHE_MB,
        head_seconds: float = 65,
        head_max_mb: float = 3072,
        tiering: Tiering | None = None,
        background_nice: int = BACKGROUND_NICE,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if tiering is not None:  # kept in the data directory for every later open
            tiering.save(self.data_dir / "clickhouse")
        if store is None:
            store = EmbeddedStore(
                backend
                or EmbeddedBackend(
                    self.data_dir / "clickhouse",
                    query_connections=query_connections,
                    block_cache_mb=block_cache_mb,
                )
            )
        self.store = store
        self.backend = getattr(store, "backend", None)  # the SQL connection, for tests and bench
        self._upgrade = store.open()  # finished once the log is replayed
        self.ingestor = Ingestor(
            self.data_dir,
            store,
            flush_interval=flush_interval,
            fsync=fsync,
            dedup_pages=dedup_pages,
        )
        # A load in doubt is replayed as it was made: by a store whose view
        # fed the first tier, without storing cells beside it.
        self.ingestor.loader.store_cells = not self._upgrade.raw_view
        self.head = Head(head_seconds, max_bytes=int(head_max_mb * 2**20))
        self.ingestor.loader.on_loaded.append(self.head.add)
        self.ingestor.loader.on_erased.append(self.head.erase)
        # Loads and merges yield the cores to lenses (lenshouse.priority).
        self.renicer = Renicer(background_nice if isinstance(store, EmbeddedStore) else 0)
        self.ingestor.loader.on_loaded.append(self._lower_background)
        self.horizons = Horizons(store)
        self.ingestor.loader.raw_mark = self.horizons.raw_mark
        self.lenses = LensEngine(
            store,
            self.ingestor.visibility,
            cache_bytes=int(lens_cache_mb * 2**20),
            head=self.head,
            horizons=self.horizons,
        )
        self.catalog = Catalog(store)
        self._started = False

    def start(self) -> Node:
        self.head.open(self.store.newest_ts())
        self.ingestor.start(after_recovery=self._finish_upgrade)
        self._started = True
        return self

    def _lower_background(self, seq: int, table: object) -> None:
        self.renicer.sweep()  # after each load: merges start with new parts

    def _finish_upgrade(self) -> None:
        self.store.finish_upgrade(self._upgrade)
        self.ingestor.loader.store_cells = True

    def stop(self) -> None:
        if self._started:
            self.ingestor.stop()
            self._started = False
        self.store.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
