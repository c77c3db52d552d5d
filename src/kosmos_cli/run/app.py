"""The library's entry point: one run of `ocr` or `md` over a list of paths.

Ties the pieces together in data-flow order: inputs -> runner -> parsing -> writers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from ..outputs.drawing import PageDrawer
from ..errors import UsageError
from ..inputs.documents import PageOptions, collect_documents
from .pipeline import Pipeline, RunRequest, RunSummary
from .progress import PlainReporter
from ..model.runner import ModelRunner, RunnerSettings, auto_batch_size
from ..outputs.writers import DirectorySink, StdoutSink, check_folder_writable


@dataclass(frozen=True)
class Job:
    """Everything one run needs, as given on the command line."""

    task: str
    paths: tuple[str, ...]
    fmt: str
    output_dir: Path | None = None
    draw_dir: Path | None = None
    overwrite: bool = False
    batch_size: int | None = None  # None: chosen from free memory
    page_options: PageOptions = field(default_factory=PageOptions)
    runner: RunnerSettings = field(default_factory=RunnerSettings)


def execute(job: Job, reporter: PlainReporter, stdin: io.BufferedIOBase | None = None) -> RunSummary:
    """Run a job to the end (or until Ctrl-C / SIGTERM) and return its summary.

    Raises UsageError, ModelUnavailable or OutputFailed for run-wide failures; a
    failing input is reported through `reporter` and counted, and the run goes on.
    The model is loaded once, and not at all when every output already exists.
    """
    if job.draw_dir is not None and job.task != "ocr":
        raise UsageError("--draw draws OCR boxes; use it with 'kosmos25 ocr'")
    documents, missing = collect_documents(job.paths, stdin)
    for folder in (job.output_dir, job.draw_dir):
        if folder is not None:
            check_folder_writable(folder)
    if job.output_dir is not None:
        sink = DirectorySink(job.output_dir, job.fmt, overwrite=job.overwrite)
    else:
        sink = StdoutSink(job.fmt, several=len(documents) > 1)
    prepare, generate, batch_size = _no_model, _no_model, 1
    if any(not sink.is_done(doc) for doc in documents):
        runner = ModelRunner(job.runner)
        prepare, generate = runner.prepare, runner.generate_prepared
        batch_size = job.batch_size or auto_batch_size(runner)
        reporter.info(
            f"model {job.runner.model} on {runner.device} ({str(runner.dtype).removeprefix('torch.')}, "
            f"{runner.attention} attention), {batch_size} page{'s' * (batch_size != 1)} per batch"
        )
    request = RunRequest(job.task, job.runner.model, job.page_options, batch_size)
    drawer = PageDrawer(job.draw_dir) if job.draw_dir else None
    pipeline = Pipeline(request, prepare, generate, sink, reporter, drawer)
    reporter.started(len(documents) + len(missing))
    for source, error in missing:
        pipeline.fail_input(source, error)
    try:
        pipeline.run(documents)
    except KeyboardInterrupt:
        pipeline.summary.interrupted = True
    return pipeline.summary


def _no_model(*args):  # pragma: no cover - never called: every input is skipped
    raise RuntimeError("the model was not loaded because every output already existed")
