"""The run: documents -> pages -> batches through the model -> parsed results -> sink.

Pages are read and prepared ahead of the model in a background thread (bounded, so
a 500-page PDF is never all in memory), pages from consecutive documents share
`generate` calls, and results are written by a background writer. A failing input
is reported and skipped; the run goes on with the rest. A failing page costs only
itself: the document is written without it (and marked so the next run reads just
the missing pages).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .background import BackgroundWriter, read_ahead
from ..errors import ExitCode, GenerationFailed, InputError
from ..inputs.documents import Document, Page, PageFailure, PageOptions, iter_page_outcomes
from ..parsing import clean_markdown, parse_ocr
from ..results import DocumentResult, PageResult, Unfinished
from ..model.records import RawOutput


class Sink(Protocol):
    def is_done(self, doc: Document) -> bool: ...
    def unfinished(self, doc: Document, task: str, model: str) -> Unfinished | None: ...
    def write(self, doc: Document, result: DocumentResult) -> object: ...
    def failed(self, doc: Document, error: InputError) -> None: ...


class Reporter(Protocol):
    def document_started(self, doc: Document) -> None: ...
    def page_done(self, doc: Document, page: int, raw: RawOutput) -> None: ...
    def document_done(self, doc: Document, result: DocumentResult, written: object) -> None: ...
    def document_failed(self, source: str, error: InputError) -> None: ...
    def page_failed(self, doc: Document, page: int, error: InputError) -> None: ...
    def document_incomplete(self, doc: Document, result: DocumentResult | None, written: object) -> None: ...
    def document_skipped(self, doc: Document) -> None: ...


PrepareFn = Callable[[Any], Any]
GenerateFn = Callable[[list, str], list[RawOutput]]
# Continuous batching: (key, prepared page) pairs in, (key, RawOutput) out as pages finish.
StreamFn = Callable[[Iterator[tuple[int, Any]], str], Iterator[tuple[int, RawOutput]]]
PageObserver = Callable[[Document, Page, PageResult], None]


@dataclass
class RunSummary:
    """Counts for the end-of-run summary and the exit code."""

    done: int = 0
    skipped: int = 0
    failed: int = 0  # documents failed, or written with pages missing
    pages: int = 0
    failed_pages: int = 0
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


@dataclass(frozen=True)
class RunRequest:
    """What to do: the task, how to make pages, how many pages decode at a time."""

    task: str
    model_name: str
    page_options: PageOptions
    batch_size: int = 1


@dataclass(frozen=True)
class _Event:
    """What the read-ahead thread found: a skipped, started, failed or finished
    document, one of its pages with its prepared model input, or a page that
    cannot be read ("page_error"). "start" carries what an earlier run left."""

    kind: str
    doc: Document
    page: Page | None = None
    prepared: Any = None
    error: InputError | None = None
    unfinished: Unfinished | None = None
    page_number: int = 0


@dataclass(eq=False)  # identity semantics: states are used as dict keys
class _DocState:
    doc: Document
    pages: dict[int, PageResult] = field(default_factory=dict)
    failed_pages: dict[int, InputError] = field(default_factory=dict)
    earlier: tuple[PageResult, ...] = ()  # pages an earlier run read (resuming)
    outstanding: int = 0
    listed: bool = False
    error: InputError | None = None
    closed: bool = False


class Pipeline:
    """Feeds pages to the model and hands finished documents to the sink.

    With `stream` (continuous batching) a page joins the running batch as soon as a
    slot is free; without it, pages are read in static batches of `batch_size` by
    `generate`, which also reads alone any page whose stream (or batch) failed.
    """

    def __init__(
        self,
        request: RunRequest,
        prepare: PrepareFn,
        generate: GenerateFn,
        sink: Sink,
        reporter: Reporter,
        page_observer: PageObserver | None = None,
        stream: StreamFn | None = None,
    ) -> None:
        self.request = request
        self.prepare = prepare
        self.generate = generate
        self.stream = stream
        self.sink = sink
        self.reporter = reporter
        self.page_observer = page_observer
        self.summary = RunSummary()
        self._batch: list[tuple[_DocState, Page, Any]] = []
        self._writer: BackgroundWriter | None = None

    def run(self, documents: list[Document]) -> RunSummary:
        """Process every document; returns the summary (also kept on `self.summary`)."""
        for _ in self.steps(documents):
            pass
        return self.summary

    def steps(self, documents: list[Document]) -> Iterator[None]:
        """Process every document, pausing after each event or finished page so a caller
        can collect finished results as they come (the Python API's `ocr_many` does)."""
        self._state: _DocState | None = None
        with BackgroundWriter() as self._writer:
            events = read_ahead(self._events(documents), depth=2 * self.request.batch_size)
            if self.stream is None:
                for event in events:
                    if self._handle(event) is not None:
                        self._batch.append(self._handle_page(event))
                        if len(self._batch) >= self.request.batch_size:
                            self._flush()
                    yield
                self._flush()
            else:
                yield from self._stream_steps(events)
        yield

    def _handle(self, event: _Event) -> _Event | None:
        """Book-keeping for one event; returns a page event for the model, else None."""
        state = self._state
        if event.kind == "skip":
            self.summary.skipped += 1
            self.reporter.document_skipped(event.doc)
        elif event.kind == "start":
            self._state = _DocState(event.doc, earlier=event.unfinished.done if event.unfinished else ())
            self.reporter.document_started(event.doc)
        elif event.kind == "page" and not state.error:
            return event
        elif event.kind == "page_error" and not state.error:
            self._page_failed(state, event.page_number, event.error)
        elif event.kind == "error":
            self._fail(state, event.error)
        elif event.kind == "end":
            state.listed = True
            self._close_if_complete(state)
        return None

    def _handle_page(self, event: _Event) -> tuple[_DocState, Page, Any]:
        self._state.outstanding += 1
        return self._state, event.page, event.prepared

    def _stream_steps(self, events: Iterator[_Event]) -> Iterator[None]:
        """Continuous batching: pages flow to the model as slots free up."""
        in_flight: dict[int, tuple[_DocState, Page, Any]] = {}

        def pages_for_model() -> Iterator[tuple[int, Any]]:
            for key, event in enumerate(events):
                if self._handle(event) is not None:
                    in_flight[key] = self._handle_page(event)
                    yield key, event.prepared

        feed = pages_for_model()
        while True:
            try:
                for key, raw in self.stream(feed, self.request.task):
                    state, page, _ = in_flight.pop(key)
                    self._page_done(state, page, raw)
                    self._close_if_complete(state)
                    yield
                return
            except GenerationFailed:
                # The stream is lost with the pages in it; read each of them alone (so one
                # bad page costs only itself), then go on streaming the rest.
                for key in list(in_flight):
                    self._batch = [in_flight.pop(key)]
                    self._flush()
                yield

    def _events(self, documents: list[Document]) -> Iterator[_Event]:
        """Runs in the read-ahead thread: decode, render and prepare pages in order."""
        for doc in documents:
            if self.sink.is_done(doc):
                yield _Event("skip", doc)
                continue
            unfinished = self.sink.unfinished(doc, self.request.task, self.request.model_name)
            options = self.request.page_options
            if unfinished is not None:
                # Resuming a document an earlier run wrote with pages missing: read only those.
                options = replace(options, pages=unfinished.retry)
            yield _Event("start", doc, unfinished=unfinished)
            try:
                for page in iter_page_outcomes(doc, options):
                    if isinstance(page, PageFailure):
                        yield _Event("page_error", doc, error=page.error, page_number=page.number)
                        continue
                    try:
                        prepared = self.prepare(page.image)
                    except (ValueError, RuntimeError) as exc:
                        message = f"{doc.source}: page {page.number}: cannot prepare image ({exc})"
                        yield _Event("page_error", doc, error=InputError(message), page_number=page.number)
                        continue
                    yield _Event("page", doc, page, prepared)
            except InputError as error:
                yield _Event("error", doc, error=error)
            yield _Event("end", doc)

    def _flush(self) -> None:
        batch = [item for item in self._batch if not item[0].error]
        self._batch = []
        if not batch:
            return
        try:
            outputs = self.generate([prepared for _, _, prepared in batch], self.request.task)
        except GenerationFailed as error:
            if len(batch) > 1:
                # Retry alone so one bad page (or an out-of-memory batch) costs only itself.
                for item in batch:
                    self._batch = [item]
                    self._flush()
                return
            state, page, _ = batch[0]
            state.outstanding -= 1
            message = f"{state.doc.source}: page {page.number}: {error.message}"
            self._page_failed(state, page.number, GenerationFailed(message))
            self._close_if_complete(state)
            return
        for (state, page, _), raw in zip(batch, outputs):
            self._page_done(state, page, raw)
        for state in dict.fromkeys(state for state, _, _ in batch):
            self._close_if_complete(state)

    def _page_done(self, state: _DocState, page: Page, raw: RawOutput) -> None:
        result = self._page_result(page, raw)
        state.pages[page.number] = result
        state.outstanding -= 1
        self.summary.pages += 1
        self.summary.truncated_pages += raw.truncated
        self.summary.looping_pages += raw.looping
        self.reporter.page_done(state.doc, page.number, raw)
        if self.page_observer:
            self._writer.submit(lambda doc=state.doc, page=page, result=result: self.page_observer(doc, page, result))

    def _page_result(self, page: Page, raw: RawOutput) -> PageResult:
        width, height = page.image.size
        common = dict(page=page.number, width=width, height=height, dpi=page.dpi, truncated=raw.truncated,
                      looping=raw.looping)  # fmt: skip
        if self.request.task == "md":
            return PageResult(**common, markdown=clean_markdown(raw.text), confidence=raw.confidence)
        resized = (raw.resized_width, raw.resized_height)
        return PageResult(**common, lines=parse_ocr(raw.text, resized, (width, height), raw.segment_confidences))

    def _page_failed(self, state: _DocState, number: int, error: InputError) -> None:
        """One page is lost; the document's other pages go on and are written without it."""
        state.failed_pages[number] = error
        self.summary.failed_pages += 1
        self.reporter.page_failed(state.doc, number, error)

    def _fail(self, state: _DocState, error: InputError) -> None:
        if state.error is None:
            state.error = error
            self.sink.failed(state.doc, error)
            self.summary.failed += 1
            self.reporter.document_failed(state.doc.source, error)

    def _close_if_complete(self, state: _DocState) -> None:
        if state.closed or state.error or not state.listed or state.outstanding:
            return
        state.closed = True
        pages = {page.page: page for page in state.earlier}
        pages.update(state.pages)
        if state.failed_pages and not pages:
            # Not one page read: nothing worth a file; the page errors were reported.
            self.summary.failed += 1
            self.sink.failed(state.doc, next(iter(state.failed_pages.values())))
            self.reporter.document_incomplete(state.doc, None, None)
            return
        pages.update((number, PageResult.failed(number, error.message)) for number, error in state.failed_pages.items())
        result = DocumentResult(
            source=state.doc.source,
            model=self.request.model_name,
            task=self.request.task,
            pages=tuple(pages[number] for number in sorted(pages)),
        )
        self._writer.submit(lambda: self._write(state.doc, result))

    def _write(self, doc: Document, result: DocumentResult) -> None:
        """Runs on the writer thread."""
        written = self.sink.write(doc, result)
        if result.failed_pages:
            self.summary.failed += 1
            self.reporter.document_incomplete(doc, result, written)
        else:
            self.summary.done += 1
            self.reporter.document_done(doc, result, written)
