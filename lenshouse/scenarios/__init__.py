"""Fault-injection scenarios that prove the ingest guarantees end to end:
a real server process, an unreliable client side, and a verdict computed from
what was acknowledged against what is stored and what lenses answer."""
