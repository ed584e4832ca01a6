"""``python -m lenshouse``: the command line."""

from lenshouse.cli import app

app()
