"""Lenses: exact bucketed aggregates of 1-10 sensors over any window."""
