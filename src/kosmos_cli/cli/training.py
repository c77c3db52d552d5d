"""The `train` and `merge` commands (registered on the app in `commands.py`). Imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ExitCode, UsageError
from ..inputs.documents import DEFAULT_MAX_PIXELS
from ..model.loading import default_model
from .common import guarded, input_paths, page_options, start_reporter
from .options import (
    MODEL,
    OUTPUT,
    TRAINING,
    Device,
    Dpi,
    Dtype,
    FilesFrom,
    MaxPatches,
    MaxPixels,
    Method,
    Model,
    NulSeparated,
    Pages,
    Password,
    Paths,
    Quiet,
    Revision,
    Task,
    Verbose,
)


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
    from ..training.loop import TrainJob, train as run_training

    reporter = start_reporter(quiet, verbose, 0)

    def build() -> TrainJob:
        if output is not None and resume is not None and output.resolve() != resume.resolve():
            raise UsageError(f"--resume {resume} continues that run in its own folder: leave out -o {output}")
        run_dir = output if output is not None else resume
        if run_dir is None:
            raise UsageError("give the run folder with -o RUN_DIR")
        return TrainJob(
            task=Task(task).value, paths=input_paths(paths, files_from, null), run_dir=run_dir,
            model=model or default_model(), revision=revision, device=device, dtype=Dtype(dtype).value,
            max_patches=max_patches, page_options=page_options(pages, dpi, password, max_pixels), truth_dir=gt,
            method=Method(method).value, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
            grad_accum=grad_accum, val_split=val_split, patience=patience, seed=seed, lora_rank=lora_rank,
            lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_vision=lora_vision, warmup_steps=warmup_steps,
            eval_every=eval_every, resume=resume is not None,
        )  # fmt: skip

    job = guarded(reporter, build)
    summary = guarded(reporter, lambda: run_training(job, reporter))
    best = f"best loss {summary.best_loss:.4f}" if summary.best_loss is not None else "no loss recorded"
    reporter.info(f"{summary.steps} steps in {summary.epochs} epochs, {best}; load it with --model {job.run_dir / 'best'}")
    raise typer.Exit(int(ExitCode.SOME_FAILED if summary.failures else ExitCode.OK))


def merge(
    adapter: Annotated[str, typer.Argument(metavar="ADAPTER_DIR", help="A LoRA adapter folder (RUN_DIR/best).")],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for the merged model.")],
    dtype: Annotated[Dtype, typer.Option(help="Weights of the merged model; auto: float32.")] = Dtype.auto,
) -> None:
    """Merge a LoRA adapter into its base model: one ordinary model folder."""
    from ..training.merge import merge_adapter

    reporter = start_reporter(False, False, 0)
    value = "float32" if dtype == Dtype.auto else Dtype(dtype).value
    saved = guarded(reporter, lambda: merge_adapter(adapter, output, value))
    reporter.info(f"merged model saved to {saved}")
