"""`python -m flows.cli`: the `lawam` command."""

from flows.cli import app

app()
