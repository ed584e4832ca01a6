"""``python -m lenshouse.bench``: the bench and load commands without the main CLI."""

from lenshouse.bench.commands import app

if __name__ == "__main__":
    app()()
