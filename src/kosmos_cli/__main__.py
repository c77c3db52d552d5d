"""`python -m kosmos_cli` runs the `kosmos25` command."""

from .cli import run

run()
