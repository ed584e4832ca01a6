"""Retention: per-tenant keep of raw points and tiers, expiry by whole partitions."""
