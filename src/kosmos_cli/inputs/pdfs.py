"""Inputs: PDF files -> pages, rendered by poppler's `pdftoppm` (through pdf2image).

poppler reads files, so a PDF from standard input goes through a temporary file.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CorruptInput, ImageTooLarge, InputError, PasswordRequired, PdfRendererMissing, UnreadableInput
from .images import to_rgb
from .pages import Document, Page, PageFailure, PageGeometry, PageOptions, select_page_numbers


@contextmanager
def _pdf_file(doc: Document) -> Iterator[Path]:
    """poppler reads files, so stdin PDFs go through a temporary file."""
    if doc.path is not None:
        yield doc.path
        return
    with tempfile.NamedTemporaryFile(suffix=".pdf") as handle:
        handle.write(doc.data or b"")
        handle.flush()
        yield Path(handle.name)


def pdf_info(doc: Document, pdf_path: Path, password: str | None, pages: list[int] | None = None) -> dict:
    """`pdfinfo`'s fields for a PDF file (with each page's size and rotation from `pages[0]` to `pages[-1]`)."""
    from pdf2image import pdfinfo_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError, PDFSyntaxError

    first, last = (pages[0], pages[-1]) if pages else (None, None)
    try:
        return pdfinfo_from_path(str(pdf_path), userpw=password, first_page=first, last_page=last)
    except PDFInfoNotInstalledError:
        raise _renderer_missing(doc) from None
    except (PDFPageCountError, PDFSyntaxError) as exc:
        raise _pdf_error(doc, str(exc)) from None


def _pdf_error(doc: Document, detail: str) -> InputError:
    lowered = detail.lower()
    if "password" in lowered or "encrypt" in lowered:
        return PasswordRequired(f"{doc.source}: PDF is encrypted; give its password with --password")
    if "permission denied" in lowered:
        return UnreadableInput(f"{doc.source}: permission denied")
    reason = next((line.strip() for line in detail.splitlines() if line.strip()), "unknown error")
    return CorruptInput(f"{doc.source}: not a readable PDF ({reason})")


def _renderer_missing(doc: Document) -> InputError:
    return PdfRendererMissing(
        f"{doc.source}: cannot read PDFs: poppler's pdftoppm/pdfinfo not found; "
        "install poppler-utils (e.g. 'apt-get install poppler-utils' or 'make install')"
    )


def _pdf_page_pixels(info: dict, dpi: int) -> dict[int, int]:
    """Each page's size in pixels at `dpi`, from `pdfinfo -f 1 -l N` ("Page    N size")."""
    sizes: dict[int, int] = {}
    for key, value in info.items():
        key_match = re.fullmatch(r"Page\s+(\d+) size", str(key))
        size_match = re.match(r"\s*([\d.]+)\s*x\s*([\d.]+)\s*pts", str(value))
        if key_match and size_match:
            width_pt, height_pt = float(size_match.group(1)), float(size_match.group(2))
            sizes[int(key_match.group(1))] = round(width_pt / 72 * dpi) * round(height_pt / 72 * dpi)
    return sizes


def iter_pdf_pages(doc: Document, options: PageOptions) -> Iterator[Page | PageFailure]:
    """The selected pages of a PDF, rendered one at a time; see `documents.iter_page_outcomes`."""
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError, PDFSyntaxError

    with _pdf_file(doc) as pdf_path:
        info = pdf_info(doc, pdf_path, options.password)
        numbers = select_page_numbers(doc, int(info["Pages"]), options.pages)
        # Page sizes may differ: every page is checked against --max-pixels before it is
        # rendered (one pdfinfo call lists them all), so one huge page costs only itself.
        pixels = _pdf_page_pixels(pdf_info(doc, pdf_path, options.password, numbers), options.dpi) if numbers else {}
        for number in numbers:
            if pixels.get(number, 0) > options.max_pixels:
                yield PageFailure(number, ImageTooLarge(
                    f"{doc.source}: page {number}: at {options.dpi} dpi it is {pixels[number]:,} pixels, above the "
                    f"limit of {options.max_pixels:,}; lower --dpi or raise --max-pixels"
                ))  # fmt: skip
                continue
            try:
                rendered = convert_from_path(
                    str(pdf_path), dpi=options.dpi, first_page=number, last_page=number, userpw=options.password
                )
            except PDFInfoNotInstalledError:
                raise _renderer_missing(doc) from None
            except (PDFPageCountError, PDFSyntaxError) as exc:
                yield PageFailure(number, _pdf_error(doc, str(exc)))
                continue
            if not rendered:
                yield PageFailure(number, CorruptInput(f"{doc.source}: page {number}: pdftoppm rendered nothing"))
                continue
            yield Page(number, to_rgb(rendered[0]), options.dpi)


def pdf_geometry(doc: Document, options: PageOptions) -> tuple[int, list[PageGeometry]]:
    """(total page count, the selected pages' geometry) of a PDF, from `pdfinfo` (nothing rendered)."""
    with _pdf_file(doc) as pdf_path:
        total = int(pdf_info(doc, pdf_path, options.password)["Pages"])
        selected = select_page_numbers(doc, total, options.pages)
        info = pdf_info(doc, pdf_path, options.password, [1, total])  # every page's size and rotation
    sizes = {}
    for key, value in info.items():
        match = re.fullmatch(r"Page\s+(\d+)\s+(size|rot)", key)
        if match:
            sizes.setdefault(int(match.group(1)), {})[match.group(2)] = str(value)
    pages = []
    for number in selected:
        entry = sizes.get(number, {"size": str(info.get("Page size", "")), "rot": str(info.get("Page rot", "0"))})
        match = re.match(r"\s*([\d.]+)\s*x\s*([\d.]+)\s*pts", entry.get("size", ""))
        if not match:
            raise CorruptInput(f"{doc.source}: page {number}: pdfinfo gives no page size")
        # pdftoppm rounds a page's size in pixels up (A4 at 300 dpi: 2480.33 -> 2481); the
        # small allowance keeps floating-point noise on whole sizes from adding a pixel.
        width = math.ceil(float(match.group(1)) / 72 * options.dpi - 1e-6)
        height = math.ceil(float(match.group(2)) / 72 * options.dpi - 1e-6)
        if entry.get("rot", "0").strip() in ("90", "270"):
            width, height = height, width
        pages.append(PageGeometry(number, width, height, float(options.dpi)))
    return total, pages
