"""Rollups: multi-resolution tiers of mergeable aggregate states."""
