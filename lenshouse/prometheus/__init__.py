"""Prometheus' protocols: remote write in, a PromQL subset over lenses out."""
