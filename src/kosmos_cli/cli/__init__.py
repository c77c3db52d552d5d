"""The command line: options (`options.py`), the commands (`commands.py`, `training.py`)
and what they share (`common.py`). It parses options, calls the library and maps its
typed errors to exit codes; `run` is the `kosmos25` console script."""

from .commands import app, run

__all__ = ["app", "run"]
