"""A glyph-less font for invisible OCR text, as Tesseract and OCRmyPDF use.

The text layer must be searchable and copyable but never drawn, so the font has a
single empty glyph. Every distinct character of a document gets its own 2-byte
code; all codes show that empty glyph (CIDToGIDMap) and the ToUnicode CMap gives
each code back as its exact UTF-16BE text, surrogate pairs included, so any
Unicode text (accents, Greek, CJK, characters above U+FFFF) survives extraction.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from functools import lru_cache

import pikepdf

FONT_NAME = "GlyphLessFont"
UNITS_PER_EM = 1000
# Every glyph advances by half an em; the text layer stretches lines with Tz anyway.
ADVANCE = 500
# Ascent and descent (em/1000): a line's box is font size tall, 80% of it above the
# baseline, so extractors report the box the OCR gave.
ASCENT = 800
DESCENT = -200
MAX_CODES = 0xFFFF


class CharCodes:
    """2-byte codes for the distinct characters of a document, assigned in code point order."""

    def __init__(self, texts: Iterable[str]) -> None:
        chars = sorted({char for text in texts for char in text})
        if len(chars) > MAX_CODES:
            raise ValueError(f"{len(chars)} distinct characters, more than one font can hold")
        # Code 0 is left unused: some readers treat a 0 code as "no character".
        self.codes = {char: index for index, char in enumerate(chars, start=1)}

    def encode(self, text: str) -> bytes:
        """The string to show `text` with this font (for a PDF hex string)."""
        return b"".join(self.codes[char].to_bytes(2, "big") for char in text)


@lru_cache(maxsize=1)
def _font_program() -> bytes:
    """A TrueType font with `.notdef` and one empty glyph, built once with fontTools."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    builder = FontBuilder(UNITS_PER_EM, isTTF=True)
    builder.setupGlyphOrder([".notdef", "blank"])
    builder.setupCharacterMap({0x20: "blank"})
    empty = TTGlyphPen(None).glyph()
    builder.setupGlyf({".notdef": empty, "blank": empty})
    builder.setupHorizontalMetrics({".notdef": (ADVANCE, 0), "blank": (ADVANCE, 0)})
    builder.setupHorizontalHeader(ascent=ASCENT, descent=DESCENT)
    builder.setupNameTable({"familyName": FONT_NAME, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=ASCENT, sTypoDescender=DESCENT, usWinAscent=ASCENT, usWinDescent=-DESCENT)
    builder.setupPost()
    # Fixed timestamps keep the output byte-for-byte reproducible.
    builder.font["head"].created = builder.font["head"].modified = 0
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()


def _utf16_hex(char: str) -> str:
    return char.encode("utf-16-be").hex().upper()


def to_unicode_cmap(codes: CharCodes) -> bytes:
    """The ToUnicode CMap mapping each code back to its character."""
    entries = [f"<{code:04X}> <{_utf16_hex(char)}>" for char, code in codes.codes.items()]
    # A bfchar block may hold at most 100 entries.
    blocks = []
    for start in range(0, len(entries), 100):
        chunk = entries[start : start + 100]
        blocks.append(f"{len(chunk)} beginbfchar\n" + "\n".join(chunk) + "\nendbfchar")
    return (
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        "1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        + "\n".join(blocks)
        + "\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    ).encode("ascii")


def make_font(pdf: pikepdf.Pdf, codes: CharCodes) -> pikepdf.Object:
    """Add the glyph-less Type0 font for `codes` to `pdf`; returns the indirect font dictionary."""
    from pikepdf import Array, Dictionary, Name

    descriptor = Dictionary(
        Type=Name.FontDescriptor,
        FontName=Name("/" + FONT_NAME),
        Flags=4,  # symbolic: the glyphs are not a standard Latin set
        FontBBox=Array([0, DESCENT, ADVANCE, ASCENT]),
        ItalicAngle=0,
        Ascent=ASCENT,
        Descent=DESCENT,
        CapHeight=ASCENT,
        StemV=80,
        FontFile2=pdf.make_stream(_font_program()),
    )
    # Every code (CID) shows glyph 1, the empty one.
    cid_to_gid = b"\x00\x00" + b"\x00\x01" * len(codes.codes)
    cid_font = Dictionary(
        Type=Name.Font,
        Subtype=Name.CIDFontType2,
        BaseFont=Name("/" + FONT_NAME),
        CIDSystemInfo=Dictionary(Registry=pikepdf.String("Adobe"), Ordering=pikepdf.String("Identity"), Supplement=0),
        FontDescriptor=pdf.make_indirect(descriptor),
        DW=ADVANCE,
        CIDToGIDMap=pdf.make_stream(cid_to_gid),
    )
    font = Dictionary(
        Type=Name.Font,
        Subtype=Name.Type0,
        BaseFont=Name("/" + FONT_NAME),
        Encoding=Name("/Identity-H"),
        DescendantFonts=Array([pdf.make_indirect(cid_font)]),
        ToUnicode=pdf.make_stream(to_unicode_cmap(codes)),
    )
    return pdf.make_indirect(font)
