"""Progress and messages on stderr: a rich bar on a terminal, plain lines otherwise.

All messages go to stderr so stdout carries data only.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .errors import InputError
from .inputs import Document
from .pipeline import RunSummary
from .results import DocumentResult

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
    return text


class PlainReporter:
    """One line per event; used when stderr is not a terminal. `quiet` keeps errors only."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, max_new_tokens: int = 0) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.max_new_tokens = max_new_tokens
        self.total = 0
        self.position = 0
        self.document_started_at = time.monotonic()

    def _say(self, text: str) -> None:
        print(f"{PREFIX}: {text}", file=self.stream, flush=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self._say(text)

    def error(self, text: str) -> None:
        self._say(f"error: {text}")

    def started(self, total_documents: int) -> None:
        self.total = total_documents
        self.document_started_at = time.monotonic()

    def page_done(self, doc: Document, page: int, truncated: bool) -> None:
        if truncated:
            self.info(
                f"warning: {doc.source}: page {page} reached --max-new-tokens ({self.max_new_tokens}); "
                "its output is truncated"
            )

    def _advance(self) -> str:
        self.position += 1
        return f"[{self.position}/{self.total}]"

    def document_done(self, doc: Document, result: DocumentResult, written: object) -> None:
        elapsed = time.monotonic() - self.document_started_at
        self.document_started_at = time.monotonic()
        target = f" -> {written}" if written else ""
        pages = len(result.pages)
        self.info(f"{self._advance()} {doc.source}: {pages} page{'s' * (pages != 1)}{target} ({elapsed:.1f} s)")

    def document_failed(self, source: str, error: InputError) -> None:
        self.document_started_at = time.monotonic()
        self.error(error.message)

    def document_skipped(self, doc: Document) -> None:
        self.info(f"{self._advance()} {doc.source}: skipped, output exists (--overwrite to redo)")

    def finished(self, summary: RunSummary) -> None:
        self.info(format_summary(summary))
