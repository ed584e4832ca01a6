"""Ingestion: decode write requests, make them durable, load them into ClickHouse."""
