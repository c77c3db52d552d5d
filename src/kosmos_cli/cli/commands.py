"""The `kosmos25` commands: each parses its options, builds the library's job and runs it.

Imports no torch at module level, so `kosmos25 --help` is instant. Every option is
defined once in `options.py` and grouped into help panels; the commands share them.
What the commands share beyond options (reporter, exit codes, settings objects) is in
`common.py`; `train` and `merge` are in `training.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import ExitCode
from ..inputs.documents import DEFAULT_MAX_PIXELS
from ..outputs.formats import RenderOptions
from ..run.app import Job, OutputOptions
from ..run.ray_connect import optional_ray_value
from ..run.progress import PREFIX, PlainReporter
from .common import guarded, input_paths, page_options, ray_options, runner_settings, start_reporter
from .options import (
    EVAL,
    OUTPUT,
    Attn,
    AttnOption,
    Batching,
    BatchingOption,
    BatchSize,
    CompileOption,
    Device,
    Dpi,
    Draw,
    Dtype,
    DtypeOption,
    FilesFrom,
    GpusPerWorker,
    ImageDpi,
    MaxNewTokens,
    MaxPatches,
    MaxPixels,
    MdFormat,
    Model,
    NulSeparated,
    OcrFormat,
    Output,
    Overwrite,
    Pages,
    PagesPerTask,
    Password,
    Paths,
    Quiet,
    Ray,
    Revision,
    Task,
    Verbose,
    Workers,
)
from .training import merge, train

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    help="Read text-heavy images and PDFs with Microsoft's KOSMOS-2.5: OCR lines with boxes, or markdown.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kosmos25 {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, metavar="", help="Print the version and exit.")
    ] = False,
) -> None:
    """Read text-heavy images and PDFs with Microsoft's KOSMOS-2.5."""


@app.command()
def ocr(
    paths: Paths = None,
    files_from: FilesFrom = None,
    null: NulSeparated = False,
    pages: Pages = None,
    dpi: Dpi = 200,
    password: Password = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    output: Output = None,
    format: Annotated[OcrFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT, help="Output format.")] = "json",
    image_dpi: ImageDpi = 300,
    draw: Draw = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    model: Model = None,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOption = Dtype.auto,
    attn: AttnOption = Attn.sdpa,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = 4096,
    max_patches: MaxPatches = None,
    batching: BatchingOption = Batching.continuous,
    compile_steps: CompileOption = False,
    ray: Ray = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = 1.0,
    pages_per_task: PagesPerTask = 32,
) -> None:
    """Every text line with its bounding box, in the original image's pixels."""
    _run(
        lambda: Job(
            task="ocr",
            paths=input_paths(paths, files_from, null),
            output=OutputOptions(OcrFormat(format).value, output, draw, overwrite, RenderOptions(image_dpi, password)),
            batch_size=batch_size,
            page_options=page_options(pages, dpi, password, max_pixels),
            runner=runner_settings(model, revision, device, dtype, attn, max_new_tokens, max_patches, batching,
                                   compile_steps),
            ray=ray_options(ray, workers, gpus_per_worker, pages_per_task, verbose),
        ),
        quiet=quiet,
        verbose=verbose,
        max_new_tokens=max_new_tokens,
    )


@app.command()
def md(
    paths: Paths = None,
    files_from: FilesFrom = None,
    null: NulSeparated = False,
    pages: Pages = None,
    dpi: Dpi = 200,
    password: Password = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    output: Output = None,
    format: Annotated[MdFormat, typer.Option("--format", "-f", rich_help_panel=OUTPUT, help="Output format.")] = "md",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    model: Model = None,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOption = Dtype.auto,
    attn: AttnOption = Attn.sdpa,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = 4096,
    max_patches: MaxPatches = None,
    batching: BatchingOption = Batching.continuous,
    compile_steps: CompileOption = False,
    ray: Ray = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = 1.0,
    pages_per_task: PagesPerTask = 32,
) -> None:
    """The page as markdown."""
    _run(
        lambda: Job(
            task="md",
            paths=input_paths(paths, files_from, null),
            output=OutputOptions(MdFormat(format).value, output, None, overwrite, RenderOptions(password=password)),
            batch_size=batch_size,
            page_options=page_options(pages, dpi, password, max_pixels),
            runner=runner_settings(model, revision, device, dtype, attn, max_new_tokens, max_patches, batching,
                                   compile_steps),
            ray=ray_options(ray, workers, gpus_per_worker, pages_per_task, verbose),
        ),
        quiet=quiet,
        verbose=verbose,
        max_new_tokens=max_new_tokens,
    )


