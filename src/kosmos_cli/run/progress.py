"""Progress and messages on stderr: a rich bar on a terminal, plain lines otherwise.

All messages go to stderr so stdout carries data only.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..errors import InputError
from ..inputs.documents import Document
from .pipeline import RunSummary
from ..results import DocumentResult
from ..model.records import RawOutput

PREFIX = "kosmos25"


def format_summary(summary: RunSummary) -> str:
    """One line: done / skipped / failed, pages, time and pages per minute."""
    seconds = summary.seconds
    rate = summary.pages / seconds * 60 if seconds > 0 else 0.0
    text = (
        f"{summary.done} done, {summary.skipped} skipped, {summary.failed} failed; "
        f"{summary.pages} page{'s' * (summary.pages != 1)} in {seconds:.1f} s ({rate:.1f} pages/min)"
    )
    if summary.truncated_pages:
        text += f"; {summary.truncated_pages} truncated (raise --max-new-tokens)"
    if summary.looping_pages:
        text += f"; {summary.looping_pages} stopped repeating"
    if summary.failed_pages:
        text += f"; {summary.failed_pages} page{'s' * (summary.failed_pages != 1)} failed (run again to retry)"
    return text


class PlainReporter:
    """One line per event; used when stderr is not a terminal. `quiet` keeps errors only."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, max_new_tokens: int = 0) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.max_new_tokens = max_new_tokens
        self.total = 0
        self.position = 0
        # By source: on Ray several documents are read at once.
        self.document_started_at: dict[str, float] = {}

    def _say(self, text: str) -> None:
        print(f"{PREFIX}: {text}", file=self.stream, flush=True)

    def info(self, text: str) -> None:
        """A progress message or warning; silenced by --quiet."""
        if not self.quiet:
            self._say(text)

    def error(self, text: str) -> None:
        """An error; always printed."""
        self._say(f"error: {text}")

    def started(self, total_inputs: int) -> None:
        self.total = total_inputs
        self.position = 0  # a second run through the same reporter (eval --baseline) counts afresh

    def document_started(self, doc: Document) -> None:
        self.document_started_at[doc.source] = time.monotonic()

    def page_done(self, doc: Document, page: int, raw: RawOutput) -> None:
        if raw.truncated:
            self.info(
                f"warning: {doc.source}: page {page} reached --max-new-tokens ({self.max_new_tokens}); "
                "its output is truncated"
            )
        if raw.looping:
            self.info(f"warning: {doc.source}: page {page}: the model started repeating itself; stopped, repeats cut")

    def _advance(self) -> str:
        self.position += 1
        return f"[{self.position}/{self.total}]"

    def document_done(self, doc: Document, result: DocumentResult, written: object) -> None:
        elapsed = time.monotonic() - self.document_started_at.pop(doc.source, time.monotonic())
        target = f" -> {written}" if written else ""
        pages = len(result.pages)
        self.info(f"{self._advance()} {doc.source}: {pages} page{'s' * (pages != 1)}{target} ({elapsed:.1f} s)")

    def document_failed(self, source: str, error: InputError) -> None:
        self._advance()
        self.error(error.message)

    def page_failed(self, doc: Document, page: int, error: InputError) -> None:
        """One page could not be read; its document goes on without it."""
        self.error(error.message)

    def document_incomplete(self, doc: Document, result: DocumentResult | None, written: object) -> None:
        """A document finished with pages missing: written without them, or (no page
        read at all) not written; its page errors were already reported."""
        self._advance()
        if result is None:
            return
        failed = [page.page for page in result.failed_pages]
        read = len(result.pages) - len(failed)
        numbers = ", ".join(map(str, failed))
        self.error(
            f"{doc.source}: {read} of {len(result.pages)} pages written{f' to {written}' if written else ''}; "
            f"page{'s' * (len(failed) != 1)} {numbers} failed (run the same command again to retry)"
        )

    def document_skipped(self, doc: Document) -> None:
        self.info(f"{self._advance()} {doc.source}: skipped, output exists (--overwrite to redo)")

    def finished(self, summary: RunSummary) -> None:
        self.close()
        self.info(format_summary(summary))

    def close(self) -> None:
        """Release the terminal (nothing to do for plain lines)."""


class RichReporter(PlainReporter):
    """A live bar on a terminal: files and pages done, pages per minute, ETA, current file.

    Messages are printed above the bar, through the same console.
    """

    def __init__(self, max_new_tokens: int = 0) -> None:
        from rich.console import Console

        super().__init__(quiet=False, max_new_tokens=max_new_tokens)
        self.console = Console(stderr=True, highlight=False)
        self.progress = None
        self.pages = 0
        self.run_started_at = time.monotonic()

    def _say(self, text: str) -> None:
        self.console.print(f"{PREFIX}: {text}", markup=False)

    def started(self, total_inputs: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        super().started(total_inputs)
        self.run_started_at = time.monotonic()
        self.progress = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[pages]} pages · {task.fields[rate]:.1f} pages/min · ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.console,
            transient=True,
        )
        self.task_id = self.progress.add_task("run", total=total_inputs, pages=0, rate=0.0, current="")
        self.progress.start()

    def _update(self, advance: int = 0, **fields) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, advance=advance, **fields)

    def document_started(self, doc: Document) -> None:
        super().document_started(doc)
        self._update(current=doc.source)

    def page_done(self, doc: Document, page: int, raw: RawOutput) -> None:
        super().page_done(doc, page, raw)
        self.pages += 1
        minutes = max(time.monotonic() - self.run_started_at, 1e-6) / 60
        self._update(pages=self.pages, rate=self.pages / minutes)

    def document_done(self, doc: Document, result: DocumentResult, written: object) -> None:
        self._update(advance=1)  # the bar says it; no line per file on a terminal

    def document_failed(self, source: str, error: InputError) -> None:
        super().document_failed(source, error)
        self._update(advance=1)

    def document_incomplete(self, doc: Document, result: DocumentResult | None, written: object) -> None:
        super().document_incomplete(doc, result, written)
        self._update(advance=1)

    def document_skipped(self, doc: Document) -> None:
        self._update(advance=1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_reporter(quiet: bool, max_new_tokens: int) -> PlainReporter:
    """A bar when stderr is a terminal (and not --quiet), plain lines otherwise."""
    if not quiet and sys.stderr.isatty():
        return RichReporter(max_new_tokens=max_new_tokens)
    return PlainReporter(quiet=quiet, max_new_tokens=max_new_tokens)
