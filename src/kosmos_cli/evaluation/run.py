"""`kosmos25 eval`: documents + ground truth -> the model (as `ocr`/`md` run it) -> scores.

Every pair of page and ground truth is checked before any model loads; a bad pair is
reported and left out, the rest are scored. With a baseline model, the same pages are
read by it too (one model in memory at a time) and scored side by side.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExitCode, GroundTruthError, InputError, UsageError
from ..inputs.documents import Document, PageOptions, collect_documents
from ..model.runner import RunnerSettings
from ..outputs.files import check_folder_writable
from ..run.progress import PlainReporter
from .groundtruth import DocumentTruth, PageTruth, load_document_truth
from .metrics import DEFAULT_IOU, PageScore
from .scoring import ModelPageEval, score_page
from .targets import TokenBudget, count_tokens, target_text

REPORT_SUFFIXES = (".json", ".tsv")


@dataclass(frozen=True)
class EvalJob:
    """Everything one `kosmos25 eval` run needs, as given on the command line."""

    task: str
    paths: tuple[str, ...]
    runner: RunnerSettings
    page_options: PageOptions = field(default_factory=PageOptions)
    truth_dir: Path | None = None
    iou: float = DEFAULT_IOU
    report: Path | None = None
    baseline: str | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class PageEval:
    """One scored page: where it is from, its ground truth file, and each model's score."""

    source: str
    page: int
    truth: str
    result: ModelPageEval
    baseline: ModelPageEval | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "page": self.page, "truth": self.truth}
        out |= self.result.to_dict()
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_dict()
        return out


@dataclass(frozen=True)
class Failure:
    """An input, or one of its pages, that could not be scored, and why."""

    source: str
    page: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "page": self.page, "error": self.message}


@dataclass(frozen=True)
class EvalReport:
    """The outcome of an eval run: scored pages (input order), failures, and totals."""

    task: str
    model: str
    pages: tuple[PageEval, ...]
    failures: tuple[Failure, ...] = ()
    baseline_model: str | None = None
    iou: float = DEFAULT_IOU
    interrupted: bool = False

    @property
    def summary(self) -> PageScore:
        """Totals over every scored page: edits and counts added, then divided."""
        return sum((page.result.score for page in self.pages), PageScore())

    @property
    def baseline_summary(self) -> PageScore | None:
        if self.baseline_model is None:
            return None
        return sum((page.baseline.score for page in self.pages if page.baseline), PageScore())

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.failures else ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        # With no page scored there is no rate to give: null, not a perfect 0.
        unscored = {"cer": None, "wer": None, "wer_unordered": None}
        summary = {"model": self.model, "task": self.task, "iou_threshold": self.iou, "pages": len(self.pages),
                   "failed": len(self.failures)} | (self.summary.to_dict() if self.pages else unscored)  # fmt: skip
        out: dict[str, Any] = {"summary": summary}
        if self.baseline_model is not None:
            out["baseline"] = {"model": self.baseline_model} | (self.baseline_summary.to_dict() if self.pages else unscored)
        out["pages"] = [page.to_dict() for page in self.pages]
        out["failures"] = [failure.to_dict() for failure in self.failures]
        return out


def check_report_path(report: Path | None) -> None:
    """A usable report path, checked before anything runs (UsageError / OutputFailed)."""
    if report is None:
        return
    if report.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"--report {report}: use a .json or .tsv file name")
    check_folder_writable(report.parent if str(report.parent) else Path("."))


def gather_truth(
    job: EvalJob, documents: list[Document], reporter: PlainReporter
) -> tuple[dict[int, DocumentTruth], list[Failure]]:
    """Every document's ground truth, checked; failures reported as they are found."""
    truths: dict[int, DocumentTruth] = {}
    failures: list[Failure] = []
    for doc in documents:
        try:
            truths[id(doc)] = load_document_truth(doc, job.task, job.page_options, job.truth_dir)
        except InputError as error:
            failures.append(Failure(doc.source, None, error.message))
            reporter.error(error.message)
    return truths, failures


