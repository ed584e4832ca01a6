"""lenshouse: a time-series store for high-frequency sensors on ClickHouse."""

__version__ = "0.1.0"
