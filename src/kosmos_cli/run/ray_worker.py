"""What runs on a Ray worker (`--ray`): the units of work and the actor that reads them.

A `KosmosWorker` actor loads the model once (a `Reader`) and reads the units the driver
(`distributed.RayRun`) sends it with the single-machine pipeline, collecting what
happened to each document into a `UnitOutcome` for the driver to merge. Nothing here
imports Ray: the driver wraps `KosmosWorker` as an actor class.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

from ..errors import InputError, KosmosError
from ..inputs.documents import Document, PageOptions
from ..model.records import RawOutput
from ..model.runner import RunnerSettings
from ..results import DocumentResult, PageResult, Unfinished
from .pipeline import PageObserver


@dataclass(frozen=True)
class WorkUnit:
    """One piece of work: a document, or a page range of one (`pages`; None: all the
    pages the run asks for)."""

    key: int
    doc: Document
    pages: frozenset[int] | None


@dataclass(frozen=True)
class UnitOutcome:
    """What a worker made of a unit: its pages (failed ones with their `error`), or
    the document's error when it could not be read at all."""

    key: int
    pages: tuple[PageResult, ...] = ()
    error: InputError | None = None


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs to read like the local run does."""

    settings: RunnerSettings
    batch_size: int | None
    task: str
    page_options: PageOptions
    page_observer: PageObserver | None
    verbose: bool


class KosmosWorker:
    """A Ray actor: loads the model once, then reads units with the local pipeline."""

    def __init__(self, setup: WorkerSetup) -> None:
        from ..api import Reader

        if not setup.verbose:
            warnings.simplefilter("ignore")  # as the command line does: library warnings off
        self.setup = setup
        self.reader: Reader | None = None
        self.error: KosmosError | None = None
        try:
            self.reader = Reader.from_settings(setup.settings, setup.batch_size)
        except KosmosError as error:  # kept, not raised: the driver shows it as the local run would
            self.error = error

    def ready(self) -> str | KosmosError:
        """The model's description, or why it could not be loaded."""
        return self.error if self.error is not None else self.reader.describe()

    def read(self, units: list[WorkUnit]) -> list[UnitOutcome] | KosmosError:
        """Read `units` (sharing `generate` calls, like a local run); a run-wide error
        (an unwritable --draw folder) comes back as the error."""
        if self.error is not None:  # a replacement worker that could not load the model
            return self.error
        pages = units[0].pages
        options = self.setup.page_options if pages is None else replace(self.setup.page_options, pages=pages)
        collector = _UnitCollector()
        documents = [unit.doc for unit in units]
        try:
            self.reader.read(self.setup.task, documents, collector, collector, options, self.setup.page_observer).run(
                documents
            )
        except KosmosError as error:
            if isinstance(error, InputError):
                raise  # not expected: the pipeline reports input errors; let the driver retry
            return error
        return [collector.outcome(unit) for unit in units]


class _UnitCollector:
    """The worker's sink and reporter at once: keeps what happened to each document."""

    def __init__(self) -> None:
        self.results: dict[int, DocumentResult] = {}
        self.errors: dict[str, InputError] = {}  # by source: what the pipeline reports them by
        self.failed_pages: dict[int, dict[int, InputError]] = {}

    def outcome(self, unit: WorkUnit) -> UnitOutcome:
        key = id(unit.doc)
        if unit.doc.source in self.errors:
            return UnitOutcome(unit.key, error=self.errors[unit.doc.source])
        if key in self.results:
            return UnitOutcome(unit.key, pages=self.results[key].pages)
        # Not one page read: the pipeline wrote nothing, but the pages' errors are known.
        failed = self.failed_pages.get(key, {})
        return UnitOutcome(unit.key, pages=tuple(PageResult.failed(n, e.message) for n, e in sorted(failed.items())))

    # Sink
    def is_done(self, doc: Document) -> bool:
        return False

    def unfinished(self, doc: Document, task: str, model: str) -> Unfinished | None:
        return None

    def write(self, doc: Document, result: DocumentResult) -> None:
        self.results[id(doc)] = result

    def failed(self, doc: Document, error: InputError) -> None:
        """Told apart below: `document_failed` (the document) or only its pages failed."""

    # Reporter
    def document_started(self, doc: Document) -> None:
        pass

    def page_done(self, doc: Document, page: int, raw: RawOutput) -> None:
        pass

    def page_failed(self, doc: Document, page: int, error: InputError) -> None:
        self.failed_pages.setdefault(id(doc), {})[page] = error

    def document_done(self, doc: Document, result: DocumentResult, written: object) -> None:
        pass

    def document_incomplete(self, doc: Document, result: DocumentResult | None, written: object) -> None:
        pass

    def document_failed(self, source: str, error: InputError) -> None:
        self.errors[source] = error

    def document_skipped(self, doc: Document) -> None:
        pass
