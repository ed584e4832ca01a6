"""Storage: the one small interface through which lenshouse speaks ClickHouse SQL."""

from lenshouse.storage.backend import Backend, StorageError

__all__ = ["Backend", "StorageError"]
