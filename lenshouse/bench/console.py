"""The benches' progress output (stderr, so that reports on stdout stay clean)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
