"""Inputs: image files (PNG, JPEG, TIFF pages, ...) -> pages, with Pillow."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import CorruptInput, ImageTooLarge, InputError, UnreadableInput, UnsupportedInput
from .pages import SUPPORTED_SUFFIXES, Document, Page, PageFailure, PageGeometry, PageOptions, select_page_numbers

if TYPE_CHECKING:
    from PIL import Image


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


def iter_image_pages(doc: Document, options: PageOptions) -> Iterator[Page | PageFailure]:
    """The selected pages (TIFF frames) of an image file; see `documents.iter_page_outcomes`."""
    from PIL import ImageOps

    with _open_image(doc, options.max_pixels) as image:
        for number in select_page_numbers(doc, _frame_count(image), options.pages):
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


def image_geometry(doc: Document, options: PageOptions) -> tuple[int, list[PageGeometry]]:
    """(total page count, the selected pages' geometry) of an image file, from its header."""
    with _open_image(doc, options.max_pixels) as image:
        total = _frame_count(image)
        pages = []
        for number in select_page_numbers(doc, total, options.pages):
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
