"""Command line: parses options, calls the library, maps errors to exit codes.

Imports no torch at module level, so `kosmos25 --help` is instant. Every option is
defined once in `cli_options` and grouped into help panels; the commands share them.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .cli_options import (
    EVAL,
    MODEL,
    OUTPUT,
    TRAINING,
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
    Method,
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
from .errors import ExitCode, KosmosError, UsageError
from .inputs.documents import DEFAULT_MAX_PIXELS, PageOptions, parse_page_selection
from .model.loading import default_model
from .model.runner import RunnerSettings
from .outputs.formats import RenderOptions
from .run.app import Job, OutputOptions
from .run.distributed import RayOptions, is_ray_address, optional_ray_value
from .run.progress import PREFIX, PlainReporter

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
            paths=_input_paths(paths, files_from, null),
            output=OutputOptions(OcrFormat(format).value, output, draw, overwrite, RenderOptions(image_dpi, password)),
            batch_size=batch_size,
            page_options=_page_options(pages, dpi, password, max_pixels),
            runner=_runner_settings(model, revision, device, dtype, attn, max_new_tokens, max_patches, batching,
                                   compile_steps),
            ray=_ray_options(ray, workers, gpus_per_worker, pages_per_task, verbose),
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
            paths=_input_paths(paths, files_from, null),
            output=OutputOptions(MdFormat(format).value, output, None, overwrite, RenderOptions(password=password)),
            batch_size=batch_size,
            page_options=_page_options(pages, dpi, password, max_pixels),
            runner=_runner_settings(model, revision, device, dtype, attn, max_new_tokens, max_patches, batching,
                                   compile_steps),
            ray=_ray_options(ray, workers, gpus_per_worker, pages_per_task, verbose),
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
    from .evaluation.run import EvalJob

    reporter = _start(quiet, verbose, max_new_tokens)
    job = _guarded(
        reporter,
        lambda: EvalJob(
            task=Task(task).value,
            paths=_input_paths(paths, files_from, null),
            runner=_runner_settings(model, revision, device, dtype, attn, max_new_tokens, max_patches, batching,
                                   compile_steps),
            page_options=_page_options(pages, dpi, password, max_pixels),
            truth_dir=gt,
            iou=iou,
            report=report,
            baseline=baseline,
            batch_size=batch_size,
        ),
    )
    _run_eval(job, reporter)


@app.command()
def train(
    paths: Paths = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", metavar="RUN_DIR", rich_help_panel=OUTPUT,
                     help="Run folder: config.json, metrics.jsonl, best/, last/."),  # fmt: skip
    ] = None,
    files_from: FilesFrom = None,
    null: NulSeparated = False,
    pages: Pages = None,
    dpi: Dpi = 200,
    password: Password = None,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    task: Annotated[Task, typer.Option(rich_help_panel=TRAINING, help="ocr: lines with boxes; md: markdown.")] = Task.ocr,
    gt: Annotated[
        Optional[Path],
        typer.Option("--gt", metavar="DIR", rich_help_panel=TRAINING,
                     help="Ground truth under DIR, mirroring the inputs' layout. Default: next to each input."),  # fmt: skip
    ] = None,
    method: Annotated[
        Method, typer.Option(rich_help_panel=TRAINING, help="lora: a small adapter (needs peft); full: every weight.")
    ] = Method.lora,
    epochs: Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="Passes over the pages.")] = 3,
    max_steps: Annotated[
        Optional[int], typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="Stop after N optimizer steps.")
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(min=0.0, metavar="X", rich_help_panel=TRAINING, help="Learning rate. Default: 2e-4 (lora), 1e-5 (full)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="Pages per forward pass.")] = 1,
    grad_accum: Annotated[
        int, typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="Forward passes per optimizer step.")
    ] = 1,
    val_split: Annotated[
        float, typer.Option(min=0.0, max=0.99, metavar="X", rich_help_panel=TRAINING, help="Share of pages held out for validation.")
    ] = 0.1,
    patience: Annotated[
        int, typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="Stop after N validations without a better loss.")
    ] = 2,
    seed: Annotated[int, typer.Option(metavar="N", rich_help_panel=TRAINING, help="Seed for the split, order and init.")] = 0,
    lora_rank: Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[
        Optional[float], typer.Option(min=0.0, metavar="X", rich_help_panel=TRAINING, help="LoRA alpha. Default: 2 x rank.")
    ] = None,
    lora_dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, metavar="X", rich_help_panel=TRAINING, help="Dropout on LoRA's inputs.")
    ] = 0.0,
    lora_vision: Annotated[
        bool, typer.Option("--lora-vision", rich_help_panel=TRAINING, help="Adapt the vision encoder's projections too.")
    ] = False,
    warmup_steps: Annotated[
        Optional[int],
        typer.Option(min=0, metavar="N", rich_help_panel=TRAINING, help="Linear warm-up steps before the cosine decay. Default: 10%."),
    ] = None,
    eval_every: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", rich_help_panel=TRAINING, help="Validate every N steps. Default: at each epoch's end."),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option("--resume", metavar="RUN_DIR", rich_help_panel=TRAINING,
                     help="Continue the run in RUN_DIR from its last/ (same inputs and settings)."),  # fmt: skip
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    model: Model = None,
    revision: Revision = None,
    device: Device = "auto",
    dtype: Annotated[Dtype, typer.Option(rich_help_panel=MODEL, help="Weights while training; auto: float32.")] = Dtype.auto,
    max_patches: MaxPatches = None,
) -> None:
    """Fine-tune the model on pages with ground truth (the files eval reads)."""
    from .training.loop import TrainJob, train as run_training

    reporter = _start(quiet, verbose, 0)

    def build() -> TrainJob:
        if output is not None and resume is not None and output.resolve() != resume.resolve():
            raise UsageError(f"--resume {resume} continues that run in its own folder: leave out -o {output}")
        run_dir = output if output is not None else resume
        if run_dir is None:
            raise UsageError("give the run folder with -o RUN_DIR")
        return TrainJob(
            task=Task(task).value, paths=_input_paths(paths, files_from, null), run_dir=run_dir,
            model=model or default_model(), revision=revision, device=device, dtype=Dtype(dtype).value,
            max_patches=max_patches, page_options=_page_options(pages, dpi, password, max_pixels), truth_dir=gt,
            method=Method(method).value, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
            grad_accum=grad_accum, val_split=val_split, patience=patience, seed=seed, lora_rank=lora_rank,
            lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_vision=lora_vision, warmup_steps=warmup_steps,
            eval_every=eval_every, resume=resume is not None,
        )  # fmt: skip

    job = _guarded(reporter, build)
    summary = _guarded(reporter, lambda: run_training(job, reporter))
    best = f"best loss {summary.best_loss:.4f}" if summary.best_loss is not None else "no loss recorded"
    reporter.info(f"{summary.steps} steps in {summary.epochs} epochs, {best}; load it with --model {job.run_dir / 'best'}")
    raise typer.Exit(int(ExitCode.SOME_FAILED if summary.failures else ExitCode.OK))


@app.command()
def merge(
    adapter: Annotated[str, typer.Argument(metavar="ADAPTER_DIR", help="A LoRA adapter folder (RUN_DIR/best).")],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for the merged model.")],
    dtype: Annotated[Dtype, typer.Option(help="Weights of the merged model; auto: float32.")] = Dtype.auto,
) -> None:
    """Merge a LoRA adapter into its base model: one ordinary model folder."""
    from .training.merge import merge_adapter

    reporter = _start(False, False, 0)
    value = "float32" if dtype == Dtype.auto else Dtype(dtype).value
    saved = _guarded(reporter, lambda: merge_adapter(adapter, output, value))
    reporter.info(f"merged model saved to {saved}")


def _run_eval(job, reporter: PlainReporter) -> None:
    from .evaluation.report import print_table, write_report
    from .evaluation.run import evaluate

    result = _guarded(reporter, lambda: evaluate(job, reporter))
    reporter.close()
    if job.report is not None:
        _guarded(reporter, lambda: write_report(result, job.report))
    print_table(result, sys.stdout, terminal=sys.stdout.isatty())
    if result.failures:
        count = len(result.failures)
        reporter.error(f"{count} input{'s' * (count != 1)} or page{'s' * (count != 1)} could not be scored (see above)")
    if result.interrupted:
        reporter.error("interrupted: the scores cover the pages read before it")
    raise typer.Exit(int(result.exit_code))


def _start(quiet: bool, verbose: bool, max_new_tokens: int) -> PlainReporter:
    """The run's reporter, with library warnings routed and SIGTERM turned into Ctrl-C."""
    from .run.progress import make_reporter

    reporter = make_reporter(quiet=quiet, max_new_tokens=max_new_tokens)
    _route_library_messages(verbose, reporter)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return reporter


