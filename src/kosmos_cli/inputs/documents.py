"""Inputs: command-line paths -> documents -> pages (RGB images), lazily.

A document is one input file (or stdin). Its pages are produced one at a time so
that a 500-page PDF is never held in memory at once.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import (
    CorruptInput,
    ImageTooLarge,
    InputError,
    InputNotFound,
    PageOutOfRange,
    PasswordRequired,
    PdfRendererMissing,
    UnreadableInput,
    UnsupportedInput,
    UsageError,
)

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


def _read_head(path: Path | None) -> bytes:
    try:
        with open(path, "rb") as handle:  # type: ignore[arg-type]
            return handle.read(8)
    except OSError:
        return b""


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
        yield from _iter_pdf_pages(doc, options)
    else:
        yield from _iter_image_pages(doc, options)


def selected_pages(doc: Document, options: PageOptions) -> list[int] | None:
    """The page numbers `iter_pages` would read from a PDF file on disk, or None when
    that cannot be told cheaply and safely (not a PDF file, unreadable, pages out of
    range): the caller then reads the document as one piece and its errors come then."""
    if doc.path is None or not doc.is_pdf:
        return None
    try:
        info = _pdf_info(doc, doc.path, options.password)
        return _selected(doc, int(info["Pages"]), options.pages)
    except (InputError, KeyError, ValueError):
        return None


def _selected(doc: Document, total: int, selection: frozenset[int] | None) -> list[int]:
    if selection is None:
        return list(range(1, total + 1))
    missing = sorted(p for p in selection if p > total)
    if missing:
        raise PageOutOfRange(
            f"{doc.source}: --pages asks for page {missing[0]} but the document has {total} page{'s' * (total != 1)}"
        )
    return sorted(selection)


# --- images -----------------------------------------------------------------


@contextmanager
def _open_image(doc: Document, max_pixels: int) -> Iterator[Image.Image]:
    from PIL import Image, UnidentifiedImageError

    # Our own limit replaces Pillow's global decompression-bomb check, with a clear message.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(io.BytesIO(doc.data) if doc.data is not None else doc.path)
    except UnidentifiedImageError:
        raise _not_an_image(doc) from None
    except PermissionError:
        raise UnreadableInput(f"{doc.source}: permission denied") from None
    except OSError as exc:
        raise UnreadableInput(f"{doc.source}: cannot read file ({exc.strerror or exc})") from None
    try:
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise ImageTooLarge(
                f"{doc.source}: image is {image.width}x{image.height} = {pixels:,} pixels, above the limit of "
                f"{max_pixels:,}; raise it with --max-pixels if the file is trusted"
            )
        yield image
    finally:
        image.close()


def _not_an_image(doc: Document) -> InputError:
    suffix = doc.path.suffix.lower() if doc.path is not None else ""
    if doc.path is not None and suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES))
        return UnsupportedInput(f"{doc.source}: unsupported file type '{suffix or 'none'}' (supported: {kinds})")
    if doc.data is not None and not doc.data:
        return CorruptInput(f"{doc.source}: standard input is empty")
    if doc.path is not None and doc.path.stat().st_size == 0:
        return CorruptInput(f"{doc.source}: file is empty")
    return CorruptInput(f"{doc.source}: not a readable image or PDF (corrupt, or not the type its name says)")


def _frame_count(image: Image.Image) -> int:
    # Only TIFF frames are pages; other animated formats (GIF, WebP) use their first frame.
    return getattr(image, "n_frames", 1) if image.format == "TIFF" else 1


def _iter_image_pages(doc: Document, options: PageOptions) -> Iterator[Page | PageFailure]:
    from PIL import ImageOps

    with _open_image(doc, options.max_pixels) as image:
        for number in _selected(doc, _frame_count(image), options.pages):
            try:
                image.seek(number - 1)
                frame = ImageOps.exif_transpose(image)
                yield Page(number, to_rgb(frame), None)
            except (OSError, ValueError, SyntaxError) as exc:
                message = f"{doc.source}: page {number}: cannot decode image ({exc})"
                yield PageFailure(number, CorruptInput(message))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0.0)
        # 16-bit scans keep their full range; float images in [0, 1] are stretched to 8 bits.
        scale = 1.0 if top <= 255 else 255.0 / 65535 if top <= 65535 else 255.0 / top
        if image.mode == "F" and top <= 1.0:
            scale = 255.0
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


# --- PDFs -------------------------------------------------------------------


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


def _pdf_info(doc: Document, pdf_path: Path, password: str | None, pages: list[int] | None = None) -> dict:
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


def _iter_pdf_pages(doc: Document, options: PageOptions) -> Iterator[Page | PageFailure]:
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError, PDFSyntaxError

    with _pdf_file(doc) as pdf_path:
        info = _pdf_info(doc, pdf_path, options.password)
        numbers = _selected(doc, int(info["Pages"]), options.pages)
        # Page sizes may differ: every page is checked against --max-pixels before it is
        # rendered (one pdfinfo call lists them all), so one huge page costs only itself.
        pixels = _pdf_page_pixels(_pdf_info(doc, pdf_path, options.password, numbers), options.dpi) if numbers else {}
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


# --- page sizes without decoding pixels ------------------------------------


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


def page_geometry(doc: Document, options: PageOptions) -> tuple[int, list[PageGeometry]]:
    """(total page count, the selected pages' geometry) of a document, cheaply: image
    headers or `pdfinfo`, no decoding or rendering. Raises the same InputErrors as `iter_pages`."""
    if doc.is_pdf:
        return _pdf_geometry(doc, options)
    with _open_image(doc, options.max_pixels) as image:
        total = _frame_count(image)
        pages = []
        for number in _selected(doc, total, options.pages):
            try:
                image.seek(number - 1)
                orientation = image.getexif().get(0x0112, 1)
            except (OSError, ValueError, SyntaxError) as exc:
                raise CorruptInput(f"{doc.source}: page {number}: cannot decode image ({exc})") from None
            width, height = image.size
            if orientation in (5, 6, 7, 8):  # EXIF rotations by 90 or 270 degrees swap the sides
                width, height = height, width
            dpi = image.info.get("dpi")
            pages.append(PageGeometry(number, width, height, float(dpi[0]) if dpi and dpi[0] else None))
        return total, pages


def _pdf_geometry(doc: Document, options: PageOptions) -> tuple[int, list[PageGeometry]]:
    from pdf2image import pdfinfo_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError, PDFSyntaxError

    with _pdf_file(doc) as pdf_path:
        total = int(_pdf_info(doc, pdf_path, options.password)["Pages"])
        selected = _selected(doc, total, options.pages)
        try:
            info = pdfinfo_from_path(str(pdf_path), userpw=options.password, first_page=1, last_page=total)
        except PDFInfoNotInstalledError:
            raise _renderer_missing(doc) from None
        except (PDFPageCountError, PDFSyntaxError) as exc:
            raise _pdf_error(doc, str(exc)) from None
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
