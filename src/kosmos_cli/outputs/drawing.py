"""`--draw DIR`: each page as a PNG with its OCR boxes and line numbers drawn over it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from ..inputs.documents import Document, Page
from ..results import PageResult
from .files import write_atomic_bytes

if TYPE_CHECKING:
    from PIL import Image

BOX_COLOUR = (220, 20, 60)


def draw_boxes(image: Image.Image, result: PageResult) -> Image.Image:
    """A copy of the page with each line's box outlined and labelled with its index."""
    from PIL import ImageDraw

    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 500))
    for index, line in enumerate(result.lines):
        if line.bbox is None:
            continue
        box = line.bbox
        draw.rectangle([box.x0, box.y0, max(box.x0, box.x1 - 1), max(box.y0, box.y1 - 1)], outline=BOX_COLOUR, width=width)
        draw.text((box.x0 + width + 1, box.y0 + width), str(index), fill=BOX_COLOUR)
    return canvas


class PageDrawer:
    """Saves `<DIR>/<output name>-p<N>.png` for every page read, atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path_for(self, doc: Document, page_number: int) -> Path:
        return self.folder / f"{doc.output_name}-p{page_number}.png"

    def __call__(self, doc: Document, page: Page, result: PageResult) -> None:
        buffer = io.BytesIO()
        draw_boxes(page.image, result).save(buffer, format="PNG")
        write_atomic_bytes(self.path_for(doc, page.number), buffer.getvalue())
