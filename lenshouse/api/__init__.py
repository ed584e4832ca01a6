"""The HTTP API: writes, lenses, the sensor catalog, health and metrics."""
