"""Inputs: what a document and its pages are, and which pages a run reads.

`documents.py` finds documents and hands out their pages; `images.py` and `pdfs.py`
read the two kinds of file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import InputError, PageOutOfRange

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | PDF_SUFFIXES
DEFAULT_MAX_PIXELS = 180_000_000
STDIN = "-"


@dataclass(frozen=True)
class Document:
    """One input: a file, or stdin's bytes.

    `output_name` is the path (relative, without the output suffix) of this input's
    result under `-o DIR`, mirroring sub-folders of a directory argument.
    """

    source: str
    path: Path | None
    output_name: PurePosixPath
    data: bytes | None = field(default=None, repr=False)

    @property
    def is_pdf(self) -> bool:
        if self.path is not None and self.path.suffix.lower() in PDF_SUFFIXES:
            return True
        head = self.data[:5] if self.data is not None else _read_head(self.path)
        return head.startswith(b"%PDF")


def _read_head(path: Path | None) -> bytes:
    try:
        with open(path, "rb") as handle:  # type: ignore[arg-type]
            return handle.read(8)
    except OSError:
        return b""


@dataclass(frozen=True)
class Page:
    """One page ready for the model: RGB pixels plus where it came from."""

    number: int
    image: Image.Image
    dpi: int | None


@dataclass(frozen=True)
class PageFailure:
    """A page of a document that cannot be read (the document's other pages can)."""

    number: int
    error: InputError


@dataclass(frozen=True)
class PageOptions:
    """How documents are turned into pages."""

    dpi: int = 200
    pages: frozenset[int] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    password: str | None = None


@dataclass(frozen=True)
class PageGeometry:
    """A page's number, its size in pixels as it will be read (after EXIF rotation, or
    rendered at `dpi`), and its resolution (PDF: the rendering dpi; image: what the file
    states, or None). For PDFs the size is computed from the page box as pdftoppm does
    (rounded up); a different renderer may differ from it by a pixel."""

    number: int
    width: int
    height: int
    dpi: float | None


def select_page_numbers(doc: Document, total: int, selection: frozenset[int] | None) -> list[int]:
    """The page numbers `selection` (None: all) picks from a document of `total` pages, in order."""
    if selection is None:
        return list(range(1, total + 1))
    missing = sorted(p for p in selection if p > total)
    if missing:
        raise PageOutOfRange(
            f"{doc.source}: --pages asks for page {missing[0]} but the document has {total} page{'s' * (total != 1)}"
        )
    return sorted(selection)
