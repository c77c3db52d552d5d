"""Image inputs as PDF pages: one page per image or TIFF frame, upright, at its own resolution.

JPEGs (grey or RGB) are embedded as they are, DCTDecode, and turned upright by the
placement matrix; other images go in losslessly (Flate), alpha composited on white.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import pikepdf
from pikepdf import Array, Dictionary, Name

from ..errors import CorruptInput, OutputFailed
from ..inputs.documents import Document, to_rgb
from ..results import DocumentResult, PageResult
from .pdf_font import CharCodes, make_font
from .pdf_text import FONT_KEY, first_line, flate_stream, num, text_layer

# EXIF orientation -> map of a stored-image point (i, j) to the upright image (w, h: stored size).
_EXIF_TO_UPRIGHT = {
    1: lambda i, j, w, h: (i, j),
    2: lambda i, j, w, h: (w - i, j),
    3: lambda i, j, w, h: (w - i, h - j),
    4: lambda i, j, w, h: (i, h - j),
    5: lambda i, j, w, h: (j, i),
    6: lambda i, j, w, h: (h - j, i),
    7: lambda i, j, w, h: (h - j, w - i),
    8: lambda i, j, w, h: (j, w - i),
}
_MIN_DPI = 10  # resolutions below this are placeholders (1 dpi, 0 dpi), not real


@dataclass(frozen=True)
class _Frame:
    xobject: pikepdf.Stream
    placement: tuple[float, ...]  # the image's cm on a page of `size` points
    size: tuple[float, float]


def build_image_pdf(doc: Document, pdf: pikepdf.Pdf, result: DocumentResult, codes: CharCodes, dpi: int) -> None:
    """Add a page per image/frame of `doc` to `pdf`, with a text layer on the frames in `result`."""
    from PIL import Image, UnidentifiedImageError

    # The app has already checked the image against --max-pixels when reading it.
    Image.MAX_IMAGE_PIXELS = None
    font = make_font(pdf, codes) if codes.codes else None
    by_number = {page.page: page for page in result.pages}
    try:
        with Image.open(io.BytesIO(doc.data) if doc.data is not None else doc.path) as image:
            frames = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
            for number in range(1, frames + 1):
                image.seek(number - 1)
                frame = _image_frame(doc, pdf, image, dpi)
                _add_image_page(pdf, frame, by_number.get(number), font, codes)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptInput(f"{doc.source}: cannot decode image for the PDF ({first_line(exc)})") from None
    missing = sorted(set(by_number) - set(range(1, len(pdf.pages) + 1)))
    if missing:
        raise OutputFailed(f"{doc.source}: result has page {missing[0]} but the image has {len(pdf.pages)} frames")


def _image_frame(doc: Document, pdf: pikepdf.Pdf, image, default_dpi: int) -> _Frame:
    from PIL import ImageOps

    orientation = image.getexif().get(0x0112, 1)
    orientation = orientation if orientation in _EXIF_TO_UPRIGHT else 1
    w, h = image.size
    upright = (h, w) if orientation >= 5 else (w, h)
    xdpi, ydpi = _image_dpi(image, default_dpi)
    if orientation >= 5:  # the resolution belongs to the stored axes
        xdpi, ydpi = ydpi, xdpi
    size = (upright[0] * 72 / xdpi, upright[1] * 72 / ydpi)
    if image.format == "JPEG" and image.mode in ("L", "RGB"):
        # The JPEG bytes as they are (no re-compression), turned upright by the placement.
        data = doc.data if doc.data is not None else doc.path.read_bytes()
        xobject = _image_xobject(pdf, data, w, h, image.mode, Name.DCTDecode)
        map_point = _EXIF_TO_UPRIGHT[orientation]
    else:
        upright_image = ImageOps.exif_transpose(image)
        bilevel = upright_image.mode == "1" and "transparency" not in upright_image.info
        gray = upright_image.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
        pixels = upright_image if bilevel else to_rgb(upright_image)
        mode = "1" if bilevel else "L" if gray else "RGB"
        pixels = pixels.convert(mode) if pixels.mode != mode else pixels
        xobject = _image_xobject(pdf, zlib.compress(pixels.tobytes(), 6), *upright, mode, Name.FlateDecode)
        w, h = upright
        map_point = _EXIF_TO_UPRIGHT[1]
    # Image space is the unit square, (0, 0) at the stored image's bottom-left.
    origin, unit_s, unit_t = (map_point(i, j, w, h) for i, j in ((0, h), (w, h), (0, 0)))
    sx, sy = size[0] / upright[0], size[1] / upright[1]

    def to_page(point):
        return point[0] * sx, size[1] - point[1] * sy

    (ox, oy), (ax, ay), (bx, by) = to_page(origin), to_page(unit_s), to_page(unit_t)
    return _Frame(xobject, (ax - ox, ay - oy, bx - ox, by - oy, ox, oy), size)


def _image_dpi(image, default: int) -> tuple[float, float]:
    try:
        xdpi, ydpi = (float(v) for v in image.info.get("dpi", (0, 0)))
    except (TypeError, ValueError):
        return float(default), float(default)
    if xdpi < _MIN_DPI or ydpi < _MIN_DPI:
        return float(default), float(default)
    # PNG stores pixels per metre, so 150 dpi comes back as 149.9994: take the whole number.
    return tuple(round(v) if abs(v - round(v)) < 0.05 else v for v in (xdpi, ydpi))


def _image_xobject(pdf: pikepdf.Pdf, data: bytes, width: int, height: int, mode: str, filter_: Name) -> pikepdf.Stream:
    stream = pdf.make_stream(data)
    stream.Type, stream.Subtype = Name.XObject, Name.Image
    stream.Width, stream.Height = width, height
    stream.ColorSpace = Name.DeviceRGB if mode == "RGB" else Name.DeviceGray
    stream.BitsPerComponent = 1 if mode == "1" else 8
    stream.Filter = filter_
    return stream


def _add_image_page(pdf: pikepdf.Pdf, frame: _Frame, page_result: PageResult | None, font, codes) -> None:
    width, height = frame.size
    resources = Dictionary(XObject=Dictionary(Im0=frame.xobject))
    content = b"q\n" + " ".join(num(v) for v in frame.placement).encode() + b" cm\n/Im0 Do\nQ\n"
    if page_result is not None and font is not None:
        resources.Font = Dictionary({"/" + FONT_KEY: font})
        # Box pixels are the upright image's; the page is that image, top-left first.
        matrix = (width / max(page_result.width, 1), 0, 0, -height / max(page_result.height, 1), 0, height)
        content += text_layer(page_result, matrix, Name("/" + FONT_KEY), codes)
    page = Dictionary(
        Type=Name.Page,
        MediaBox=Array([0, 0, width, height]),
        Resources=resources,
        Contents=flate_stream(pdf, content),
    )
    pdf.pages.append(pikepdf.Page(page))
