"""The run: documents -> pages -> batches through the model -> parsed results -> sink.

Pages from consecutive documents share `generate` calls (`batch_size` pages each).
A failing input is reported and skipped; the run goes on with the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ExitCode, GenerationFailed, InputError
from .inputs import Document, Page, PageOptions, iter_pages
from .parsing import clean_markdown, parse_ocr
from .results import DocumentResult, PageResult
from .runner import RawOutput


class Sink(Protocol):
    def is_done(self, doc: Document) -> bool: ...
    def write(self, doc: Document, result: DocumentResult) -> object: ...


class Reporter(Protocol):
    def document_started(self, doc: Document) -> None: ...
    def page_done(self, doc: Document, page: int, raw: RawOutput) -> None: ...
    def document_done(self, doc: Document, result: DocumentResult, written: object) -> None: ...
    def document_failed(self, source: str, error: InputError) -> None: ...
    def document_skipped(self, doc: Document) -> None: ...


GenerateFn = Callable[[list, str], list[RawOutput]]
PageObserver = Callable[[Document, Page, PageResult], None]


@dataclass
class RunSummary:
    """Counts for the end-of-run summary and the exit code."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    pages: int = 0
    truncated_pages: int = 0
    looping_pages: int = 0
    interrupted: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.failed else ExitCode.OK


@dataclass(eq=False)  # identity semantics: states are used as dict keys
class _DocState:
    doc: Document
    pages: dict[int, PageResult] = field(default_factory=dict)
    outstanding: int = 0
    listed: bool = False
    error: InputError | None = None
    closed: bool = False


@dataclass(frozen=True)
class RunRequest:
    """What to do: the task, how to make pages, how many pages per `generate` call."""

    task: str
    model_name: str
    page_options: PageOptions
    batch_size: int = 1


class Pipeline:
    """Feeds pages to the model in batches and hands finished documents to the sink."""

    def __init__(
        self,
        request: RunRequest,
        generate: GenerateFn,
        sink: Sink,
        reporter: Reporter,
        page_observer: PageObserver | None = None,
    ) -> None:
        self.request = request
        self.generate = generate
        self.sink = sink
        self.reporter = reporter
        self.page_observer = page_observer
        self.summary = RunSummary()
        self._batch: list[tuple[_DocState, Page]] = []

    def run(self, documents: list[Document]) -> RunSummary:
        """Process every document; returns the summary (also kept on `self.summary`)."""
        for doc in documents:
            if self.sink.is_done(doc):
                self.summary.skipped += 1
                self.reporter.document_skipped(doc)
                continue
            state = _DocState(doc)
            self.reporter.document_started(doc)
            try:
                for page in iter_pages(doc, self.request.page_options):
                    state.outstanding += 1
                    self._batch.append((state, page))
                    if len(self._batch) >= self.request.batch_size:
                        self._flush()
                    if state.error:
                        break
            except InputError as error:
                self._fail(state, error)
            state.listed = True
            self._close_if_complete(state)
        self._flush()
        return self.summary

    def fail_input(self, source: str, error: InputError) -> None:
        """Count and report an input that failed before it became a document."""
        self.summary.failed += 1
        self.reporter.document_failed(source, error)

    def _flush(self) -> None:
        batch = [(state, page) for state, page in self._batch if not state.error]
        self._batch = []
        if not batch:
            return
        try:
            outputs = self.generate([page.image for _, page in batch], self.request.task)
        except GenerationFailed as error:
            if len(batch) > 1:
                # Retry alone so one bad page (or an out-of-memory batch) costs only itself.
                for item in batch:
                    self._batch = [item]
                    self._flush()
                return
            state, page = batch[0]
            self._fail(state, GenerationFailed(f"{state.doc.source}: page {page.number}: {error.message}"))
            return
        for (state, page), raw in zip(batch, outputs):
            state.pages[page.number] = self._page_result(page, raw)
            if self.page_observer:
                self.page_observer(state.doc, page, state.pages[page.number])
            state.outstanding -= 1
            self.summary.pages += 1
            self.summary.truncated_pages += raw.truncated
            self.summary.looping_pages += raw.looping
            self.reporter.page_done(state.doc, page.number, raw)
        for state in dict.fromkeys(state for state, _ in batch):
            self._close_if_complete(state)

    def _page_result(self, page: Page, raw: RawOutput) -> PageResult:
        size = page.image.size
        common = dict(
            page=page.number, width=size[0], height=size[1], dpi=page.dpi, truncated=raw.truncated, looping=raw.looping
        )
        if self.request.task == "md":
            return PageResult(**common, markdown=clean_markdown(raw.text))
        return PageResult(**common, lines=parse_ocr(raw.text, (raw.resized_width, raw.resized_height), size))

    def _fail(self, state: _DocState, error: InputError) -> None:
        if state.error is None:
            state.error = error
            self.fail_input(state.doc.source, error)

    def _close_if_complete(self, state: _DocState) -> None:
        if state.closed or state.error or not state.listed or state.outstanding:
            return
        state.closed = True
        result = DocumentResult(
            source=state.doc.source,
            model=self.request.model_name,
            task=self.request.task,
            pages=tuple(state.pages[number] for number in sorted(state.pages)),
        )
        written = self.sink.write(state.doc, result)
        self.summary.done += 1
        self.reporter.document_done(state.doc, result, written)
