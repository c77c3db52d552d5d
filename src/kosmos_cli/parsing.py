"""Turn the model's raw text into result records. Pure functions, no model needed.

OCR grammar (one line per text line):
    <bbox><x_A><y_B><x_C><y_D></bbox>TEXT\\n
with coordinates in pixels of the image the processor resized (its `width`/`height`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .results import BBox, Line

_BOX = re.compile(r"<bbox><x_(\d+)><y_(\d+)><x_(\d+)><y_(\d+)></bbox>")
# Leftovers of a malformed or cut-off box; removed so the line's text survives.
_LAYOUT_TOKEN = re.compile(r"</?bbox>|<[xy]_\d+>")
_TASK_PREFIX = re.compile(r"^\s*<(ocr|md)>")
_LINE_START = re.compile(r"(?=<bbox>)")


# The model's coordinate tokens: <x_0>..<x_4095>, <y_0>..<y_4095>.
COORDINATE_LIMIT = 4095


def resized_size(width: int, height: int, max_patches: int, patch: int = 16) -> tuple[int, int]:
    """The (width, height) the KOSMOS-2.5 image processor resizes a page to: the largest
    grid of `patch`-pixel squares with at most `max_patches` of them, aspect ratio kept."""
    scale = math.sqrt(max_patches * (patch / height) * (patch / width))
    rows = max(min(math.floor(scale * height / patch), max_patches), 1)
    cols = max(min(math.floor(scale * width / patch), max_patches), 1)
    return cols * patch, rows * patch


def _page_per_resized(resized_size: tuple[int, int], page_size: tuple[int, int]) -> tuple[float, float]:
    """Page pixels per resized-image pixel, (x, y): the one scale both directions of mapping use."""
    return page_size[0] / resized_size[0], page_size[1] / resized_size[1]


def scale_box(
    coords: tuple[int, int, int, int],
    resized_size: tuple[int, int],
    page_size: tuple[int, int],
) -> BBox | None:
    """Map a box from the processor's resized image to original page pixels.

    Returns None for a degenerate box (x0 >= x1 or y0 >= y1), before or after
    clipping to the page.
    """
    x0, y0, x1, y1 = coords
    if x0 >= x1 or y0 >= y1:
        return None
    page_w, page_h = page_size
    sx, sy = _page_per_resized(resized_size, page_size)

    def clip(value: float, limit: int) -> int:
        return min(max(round(value), 0), limit)

    box = BBox(clip(x0 * sx, page_w), clip(y0 * sy, page_h), clip(x1 * sx, page_w), clip(y1 * sy, page_h))
    if box.x0 >= box.x1 or box.y0 >= box.y1:
        return None
    return box


def encode_box(box: BBox, resized_size: tuple[int, int], page_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The inverse of `scale_box`: a box in page pixels -> the coordinates the model writes
    (resized-image pixels), rounded, kept inside the image and the coordinate tokens, and
    at least one pixel wide and high so that `scale_box` does not drop it."""
    sx, sy = _page_per_resized(resized_size, page_size)
    limit_x = min(resized_size[0], COORDINATE_LIMIT)
    limit_y = min(resized_size[1], COORDINATE_LIMIT)

    def place(value: float, scale: float, limit: int) -> int:
        return min(max(round(value / scale), 0), limit)

    x0, x1 = place(box.x0, sx, limit_x), place(box.x1, sx, limit_x)
    y0, y1 = place(box.y0, sy, limit_y), place(box.y1, sy, limit_y)
    if x1 <= x0:
        x0, x1 = (x0, x0 + 1) if x0 < limit_x else (x0 - 1, x0)
    if y1 <= y0:
        y0, y1 = (y0, y0 + 1) if y0 < limit_y else (y0 - 1, y0)
    return x0, y0, x1, y1


def format_ocr_target(
    lines: Sequence[tuple[str, BBox | None]], resized_size: tuple[int, int], page_size: tuple[int, int]
) -> str:
    """Lines (text, page-pixel box) in the model's `<ocr>` grammar; the text `parse_ocr` reads back.

    A line without a box is written as its text alone.
    """
    out = []
    for text, box in lines:
        if box is None:
            out.append(f"{text}\n")
            continue
        x0, y0, x1, y1 = encode_box(box, resized_size, page_size)
        out.append(f"<bbox><x_{x0}><y_{y0}><x_{x1}><y_{y1}></bbox>{text}\n")
    return "".join(out)


def parse_ocr(
    raw: str,
    resized_size: tuple[int, int],
    page_size: tuple[int, int],
    segment_confidences: Sequence[float | None] = (),
) -> tuple[Line, ...]:
    """Parse `<ocr>` output into lines with boxes in original page pixels.

    `resized_size` is the processor's (width, height) for this page, `page_size` the
    original (width, height). Text is never dropped: a line whose box is malformed,
    degenerate or missing keeps its text with `bbox=None`. `segment_confidences`, if
    given, has one value per part of `raw` that starts at `<bbox>` (plus one for the
    text before the first); lines get their part's value. Counts that do not match
    leave every confidence None rather than give a line another line's value.
    """
    segments = _LINE_START.split(_TASK_PREFIX.sub("", raw))
    confidences = list(segment_confidences) if len(segment_confidences) == len(segments) else [None] * len(segments)
    lines: list[Line] = []
    for segment, confidence in zip(segments, confidences):
        match = _BOX.match(segment)
        bbox = scale_box(tuple(int(g) for g in match.groups()), resized_size, page_size) if match else None
        rest = segment[match.end() :] if match else segment
        pieces = [_LAYOUT_TOKEN.sub("", piece).strip() for piece in rest.split("\n")]
        for piece in filter(None, pieces):
            lines.append(Line(piece, bbox, confidence))
            bbox = None  # text after a newline inside one segment has no box of its own
    return tuple(lines)


def clean_markdown(raw: str) -> str:
    """Return the model's markdown as is, without the task prompt or surrounding blank lines."""
    return _TASK_PREFIX.sub("", raw).strip("\n")