def _guarded(reporter: PlainReporter, work: Callable):
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


def _page_options(pages: str | None, dpi: int, password: str | None, max_pixels: int) -> PageOptions:
    return PageOptions(dpi=dpi, pages=parse_page_selection(pages), max_pixels=max_pixels, password=password)


def _runner_settings(model: str | None, revision: str | None, device: str, dtype: Dtype, attn: Attn,
                     max_new_tokens: int, max_patches: int | None, batching: Batching,
                     compile_steps: bool) -> RunnerSettings:  # fmt: skip
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


def _ray_options(address: str | None, workers: int | None, gpus_per_worker: float, pages_per_task: int,
                 verbose: bool) -> RayOptions | None:  # fmt: skip
    if address is None:
        if workers is not None:
            raise UsageError("--workers applies with --ray")
        return None
    if address and not is_ray_address(address):
        raise UsageError(f"--ray {address}: not a Ray address (auto, local, HOST:PORT or ray://HOST:PORT)")
    return RayOptions(address, workers, gpus_per_worker, verbose, pages_per_task)


def _input_paths(paths: list[str] | None, files_from: str | None, nul_separated: bool) -> tuple[str, ...]:
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


def _route_library_messages(verbose: bool, reporter: PlainReporter) -> None:
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


def _run(build_job: Callable[[], Job], quiet: bool, verbose: bool, max_new_tokens: int) -> None:
    from .run.app import execute
    from .run.progress import format_summary

    reporter = _start(quiet, verbose, max_new_tokens)
    job = _guarded(reporter, build_job)
    summary = _guarded(reporter, lambda: execute(job, reporter, stdin=sys.stdin.buffer if "-" in job.paths else None))
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
