"""``python -m mpo``: the command line."""

from mpo.cli import app

app()