@app.command("eval")
def eval_(
    paths: Paths = None,
    files_from: FilesFrom = None,
    null: NulSeparated = False,
    pages: Pages = None,
    dpi: Dpi = 200,
    password: Password = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    task: Annotated[Task, typer.Option(rich_help_panel=EVAL, help="ocr: lines with boxes; md: markdown.")] = Task.ocr,
    gt: Annotated[
        Optional[Path],
        typer.Option("--gt", metavar="DIR", rich_help_panel=EVAL,
                     help="Ground truth under DIR, mirroring the inputs' layout. Default: next to each input."),  # fmt: skip
    ] = None,
    iou: Annotated[
        float, typer.Option(min=0.0, max=1.0, metavar="X", rich_help_panel=EVAL, help="Least box IoU that pairs two lines.")
    ] = 0.5,
    report: Annotated[
        Optional[Path],
        typer.Option(metavar="FILE", rich_help_panel=EVAL, help="Write every page's scores to FILE (.json or .tsv)."),
    ] = None,
    baseline: Annotated[
        Optional[str],
        typer.Option(metavar="ID|DIR", rich_help_panel=EVAL, help="Also score this model on the same pages, side by side."),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    model: Model = None,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOption = Dtype.auto,
    attn: AttnOption = Attn.sdpa,
    batch_size: BatchSize = None,
    max_new_tokens: MaxNewTokens = 4096,
    max_patches: MaxPatches = None,
    batching: BatchingOption = Batching.continuous,
    compile_steps: CompileOption = False,
) -> None:
    """Score the model against ground truth: CER, WER, and line detection (ocr)."""
    from ..evaluation.run import EvalJob

    reporter = start_reporter(quiet, verbose, max_new_tokens)
    job = guarded(
        reporter,
        lambda: EvalJob(
            task=Task(task).value,
            paths=input_paths(paths, files_from, null),
            runner=runner_settings(model, revision, device, dtype, attn, max_new_tokens, max_patches, batching,
                                   compile_steps),
            page_options=page_options(pages, dpi, password, max_pixels),
            truth_dir=gt,
            iou=iou,
            report=report,
            baseline=baseline,
            batch_size=batch_size,
        ),
    )
    _run_eval(job, reporter)


app.command()(train)
app.command()(merge)


def _run_eval(job, reporter: PlainReporter) -> None:
    from ..evaluation.report import print_table, write_report
    from ..evaluation.run import evaluate

    result = guarded(reporter, lambda: evaluate(job, reporter))
    reporter.close()
    if job.report is not None:
        guarded(reporter, lambda: write_report(result, job.report))
    print_table(result, sys.stdout, terminal=sys.stdout.isatty())
    if result.failures:
        count = len(result.failures)
        reporter.error(f"{count} input{'s' * (count != 1)} or page{'s' * (count != 1)} could not be scored (see above)")
    if result.interrupted:
        reporter.error("interrupted: the scores cover the pages read before it")
    raise typer.Exit(int(result.exit_code))


def _run(build_job: Callable[[], Job], quiet: bool, verbose: bool, max_new_tokens: int) -> None:
    from ..run.app import execute
    from ..run.progress import format_summary

    reporter = start_reporter(quiet, verbose, max_new_tokens)
    job = guarded(reporter, build_job)
    summary = guarded(reporter, lambda: execute(job, reporter, stdin=sys.stdin.buffer if "-" in job.paths else None))
    reporter.close()
    if summary.interrupted:
        reporter.error(f"interrupted: {format_summary(summary)}; run the same command again to finish the rest")
    else:
        reporter.finished(summary)
    raise typer.Exit(int(summary.exit_code))


def run() -> None:
    """The `kosmos25` console script: the Typer app, with usage errors as one line on stderr."""
    try:
        code = app(args=optional_ray_value(sys.argv[1:]), prog_name="kosmos25", standalone_mode=False)
    except typer.TyperException as exc:  # the framework's usage errors (bad option value, unknown option)
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help())  # bare `kosmos25` or `kosmos25 ocr`: show the help
        else:
            command = f"{context.command_path} " if context is not None else ""
            message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix says nothing
            print(f"{PREFIX}: error: {message} (see '{command}--help')", file=sys.stderr)
        code = getattr(exc, "exit_code", ExitCode.USAGE)
    except typer.Abort:
        print(f"{PREFIX}: error: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    sys.exit(int(code or 0))
