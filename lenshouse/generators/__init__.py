"""Generators: synthetic sensor data and query load."""
