"""Result records: small frozen dataclasses, each with `to_dict()` for the JSON schema."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class BBox:
    """A box in original page pixels: left, top, right, bottom (right/bottom exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def to_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Line:
    """One text line; `bbox` is None when the model's box was malformed or degenerate.

    `confidence` (0..1) is the geometric mean of the probabilities of the tokens the
    model chose for this line, box tokens included; None when it was not recorded.
    """

    text: str
    bbox: BBox | None
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "bbox": self.bbox.to_list() if self.bbox else None}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 4)
        return out


@dataclass(frozen=True)
class PageResult:
    """What the model read on one page: `lines` for OCR, `markdown` for md.

    `truncated`: generation reached --max-new-tokens. `looping`: generation started
    repeating itself and was stopped; the repeats were cut, one copy kept.
    `confidence`: geometric mean of the chosen tokens' probabilities over the page
    (set for md pages; OCR pages carry it per line).
    `error`: why the page could not be read (then it has no lines or markdown, and
    its size may be unknown: 0 x 0); None for a page that was read.
    """

    page: int
    width: int
    height: int
    dpi: int | None
    truncated: bool
    looping: bool = False
    lines: tuple[Line, ...] = ()
    markdown: str | None = None
    confidence: float | None = None
    error: str | None = None

    @classmethod
    def failed(cls, page: int, error: str) -> PageResult:
        """A page that could not be read, recorded in place of its result."""
        return cls(page=page, width=0, height=0, dpi=None, truncated=False, error=error)

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"page": self.page, "error": self.error}
        out: dict[str, Any] = {
            "page": self.page,
            "width": self.width,
            "height": self.height,
            "dpi": self.dpi,
            "truncated": self.truncated,
            "looping": self.looping,
        }
        if self.markdown is not None:
            out["markdown"] = self.markdown
            if self.confidence is not None:
                out["confidence"] = round(self.confidence, 4)
        else:
            out["lines"] = [line.to_dict() for line in self.lines]
        return out


@dataclass(frozen=True)
class DocumentResult:
    """All pages read from one input file."""

    source: str
    model: str
    task: str
    pages: tuple[PageResult, ...]

    @property
    def failed_pages(self) -> tuple[PageResult, ...]:
        """The pages that could not be read (each with its `error`)."""
        return tuple(page for page in self.pages if page.error is not None)

    def read_pages_only(self) -> DocumentResult:
        """This result without its failed pages, for formats that cannot record a failure."""
        if not self.failed_pages:
            return self
        return replace(self, pages=tuple(page for page in self.pages if page.error is None))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.model,
            "task": self.task,
            "pages": [page.to_dict() for page in self.pages],
        }


@dataclass(frozen=True)
class Unfinished:
    """What an earlier run left of a document with failed pages: the pages it read
    (`done`) and the page numbers to read again (`retry`)."""

    done: tuple[PageResult, ...]
    retry: frozenset[int]
