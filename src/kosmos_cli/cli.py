"""Command line: parses options, calls the library, maps errors to exit codes.

Imports no torch at module level, so `kosmos25 --help` is instant.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import ExitCode, KosmosError, UsageError
from .inputs.documents import DEFAULT_MAX_PIXELS, PageOptions, parse_page_selection
from .model.loading import ATTENTION_KINDS, DTYPES, default_model
from .model.runner import RunnerSettings
from .outputs.writers import MD_FORMATS, OCR_FORMATS

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    help="Read text-heavy images and PDFs with Microsoft's KOSMOS-2.5: OCR lines with boxes, or markdown.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Paths = Annotated[
    Optional[list[str]],
    typer.Argument(help="Images, PDFs or folders (walked recursively); '-' reads one file from stdin.", show_default=False),
]
Output = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Folder for one output file per input (sub-folders mirrored). Default: stdout."),
]
FilesFrom = Annotated[
    Optional[str], typer.Option("--files-from", help="Read input paths from FILE ('-': stdin), one per line.")
]
NulSeparated = Annotated[bool, typer.Option("-0", "--null", help="With --files-from: paths are NUL-separated.")]
Model = Annotated[
    Optional[str],
    typer.Option(help="Hub id or local folder of the model. Default: $KOSMOS25_MODEL or microsoft/kosmos-2.5."),
]
Revision = Annotated[Optional[str], typer.Option(help="Model revision (branch, tag or commit) on the hub.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps. auto: cuda, then mps, then cpu.")]
Dtype = Annotated[str, typer.Option(help=f"{', '.join(DTYPES)}. auto: bfloat16 on CUDA and on CPUs with bf16 instructions, else float32.")]
Attn = Annotated[
    str,
    typer.Option(
        help=f"Attention kernel: {', '.join(ATTENTION_KINDS)}. On CPU, sdpa uses kosmos25's faster kernels; "
        "eager runs transformers' own code unchanged, without kosmos25's speed-ups."
    ),
]
BatchSize = Annotated[
    Optional[int], typer.Option(min=1, help="Pages per generate call. Default: chosen from free memory.")
]
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Most tokens generated per page; a page reaching it is marked truncated.")]
MaxPatches = Annotated[
    Optional[int], typer.Option(min=16, help="Image patches per page (model default 4096): fewer is faster, weaker on small print.")
]
Dpi = Annotated[int, typer.Option(min=10, max=2400, help="Resolution for rendering PDF pages.")]
Pages = Annotated[Optional[str], typer.Option(help="Pages to read, 1-based, e.g. 1-3,7 (PDFs and multi-page TIFFs).")]
Password = Annotated[Optional[str], typer.Option(help="Password for encrypted PDFs.")]
MaxPixels = Annotated[int, typer.Option(min=1, help="Refuse images (and rendered pages) with more pixels than this.")]
Draw = Annotated[
    Optional[Path], typer.Option(help="Save each page as a PNG with its OCR boxes and line numbers drawn, in DIR.")
]
Overwrite = Annotated[bool, typer.Option(help="Redo inputs whose output file already exists (default: skip them).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kosmos25 {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Read text-heavy images and PDFs with Microsoft's KOSMOS-2.5."""


@app.command()
def ocr(
    paths: Paths = None,
    output: Output = None,
    format: Annotated[str, typer.Option("--format", "-f", help=f"{', '.join(OCR_FORMATS)}.")] = "json",
    files_from: FilesFrom = None,
    null: NulSeparated = False,
    model: Model = None,
    revision: Revision = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    attn: Attn = "sdpa",
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = 4096,
    max_patches: MaxPatches = None,
    dpi: Dpi = 200,
    pages: Pages = None,
    password: Password = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    draw: Draw = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Every text line with its bounding box, in the original image's pixels."""
    _run("ocr", OCR_FORMATS, locals())


@app.command()
def md(
    paths: Paths = None,
    output: Output = None,
    format: Annotated[str, typer.Option("--format", "-f", help=f"{', '.join(MD_FORMATS)}.")] = "md",
    files_from: FilesFrom = None,
    null: NulSeparated = False,
    model: Model = None,
    revision: Revision = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    attn: Attn = "sdpa",
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = 4096,
    max_patches: MaxPatches = None,
    dpi: Dpi = 200,
    pages: Pages = None,
    password: Password = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """The page as markdown."""
    _run("md", MD_FORMATS, locals())


def _read_path_list(source: str, nul_separated: bool) -> list[str]:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"--files-from {source}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="surrogateescape")
    return [item for item in text.split("\0" if nul_separated else "\n") if item.strip("\r\n")]


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _run(task: str, formats: tuple[str, ...], options: dict) -> None:
    from .run.app import Job, execute
    from .run.progress import format_summary, make_reporter

    reporter = make_reporter(quiet=options["quiet"], max_new_tokens=options["max_new_tokens"])
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if options["format"] not in formats:
            raise UsageError(f"--format {options['format']}: '{task}' writes {', '.join(formats)}")
        paths = list(options["paths"] or [])
        if options["files_from"]:
            if options["files_from"] == "-" and "-" in paths:
                raise UsageError("stdin cannot be both --files-from - and an input '-'")
            paths += _read_path_list(options["files_from"], options["null"])
        elif options["null"]:
            raise UsageError("-0/--null only applies with --files-from")
        if not paths:
            raise UsageError("no inputs: give image/PDF paths, folders, '-' or --files-from")
        job = Job(
            task=task,
            paths=tuple(paths),
            fmt=options["format"],
            output_dir=options["output"],
            draw_dir=options.get("draw"),
            overwrite=options["overwrite"],
            batch_size=options["batch_size"],
            page_options=PageOptions(
                dpi=options["dpi"],
                pages=parse_page_selection(options["pages"]),
                max_pixels=options["max_pixels"],
                password=options["password"],
            ),
            runner=RunnerSettings(
                model=options["model"] or default_model(),
                revision=options["revision"],
                device=options["device"],
                dtype=options["dtype"],
                attn=options["attn"],
                max_new_tokens=options["max_new_tokens"],
                max_patches=options["max_patches"],
            ),
        )
        summary = execute(job, reporter, stdin=sys.stdin.buffer if "-" in paths else None)
    except KosmosError as error:
        reporter.close()
        reporter.error(error.message)
        raise typer.Exit(int(error.exit_code)) from None
    except KeyboardInterrupt:
        reporter.close()
        reporter.error("interrupted before any page was read")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    reporter.close()
    if summary.interrupted:
        reporter.error(f"interrupted: {format_summary(summary)}; run the same command again to finish the rest")
    else:
        reporter.finished(summary)
    raise typer.Exit(int(summary.exit_code))
