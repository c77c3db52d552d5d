"""Estimated word boxes and XML-safe text, shared by the hOCR and ALTO writers.

KOSMOS-2.5 gives one box per text line and none per word. hOCR and ALTO consumers
want words (OCRmyPDF's hOCR renderer, for one, places text word by word and ignores
a line without words), so the line's box is shared out among its words by
character count: a line is split on whitespace, and each word gets the slice of the
box's width that its characters take of the line, counted from the first word's
first character to the last word's last (spaces between words count, leading and
trailing ones do not). Every word keeps the line's full height. These boxes are
**estimates**: proportional fonts, wide CJK characters and justified text put real
words elsewhere. Word boxes lie inside the line box, in order, without overlapping;
with integer pixels a word may be 0 pixels wide if the line box is narrower than
its number of characters.

Characters are Unicode code points (one for a character above U+FFFF, such as an
emoji); whitespace is what `str.split()` splits on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..results import BBox, Line

_WORD = re.compile(r"\S+")
# Characters XML 1.0 does not allow anywhere, not even as character references:
# C0 controls other than tab, newline and carriage return, lone surrogates, U+FFFE/U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Word:
    """One word of a line: its text and its estimated box (None when the line has none)."""

    text: str
    bbox: BBox | None


def split_words(text: str) -> list[tuple[int, int]]:
    """Start and end (exclusive) of each whitespace-separated word of `text`, in code points."""
    return [match.span() for match in _WORD.finditer(text)]


def estimate_words(line: Line) -> tuple[Word, ...]:
    """The line's words with boxes shared out of the line box by character count.

    Empty for a line that is empty or only whitespace. Words of a line without a box
    have no box either.
    """
    spans = split_words(line.text)
    if not spans:
        return ()
    box = line.bbox
    if box is None:
        return tuple(Word(line.text[start:end], None) for start, end in spans)
    first, last = spans[0][0], spans[-1][1]
    chars = last - first
    width = box.x1 - box.x0

    def x_at(offset: int) -> int:
        return box.x0 + round(width * (offset - first) / chars)

    return tuple(Word(line.text[start:end], BBox(x_at(start), box.y0, x_at(end), box.y1)) for start, end in spans)


def union_box(boxes: list[BBox]) -> BBox | None:
    """The smallest box holding all `boxes`; None for none."""
    if not boxes:
        return None
    return BBox(min(b.x0 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes), max(b.y1 for b in boxes))


def xml_safe(text: str) -> str:
    """`text` with each character XML 1.0 forbids (most C0 controls, lone surrogates,
    U+FFFE/U+FFFF) replaced by U+FFFD, one for one; escaping is still to be done."""
    return _NOT_XML.sub(REPLACEMENT, text)


def escape_text(text: str) -> str:
    """`text` made safe for XML character data (a carriage return as a reference, so that
    parsers do not turn it into a newline)."""
    return xml_safe(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def escape_attr(text: str) -> str:
    """`text` made safe for a double-quoted XML attribute; tab, newline and carriage
    return become character references so that attribute normalisation keeps them."""
    return (
        escape_text(text)
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
    )
