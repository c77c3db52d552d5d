"""One run of `ocr` or `md` over a list of paths, as the command line asks for it.

Ties the pieces together in data-flow order: inputs -> model (through the Python
API's Reader, the same code path scripts use) -> parsing -> outputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, UsageError
from ..inputs.documents import Document, PageOptions, collect_documents
from ..model.runner import RunnerSettings
from ..outputs.drawing import PageDrawer
from ..outputs.files import DirectorySink, StdoutSink, check_folder_writable
from ..outputs.formats import RenderOptions, output_format
from .pipeline import RunSummary
from .ray_connect import RayOptions
from .ray_worker import WorkerSetup
from .progress import PlainReporter


@dataclass(frozen=True)
class OutputOptions:
    """Where and how results are written."""

    fmt: str
    folder: Path | None = None  # None: stdout
    draw_dir: Path | None = None
    overwrite: bool = False
    render: RenderOptions = field(default_factory=RenderOptions)


@dataclass(frozen=True)
class Job:
    """Everything one run needs, as given on the command line."""

    task: str
    paths: tuple[str, ...]
    output: OutputOptions
    batch_size: int | None = None  # None: chosen from free memory
    page_options: PageOptions = field(default_factory=PageOptions)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    ray: RayOptions | None = None  # None: run here; else on Ray


def execute(job: Job, reporter: PlainReporter, stdin: io.BufferedIOBase | None = None) -> RunSummary:
    """Run a job to the end (or until Ctrl-C / SIGTERM) and return its summary.

    Raises UsageError, ModelUnavailable or OutputFailed for run-wide failures; a
    failing input is reported through `reporter` and counted, and the run goes on.
    The model is loaded once, and not at all when every output already exists.
    """
    from ..api import Reader

    out = job.output
    fmt = output_format(out.fmt, job.task)
    if out.draw_dir is not None and job.task != "ocr":
        raise UsageError("--draw draws OCR boxes; use it with 'kosmos25 ocr'")
    documents, missing = collect_documents(job.paths, stdin)
    if out.folder is None and fmt.one_per_stream and len(documents) + len(missing) > 1:
        raise UsageError(f"--format {fmt.name} writes one file per input: give -o DIR for several inputs")
    for folder in (out.folder, out.draw_dir):
        if folder is not None:
            check_folder_writable(folder)
    if out.folder is not None:
        sink = DirectorySink(out.folder, fmt, out.render, overwrite=out.overwrite)
    else:
        sink = StdoutSink(fmt, out.render, several=len(documents) > 1)
    drawer = PageDrawer(out.draw_dir) if out.draw_dir else None
    reporter.started(len(documents) + len(missing))
    if job.ray is not None:
        return _execute_on_ray(job, documents, missing, sink, drawer, reporter)
    if any(not sink.is_done(doc) for doc in documents):
        reader = Reader.from_settings(job.runner, job.batch_size)
        reporter.info(reader.describe())
        pipeline = reader.read(job.task, documents, sink, reporter, job.page_options, drawer)
    else:
        pipeline = None
    summary = pipeline.summary if pipeline else RunSummary()
    for source, error in missing:
        summary.failed += 1
        reporter.document_failed(source, error)
    if pipeline is None:
        for doc in documents:
            summary.skipped += 1
            reporter.document_skipped(doc)
        return summary
    try:
        pipeline.run(documents)
    except KeyboardInterrupt:
        summary.interrupted = True
    return summary


def _execute_on_ray(job: Job, documents: list[Document], missing: list[tuple[str, InputError]],
                    sink: DirectorySink | StdoutSink, drawer: PageDrawer | None, reporter: PlainReporter) -> RunSummary:  # fmt: skip
    """The same run with its documents shared out to Ray workers (`run/distributed.py`)."""
    from .distributed import run_on_ray

    summary = RunSummary()
    for source, error in missing:
        summary.failed += 1
        reporter.document_failed(source, error)
    setup = WorkerSetup(job.runner, job.batch_size, job.task, job.page_options, drawer, job.ray.verbose)
    run_on_ray(job.ray, setup, documents, sink, reporter, summary, in_order=job.output.folder is None)
    return summary
