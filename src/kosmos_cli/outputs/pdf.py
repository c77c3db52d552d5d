"""Searchable PDF output: the input's pages with an invisible OCR text layer.

PDF inputs are kept as they are (content, fonts, images, annotations, page boxes,
/Rotate, metadata) and get one more content stream per read page. Image inputs
become one page per image (every frame of a multi-page TIFF) under the text layer.
The text is drawn in render mode 3 (invisible) with a glyph-less font, see pdf_font.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pikepdf
from pikepdf import Dictionary, Name

from ..errors import CorruptInput, OutputFailed, PasswordRequired, UnreadableInput
from ..inputs.documents import Document
from ..results import DocumentResult, PageResult
from .pdf_font import CharCodes, make_font
from .pdf_images import build_image_pdf
from .pdf_text import FONT_KEY, first_line, flate_stream, text_layer

# Matrices [a b c d e f] taking a point (u, v) of the displayed page, in points from
# its top-left corner, to the user space of a page whose rendered box is (x0, y0, x1, y1)
# and whose /Rotate is the key (clockwise, as viewers apply it).
_DISPLAY_TO_USER = {
    0: lambda x0, y0, x1, y1: (1, 0, 0, -1, x0, y1),
    90: lambda x0, y0, x1, y1: (0, 1, 1, 0, x0, y0),
    180: lambda x0, y0, x1, y1: (-1, 0, 0, 1, x1, y0),
    270: lambda x0, y0, x1, y1: (0, -1, -1, 0, x1, y1),
}


def render_pdf(doc: Document, result: DocumentResult, image_dpi: int = 300, password: str | None = None) -> bytes:
    """Return a searchable PDF of `doc` with the lines of `result` as invisible text.

    PDF inputs keep every page and object as they are; each page in `result.pages`
    gets its original content wrapped in q/Q and a text layer appended. An encrypted
    PDF is opened with `password` and written with the same encryption (same
    passwords and permissions). Image inputs give one page per image/TIFF frame,
    sized by the image's own resolution, else `image_dpi`; JPEGs are embedded as
    they are, other images losslessly. Pages or frames not in `result.pages` carry
    no text layer. Raises PasswordRequired, CorruptInput or OutputFailed with a
    one-line message naming the file.
    """
    try:
        codes = CharCodes(line.text for page in result.pages for line in page.lines)
    except ValueError as exc:
        raise OutputFailed(f"{doc.source}: cannot write the searchable PDF ({exc})") from None
    if doc.is_pdf:
        with _open_pdf(doc, password) as pdf:
            _add_layers_to_pdf(doc, pdf, result, codes)
            return _save(doc, pdf, keep_encryption=pdf.is_encrypted)
    with pikepdf.new() as pdf:
        build_image_pdf(doc, pdf, result, codes, image_dpi)
        return _save(doc, pdf, keep_encryption=False)


# --- PDF inputs --------------------------------------------------------------


@contextmanager
def _open_pdf(doc: Document, password: str | None) -> Iterator[pikepdf.Pdf]:
    source = io.BytesIO(doc.data) if doc.data is not None else doc.path
    try:
        pdf = pikepdf.open(source, password=password or "")
    except pikepdf.PasswordError:
        raise PasswordRequired(f"{doc.source}: PDF is encrypted; give its password with --password") from None
    except pikepdf.PdfError as exc:
        raise CorruptInput(f"{doc.source}: not a readable PDF ({first_line(exc)})") from None
    except OSError as exc:
        raise UnreadableInput(f"{doc.source}: cannot read file ({exc.strerror or exc})") from None
    with pdf:
        yield pdf


def _add_layers_to_pdf(doc: Document, pdf: pikepdf.Pdf, result: DocumentResult, codes: CharCodes) -> None:
    font = make_font(pdf, codes) if codes.codes else None
    for page_result in result.pages:
        if not 1 <= page_result.page <= len(pdf.pages):
            raise OutputFailed(
                f"{doc.source}: result has page {page_result.page} but the PDF has {len(pdf.pages)} pages"
            )
        if not any(line.text.strip() for line in page_result.lines):
            continue  # nothing to search: the page stays exactly as it was
        page = pdf.pages[page_result.page - 1]
        matrix = _page_matrix(page.obj, page_result)
        font_key = _add_font_resource(page.obj, font)
        page.contents_add(pdf.make_stream(b"q\n"), prepend=True)
        # The original content's graphics state ends with its Q, before our layer starts.
        layer = b"\nQ\n" + text_layer(page_result, matrix, font_key, codes)
        page.contents_add(flate_stream(pdf, layer))


def _inherited(page: pikepdf.Dictionary, key: str) -> pikepdf.Object | None:
    """A page attribute, looked up through the /Parent chain (MediaBox, CropBox, Rotate, Resources)."""
    node, depth = page, 0
    while node is not None and depth < 64:  # the depth bound guards against /Parent loops
        if key in node:
            return node[key]
        node, depth = node.get("/Parent"), depth + 1
    return None


def _rect(value: pikepdf.Object | None) -> tuple[float, float, float, float] | None:
    try:
        x0, y0, x1, y1 = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _page_matrix(page: pikepdf.Dictionary, result: PageResult) -> tuple[float, ...]:
    """The matrix from rendered-image pixels (top-left origin) to the page's user space.

    pdftoppm renders the MediaBox (the app calls it without -cropbox) turned by
    /Rotate; the CropBox (clipped to the MediaBox, as poppler does) is taken instead
    when the image's size fits it and not the MediaBox, so a renderer using
    -cropbox is also placed right.
    """
    media = _rect(_inherited(page, "/MediaBox")) or (0.0, 0.0, 612.0, 792.0)
    try:
        rotate = int(float(_inherited(page, "/Rotate") or 0)) % 360
    except (TypeError, ValueError):
        rotate = 0
    rotate = rotate if rotate in _DISPLAY_TO_USER else 0  # poppler ignores other angles too
    box = media
    crop = _rect(_inherited(page, "/CropBox"))
    if crop is not None:
        clipped = (max(crop[0], media[0]), max(crop[1], media[1]), min(crop[2], media[2]), min(crop[3], media[3]))
        if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            if _fits(clipped, rotate, result) and not _fits(media, rotate, result):
                box = clipped
    width, height = box[2] - box[0], box[3] - box[1]
    if rotate in (90, 270):
        width, height = height, width
    sx, sy = _points_per_pixel(width, result.width, result.dpi), _points_per_pixel(height, result.height, result.dpi)
    a, b, c, d, e, f = _DISPLAY_TO_USER[rotate](*box)
    return a * sx, b * sx, c * sy, d * sy, e, f


def _fits(box: tuple[float, ...], rotate: int, result: PageResult) -> bool:
    width, height = box[2] - box[0], box[3] - box[1]
    if rotate in (90, 270):
        width, height = height, width
    if result.dpi:
        return math.ceil(width * result.dpi / 72 - 1e-6) == result.width
    return abs(width / height - result.width / max(result.height, 1)) < 0.01


def _points_per_pixel(points: float, pixels: int, dpi: int | None) -> float:
    # poppler renders at exactly dpi/72 pixels a point and rounds the image size up;
    # an image whose size does not come from that (resampled) is scaled to the page.
    if dpi and abs(points * dpi / 72 - pixels) < 1:
        return 72 / dpi
    return points / max(pixels, 1)


def _add_font_resource(page: pikepdf.Dictionary, font: pikepdf.Object) -> Name:
    """Give the page its own /Resources and /Font (copies) with our font under an unused name."""
    resources = _inherited(page, "/Resources")
    own = Dictionary({key: resources[key] for key in resources.keys()}) if resources is not None else Dictionary()
    fonts = own.get("/Font")
    own_fonts = Dictionary({key: fonts[key] for key in fonts.keys()}) if fonts is not None else Dictionary()
    key, suffix = FONT_KEY, 1
    while "/" + key in own_fonts:
        key, suffix = f"{FONT_KEY}{suffix}", suffix + 1
    own_fonts[Name("/" + key)] = font
    own[Name.Font] = own_fonts
    # Shared /Resources stay untouched, so pages without a text layer get no new font.
    page[Name.Resources] = own
    return Name("/" + key)


# --- saving ------------------------------------------------------------------


def _save(doc: Document, pdf: pikepdf.Pdf, keep_encryption: bool) -> bytes:
    out = io.BytesIO()
    try:
        if keep_encryption:
            # qpdf copies the encryption only with its default stream handling, which
            # keeps Flate and DCT data as is (only LZW, ASCII85, RunLength become Flate).
            pdf.save(out, encryption=True)
        else:
            # No stream is decoded and re-encoded: images and fonts keep their bytes.
            pdf.save(out, stream_decode_level=pikepdf.StreamDecodeLevel.none, deterministic_id=True)
    except (pikepdf.PdfError, OSError, ValueError) as exc:
        raise OutputFailed(f"{doc.source}: cannot write the searchable PDF ({first_line(exc)})") from None
    return out.getvalue()
