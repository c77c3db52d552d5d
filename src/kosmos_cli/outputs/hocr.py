"""`--format hocr`: OCR results as one hOCR 1.2 (XHTML) document per input; a pure function.

Layout, per page (`N` is the document's own 1-based page number, `I` a line's
1-based position on the page):

    div.ocr_page#page_N        title: image "SOURCE"; bbox 0 0 W H; ppageno N-1[; scan_res D D]
      div.ocr_carea#block_N_1  title: bbox of all boxed lines (the page's box if none has one)
        p.ocr_par#par_N_1      the same box
          span.ocr_line#line_N_I          title: bbox x0 y0 x1 y1[; x_wconf C]
            span.ocrx_word#word_N_I_J     title: bbox ...[; x_wconf C]

- `ppageno` is 0-based, as hOCR defines it (the front cover is page 0): page 1 of
  the document is `ppageno 0`. With `--pages`, the numbers stay the document's own.
- `scan_res` is written for PDF pages, which are rendered at a known resolution;
  images carry none.
- KOSMOS-2.5 reads a page as a flat list of lines: one `ocr_carea` and one
  `ocr_par` per page hold them all, in the model's reading order.
- Word boxes are **estimates**, shared out of the line's box by character count
  (see `words.py`); the model gives no word boxes. They are written because
  consumers such as OCRmyPDF's hOCR renderer ignore a line without words.
- `x_wconf` (an integer 0..100) is the line's confidence, on the line and on each
  of its words alike; absent when the line has no confidence.
- A line whose box is unknown is still written, with its words, but without a
  `bbox` (rather than an invented one): its text is in the document for text
  extraction, and OCRmyPDF leaves such a line out of the PDF's text layer without
  complaint. hOCR expects a `bbox` on every `ocr_line`, so strict validators will
  report these lines.
- A line of only whitespace is left out. Between words, one space.
- Text is escaped for XML; characters XML cannot carry (most C0 controls) become
  U+FFFD. In the `image` property, whose grammar allows only printable ASCII
  without double quotes, the source name is percent-encoded (UTF-8, as in a URL):
  `"`, `%`, `;`, controls and non-ASCII characters (`urllib.parse.unquote`
  reverses it). The `<title>` carries the name as it is.

For OCR results (`task == "ocr"`): the pages' `lines` are written. A markdown
result has no lines, so its pages would come out empty; the CLI offers hOCR for
OCR only.
"""

from __future__ import annotations

from urllib.parse import quote

from .. import __version__
from ..results import BBox, DocumentResult, Line, PageResult
from .words import Word, escape_attr, escape_text, estimate_words, union_box, xml_safe

CAPABILITIES = "ocr_page ocr_carea ocr_par ocr_line ocrx_word ocrp_wconf"
# Printable ASCII that may stay as it is in a delimited string of the `image` property.
_IMAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"%;')

_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
    "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
 <head>
  <title>{title}</title>
  <meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>
  <meta name="ocr-system" content="kosmos25 {version}"/>
  <meta name="ocr-capabilities" content="{capabilities}"/>
  <meta name="ocr-number-of-pages" content="{pages}"/>
 </head>
 <body>
"""
_TAIL = """ </body>
</html>
"""


def wconf(confidence: float | None) -> int | None:
    """A 0..1 confidence as hOCR's `x_wconf`: an integer percentage; None stays None."""
    if confidence is None:
        return None
    return min(100, max(0, round(confidence * 100)))


def _bbox(box: BBox) -> str:
    return f"bbox {box.x0} {box.y0} {box.x1} {box.y1}"


def _title(*properties: str | None) -> str:
    """` title="..."` from the properties that are set; nothing when none is."""
    present = [p for p in properties if p]
    return f' title="{escape_attr("; ".join(present))}"' if present else ""


def _image_name(source: str) -> str:
    return quote(xml_safe(source), safe=_IMAGE_SAFE)


def _word(word: Word, word_id: str, conf: int | None) -> str:
    title = _title(_bbox(word.bbox) if word.bbox else None, f"x_wconf {conf}" if conf is not None else None)
    return f'<span class="ocrx_word" id="{word_id}"{title}>{escape_text(word.text)}</span>'


def _line(line: Line, words: tuple[Word, ...], number: str) -> str:
    """`number` is `N_I`: the page's number and the line's position on it."""
    conf = wconf(line.confidence)
    title = _title(_bbox(line.bbox) if line.bbox else None, f"x_wconf {conf}" if conf is not None else None)
    spans = " ".join(_word(word, f"word_{number}_{j}", conf) for j, word in enumerate(words, 1))
    return f'     <span class="ocr_line" id="line_{number}"{title}>{spans}</span>\n'


def _page(page: PageResult, source: str) -> str:
    n = page.page
    properties = [
        f'image "{_image_name(source)}"',
        _bbox(BBox(0, 0, page.width, page.height)),
        f"ppageno {n - 1}",
        f"scan_res {page.dpi} {page.dpi}" if page.dpi is not None else None,
    ]
    out = [f'  <div class="ocr_page" id="page_{n}"{_title(*properties)}>\n']
    lines = [(line, words) for line in page.lines if (words := estimate_words(line))]
    if lines:
        block = union_box([line.bbox for line, _ in lines if line.bbox]) or BBox(0, 0, page.width, page.height)
        out.append(f'   <div class="ocr_carea" id="block_{n}_1"{_title(_bbox(block))}>\n')
        out.append(f'    <p class="ocr_par" id="par_{n}_1"{_title(_bbox(block))}>\n')
        out.extend(_line(line, words, f"{n}_{i}") for i, (line, words) in enumerate(lines, 1))
        out.append("    </p>\n   </div>\n")
    out.append("  </div>\n")
    return "".join(out)


def to_hocr(result: DocumentResult) -> str:
    """One hOCR 1.2 XHTML document holding every page of an OCR result."""
    head = _HEAD.format(
        title=escape_text(result.source),
        version=escape_attr(__version__),
        capabilities=CAPABILITIES,
        pages=len(result.pages),
    )
    return head + "".join(_page(page, result.source) for page in result.pages) + _TAIL