def check_lengths(
    job: EvalJob, documents: list[Document], truths: dict[int, DocumentTruth], loaded: tuple | None = None
) -> None:
    """Replace pages whose ground truth is longer than the model can write by a TargetTooLong.

    Updates `truths` in place: the page's entry becomes its error, as `load_document_truth`
    records the pages it rules out itself. `loaded`: the model's (processor, config) when the
    caller has them already, so they are not read twice.
    """
    from ..model.loading import load_processor

    processor, config = loaded or load_processor(job.runner.model, job.runner.revision)
    budget = TokenBudget.for_model(config, job.runner.max_new_tokens)
    max_patches = job.runner.max_patches or processor.image_processor.max_patches
    for doc in documents:
        truth = truths.get(id(doc))
        if truth is None:
            continue
        for number, page in truth.pages.items():
            if isinstance(page, PageTruth):
                text = target_text(page, truth.geometry[number], max_patches)
                try:
                    budget.check(count_tokens(processor.tokenizer, text), f"{doc.source}: page {number}")
                except GroundTruthError as error:
                    truth.pages[number] = error


def _read(settings: RunnerSettings, job: EvalJob, documents: list[Document], reporter: PlainReporter):
    """Run one model over `documents` exactly as `ocr`/`md` do; returns the collector."""
    from ..api import MemorySink, Reader

    reader = Reader.from_settings(settings, job.batch_size)
    reporter.info(reader.describe())
    collector = MemorySink(raise_errors=False)
    reporter.started(len(documents))
    pipeline = reader.read(job.task, documents, collector, reporter, job.page_options)
    try:
        pipeline.run(documents)
    finally:
        del reader, pipeline
        gc.collect()  # one model in memory at a time: free this one before the baseline loads
        _empty_device_cache()
    return collector


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(job: EvalJob, reporter: PlainReporter) -> EvalReport:
    """Run an eval job to the end and return its report (see the module docstring).

    Raises UsageError, ModelUnavailable or OutputFailed for run-wide failures.
    """
    if job.task not in ("ocr", "md"):
        raise UsageError(f"--task {job.task}: expected ocr or md")
    if "-" in job.paths:
        raise UsageError("eval reads files with ground truth next to them; standard input ('-') has none")
    check_report_path(job.report)
    documents, missing = collect_documents(job.paths)
    failures = [Failure(source, None, error.message) for source, error in missing]
    for failure in failures:
        reporter.error(failure.message)
    truths, truth_failures = gather_truth(job, documents, reporter)
    failures += truth_failures
    check_lengths(job, documents, truths)
    for doc in documents:
        truth = truths.get(id(doc))
        for number, page in truth.pages.items() if truth else ():
            if isinstance(page, GroundTruthError):
                failures.append(Failure(doc.source, number, page.message))
                reporter.error(page.message)
    runnable = [doc for doc in documents if id(doc) in truths and any(
        isinstance(page, PageTruth) for page in truths[id(doc)].pages.values())]  # fmt: skip
    if not runnable:
        return EvalReport(job.task, job.runner.model, (), tuple(failures), job.baseline, job.iou)
    interrupted = False
    models = [job.runner] + ([_with_model(job.runner, job.baseline)] if job.baseline else [])
    collected = []
    for settings in models:
        try:
            collected.append(_read(settings, job, runnable, reporter))
        except KeyboardInterrupt:
            interrupted = True
            break
    pages: list[PageEval] = []
    for doc in runnable:
        truth = truths[id(doc)]
        outcomes = [collector.finished.get(id(doc)) for collector in collected]
        results = [None if isinstance(outcome, InputError) else outcome for outcome in outcomes]
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, InputError):
                which = "" if index == 0 else f" (baseline {job.baseline})"
                failures.append(Failure(doc.source, None, outcome.message + which))
        if any(result is None for result in results) or len(results) < len(models):
            continue
        read = [{page.page: page for page in result.pages} for result in results]
        for number, page_truth in truth.pages.items():
            if not isinstance(page_truth, PageTruth):
                continue
            scored = [score_page(by_number[number], page_truth, job.iou) for by_number in read]
            pages.append(PageEval(doc.source, number, str(truth.path), scored[0], scored[1] if len(scored) > 1 else None))
    return EvalReport(job.task, job.runner.model, tuple(pages), tuple(failures), job.baseline, job.iou, interrupted)


def _with_model(settings: RunnerSettings, model: str) -> RunnerSettings:
    from dataclasses import replace

    return replace(settings, model=model)
