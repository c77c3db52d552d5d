"""Turn the model's raw text into result records. Pure functions, no model needed.

OCR grammar (one line per text line):
    <bbox><x_A><y_B><x_C><y_D></bbox>TEXT\\n
with coordinates in pixels of the image the processor resized (its `width`/`height`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .results import BBox, Line

_BOX = re.compile(r"<bbox><x_(\d+)><y_(\d+)><x_(\d+)><y_(\d+)></bbox>")
# Leftovers of a malformed or cut-off box; removed so the line's text survives.
_LAYOUT_TOKEN = re.compile(r"</?bbox>|<[xy]_\d+>")
_TASK_PREFIX = re.compile(r"^\s*<(ocr|md)>")
_LINE_START = re.compile(r"(?=<bbox>)")


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
    resized_w, resized_h = resized_size
    page_w, page_h = page_size
    sx, sy = page_w / resized_w, page_h / resized_h

    def clip(value: float, limit: int) -> int:
        return min(max(round(value), 0), limit)

    box = BBox(clip(x0 * sx, page_w), clip(y0 * sy, page_h), clip(x1 * sx, page_w), clip(y1 * sy, page_h))
    if box.x0 >= box.x1 or box.y0 >= box.y1:
        return None
    return box


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
