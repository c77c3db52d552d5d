"""The invisible text layer: each OCR line drawn over its box in render mode 3.

Coordinates inside the layer are pixels of the page image the boxes refer to
(origin top-left); the caller's matrix takes them onto the PDF page.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from itertools import groupby

import pikepdf
from pikepdf import Name

from ..results import Line, PageResult
from .pdf_font import ADVANCE, ASCENT, DESCENT, CharCodes

FONT_KEY = "KosmosOCR"


def num(value: float) -> str:
    """A number for a content stream: at most 4 decimals, no exponent, no -0."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def placed_lines(page: PageResult) -> Iterator[tuple[Line, tuple[float, float, float, float]]]:
    """Each non-blank line with its box clamped to the page; a line without a box
    goes just below the previous one (or at the top when there is no room), so no text
    is lost. Its box is a normal line's height and as wide as its text needs, so its
    characters are not squeezed together (extractors would drop or interleave them)."""
    previous = None
    for line in page.lines:
        if not line.text.strip():
            continue
        if line.bbox is not None:
            x0, y0 = min(max(line.bbox.x0, 0), page.width - 1), min(max(line.bbox.y0, 0), page.height - 1)
            x1, y1 = min(max(line.bbox.x1, x0 + 1), page.width), min(max(line.bbox.y1, y0 + 1), page.height)
        else:
            tall = max(page.height / 50, 1)
            if previous is not None:
                tall = max(min(previous[3] - previous[1], page.height / 20), 1)
            below = previous is not None and previous[3] + tall <= page.height
            x0 = previous[0] if below else 0
            y0 = previous[3] if below else 0
            x1, y1 = min(page.width, x0 + max(len(line.text) * tall / 2, previous[2] - x0 if below else 0)), y0 + tall
            if x1 - x0 < len(line.text) * tall / 2:  # too close to the right edge: start at the left
                x0, x1 = 0, min(page.width, len(line.text) * tall / 2)
        previous = (x0, y0, x1, y1)
        yield line, previous


def text_layer(page: PageResult, matrix: tuple[float, ...], font_key: Name, codes: CharCodes) -> bytes:
    """Content stream drawing each line invisibly over its box, one BT/ET per line."""
    ops = ["q", " ".join(num(v) for v in matrix) + " cm"]
    em = (ASCENT - DESCENT) / 1000
    for line, (x0, y0, x1, y1) in placed_lines(page):
        # Units here are rendered-image pixels; the text matrix flips y back up.
        size = (y1 - y0) / em
        scale, shows = fit_line(line.text, x1 - x0, size, codes)
        ops += [
            "BT",
            "3 Tr",
            f"{font_key} {num(size)} Tf",
            f"{num(100 * scale)} Tz",
            f"1 0 0 -1 {num(x0)} {num(y0 + size * ASCENT / 1000)} Tm",
            f"[{shows}] TJ",
            "ET",
        ]
    ops.append("Q")
    return ("\n".join(ops) + "\n").encode("ascii")


def fit_line(text: str, width: float, size: float, codes: CharCodes) -> tuple[float, str]:
    """Horizontal scale and TJ operands spreading `text` over `width`.

    Each space is a quarter em wide whatever the stretch: extractors start a new
    column at gaps of about 0.7 em and drop the space under about 0.1 em, so
    stretching spaces with the letters would split a widely spaced line.
    """
    spaces = sum(char.isspace() for char in text)
    letters = len(text) - spaces
    gap = min(0.25 * size, width / len(text))
    scale = max(width - spaces * gap, 0.1 * width) / (max(letters, 1) * size * ADVANCE / 1000)
    # A TJ number moves the next glyph left by number/1000 em (times the scale).
    squeeze = num(ADVANCE - 1000 * gap / (size * scale))
    parts = []
    for is_space, chars in groupby(text, str.isspace):
        for char in chars if is_space else ["".join(chars)]:
            parts.append(f"<{codes.encode(char).hex().upper()}>" + (f" {squeeze}" if is_space else ""))
    return scale, " ".join(parts)


def flate_stream(pdf: pikepdf.Pdf, data: bytes) -> pikepdf.Stream:
    """A new Flate-compressed stream (our own streams are compressed when written, also under encryption)."""
    stream = pdf.make_stream(zlib.compress(data, 9))
    stream[Name.Filter] = Name.FlateDecode
    return stream


def first_line(exc: BaseException) -> str:
    """The first line of a library exception's message, for a one-line error."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
