"""Inputs: command-line paths -> documents -> pages (RGB images), lazily.

A document is one input file (or stdin). Its pages are produced one at a time so
that a 500-page PDF is never held in memory at once. What documents and pages are:
`pages.py`; reading images: `images.py`; rendering PDFs: `pdfs.py`.
"""

from __future__ import annotations

import io
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from ..errors import InputError, InputNotFound, UsageError
from .images import image_geometry, iter_image_pages, to_rgb
from .pages import (
    DEFAULT_MAX_PIXELS,
    STDIN,
    SUPPORTED_SUFFIXES,
    Document,
    Page,
    PageFailure,
    PageGeometry,
    PageOptions,
    select_page_numbers,
)
from .pdfs import iter_pdf_pages, pdf_geometry, pdf_info

# Callers take these from here, where documents come from.
__all__ = [
    "DEFAULT_MAX_PIXELS", "Document", "Page", "PageFailure", "PageGeometry", "PageOptions", "collect_documents",
    "iter_page_outcomes", "iter_pages", "page_geometry", "parse_page_selection", "selected_pages", "to_rgb",
]  # fmt: skip


def parse_page_selection(spec: str | None) -> frozenset[int] | None:
    """Parse `--pages` like `1-3,7` (1-based, inclusive) into a set of page numbers."""
    if spec is None or not spec.strip():
        return None
    pages: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UsageError(f"--pages: cannot read {part.strip()!r}; use page numbers and ranges like 1-3,7")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if first < 1 or last < first:
            raise UsageError(f"--pages: {part.strip()!r} is not a valid range (pages start at 1)")
        pages.update(range(first, last + 1))
    return frozenset(pages)


def collect_documents(
    paths: Iterable[str], stdin: io.BufferedIOBase | None = None
) -> tuple[list[Document], list[tuple[str, InputError]]]:
    """Expand command-line paths into documents, in order.

    Directories are walked recursively in sorted order, taking supported files only.
    `-` reads one document from `stdin`. Missing paths come back as errors so the
    rest of the run can go on. Raises UsageError if two inputs would write the same
    output file.
    """
    documents: list[Document] = []
    errors: list[tuple[str, InputError]] = []
    seen: set[Path] = set()
    for arg in paths:
        if arg == STDIN:
            if stdin is None:
                raise UsageError("'-' given but there is no standard input to read")
            documents.append(Document(source=STDIN, path=None, output_name=PurePosixPath("stdin"), data=stdin.read()))
            continue
        path = Path(arg)
        if path.is_dir():
            for file, relative in _walk(path):
                if file.resolve() not in seen:
                    seen.add(file.resolve())
                    documents.append(Document(str(file), file, relative))
        elif path.exists():
            if path.resolve() not in seen:
                seen.add(path.resolve())
                documents.append(Document(arg, path, PurePosixPath(path.name)))
        else:
            errors.append((arg, InputNotFound(f"{arg}: no such file or directory")))
    return _name_outputs(documents), errors


def _walk(root: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            file = Path(folder, name)
            if file.suffix.lower() in SUPPORTED_SUFFIXES and not name.startswith("."):
                yield file, PurePosixPath(file.relative_to(root).as_posix())


def _name_outputs(documents: list[Document]) -> list[Document]:
    """Drop the input suffix from output names unless that makes two names collide."""
    by_stem: dict[PurePosixPath, list[int]] = defaultdict(list)
    for index, doc in enumerate(documents):
        by_stem[doc.output_name.with_suffix("")].append(index)
    named = list(documents)
    for stem, indices in by_stem.items():
        if len(indices) == 1:
            doc = documents[indices[0]]
            named[indices[0]] = Document(doc.source, doc.path, stem, doc.data)
    final: dict[PurePosixPath, str] = {}
    for doc in named:
        if doc.output_name in final:
            raise UsageError(
                f"{final[doc.output_name]} and {doc.source} would write the same output file; "
                "process them in separate runs or pass their common folder"
            )
        final[doc.output_name] = doc.source
    return named


def iter_pages(doc: Document, options: PageOptions) -> Iterator[Page]:
    """Yield the selected pages of a document one at a time, as RGB images.

    Page numbers are the document's own, 1-based. Raises an InputError subclass
    naming the file (and page) for anything that cannot be read.
    """
    for outcome in iter_page_outcomes(doc, options):
        if isinstance(outcome, PageFailure):
            raise outcome.error
        yield outcome


def iter_page_outcomes(doc: Document, options: PageOptions) -> Iterator[Page | PageFailure]:
    """Like `iter_pages`, but a page that cannot be read is yielded as a PageFailure and
    the document's other pages still come; only a document that cannot be opened at
    all raises (an InputError subclass naming the file)."""
    if doc.is_pdf:
        yield from iter_pdf_pages(doc, options)
    else:
        yield from iter_image_pages(doc, options)


def selected_pages(doc: Document, options: PageOptions) -> list[int] | None:
    """The page numbers `iter_pages` would read from a PDF file on disk, or None when
    that cannot be told cheaply and safely (not a PDF file, unreadable, pages out of
    range): the caller then reads the document as one piece and its errors come then."""
    if doc.path is None or not doc.is_pdf:
        return None
    try:
        info = pdf_info(doc, doc.path, options.password)
        return select_page_numbers(doc, int(info["Pages"]), options.pages)
    except (InputError, KeyError, ValueError):
        return None


def page_geometry(doc: Document, options: PageOptions) -> tuple[int, list[PageGeometry]]:
    """(total page count, the selected pages' geometry) of a document, cheaply: image
    headers or `pdfinfo`, no decoding or rendering. Raises the same InputErrors as `iter_pages`."""
    if doc.is_pdf:
        return pdf_geometry(doc, options)
    return image_geometry(doc, options)
