"""What the commands share: their reporter, typed errors turned into exit codes, and the
options' conversion into the library's settings objects. Imports no torch."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import typer

from ..errors import ExitCode, KosmosError, UsageError
from ..inputs.documents import PageOptions, parse_page_selection
from ..model.loading import default_model
from ..model.runner import RunnerSettings
from ..run.ray_connect import RayOptions, is_ray_address
from ..run.progress import PlainReporter
from .options import Attn, Batching, Dtype


def start_reporter(quiet: bool, verbose: bool, max_new_tokens: int) -> PlainReporter:
    """The run's reporter, with library warnings routed and SIGTERM turned into Ctrl-C."""
    from ..run.progress import make_reporter

    reporter = make_reporter(quiet=quiet, max_new_tokens=max_new_tokens)
    route_library_messages(verbose, reporter)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return reporter


def guarded(reporter: PlainReporter, work: Callable):
    """Run `work()`; a typed error or an interrupt ends the command with its exit code."""
    try:
        return work()
    except KosmosError as error:
        reporter.close()
        reporter.error(error.message)
        raise typer.Exit(int(error.exit_code)) from None
    except KeyboardInterrupt:
        reporter.close()
        reporter.error("interrupted before any page was read")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def page_options(pages: str | None, dpi: int, password: str | None, max_pixels: int) -> PageOptions:
    """How pages are read: `--pages`, `--dpi`, `--password`, `--max-pixels`."""
    return PageOptions(dpi=dpi, pages=parse_page_selection(pages), max_pixels=max_pixels, password=password)


def runner_settings(model: str | None, revision: str | None, device: str, dtype: Dtype, attn: Attn,
                     max_new_tokens: int, max_patches: int | None, batching: Batching,
                     compile_steps: bool) -> RunnerSettings:  # fmt: skip
    """The model runner's settings from the model and speed options."""
    return RunnerSettings(
        model=model or default_model(),
        revision=revision,
        device=device,
        dtype=Dtype(dtype).value,
        attn=Attn(attn).value,
        max_new_tokens=max_new_tokens,
        max_patches=max_patches,
        batching=Batching(batching).value,
        compile=compile_steps,
    )


def ray_options(address: str | None, workers: int | None, gpus_per_worker: float, pages_per_task: int,
                 verbose: bool) -> RayOptions | None:  # fmt: skip
    """The Ray options, or None without `--ray`; `--workers` alone is a usage error."""
    if address is None:
        if workers is not None:
            raise UsageError("--workers applies with --ray")
        return None
    if address and not is_ray_address(address):
        raise UsageError(f"--ray {address}: not a Ray address (auto, local, HOST:PORT or ray://HOST:PORT)")
    return RayOptions(address, workers, gpus_per_worker, verbose, pages_per_task)


def input_paths(paths: list[str] | None, files_from: str | None, nul_separated: bool) -> tuple[str, ...]:
    """The inputs named on the command line and in `--files-from`; none at all is a usage error."""
    paths = list(paths or [])
    if files_from:
        if files_from == "-" and "-" in paths:
            raise UsageError("stdin cannot be both --files-from - and an input '-'")
        paths += _read_path_list(files_from, nul_separated)
    elif nul_separated:
        raise UsageError("-0/--null only applies with --files-from")
    if not paths:
        raise UsageError("no inputs: give image/PDF paths, folders, '-' or --files-from")
    return tuple(paths)


def _read_path_list(source: str, nul_separated: bool) -> list[str]:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"--files-from {source}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="surrogateescape")
    return [item for item in text.split("\0" if nul_separated else "\n") if item.strip("\r\n")]


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def route_library_messages(verbose: bool, reporter: PlainReporter) -> None:
    """Keep torch's and transformers' warnings off the user's stderr, or fold them into
    one line each with --verbose. kosmos25's own warnings go through the reporter."""
    # Read when transformers is first imported, which happens after this.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning" if verbose else "error")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        warnings.simplefilter("ignore")
        return

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        first_line = (str(message).strip().splitlines() or [""])[0]
        module = Path(filename).parent.name if filename else "?"
        reporter.info(f"library warning ({module}): {category.__name__}: {first_line}")

    warnings.showwarning = show
