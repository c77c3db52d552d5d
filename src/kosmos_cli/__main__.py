"""`python -m kosmos_cli` runs the `kosmos25` command."""

from .cli import app

app(prog_name="kosmos25")
