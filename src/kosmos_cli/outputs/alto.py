"""`--format alto`: OCR results as one ALTO 4.4 XML document per input; a pure function.

Positions are in pixels of the page image (`MeasurementUnit` `pixel`), from its
top-left corner. Per page (`N` is the document's own 1-based page number, `I` a
line's 1-based position on the page, `J` a word's on the line):

    Page#page_N  PHYSICAL_IMG_NR=N WIDTH HEIGHT
      PrintSpace  the whole page
        TextBlock#page_N_block_1  the box of all boxed lines (the page's box if none has one)
          TextLine#page_N_line_I  HPOS VPOS WIDTH HEIGHT of the line's box
            String#page_N_line_I_string_J  CONTENT, estimated word box[, WC]
            SP  the gap between two words

- KOSMOS-2.5 reads a page as a flat list of lines: one `TextBlock` per page holds
  them all, in the model's reading order. A page without lines has an empty
  `PrintSpace`.
- Word boxes are **estimates**, shared out of the line's box by character count
  (see `words.py`); the model gives no word boxes.
- `WC` (0..1, four decimals) is the line's confidence, on each of its words alike;
  absent when the line has no confidence. ALTO has no confidence on `TextLine`.
- A line whose box is unknown is still written, with its words, but without
  HPOS/VPOS/WIDTH/HEIGHT on the line, its strings and spaces (ALTO makes all of
  them optional) rather than with an invented position.
- A line of only whitespace is left out.
- Text is escaped for XML; characters XML cannot carry (most C0 controls) become
  U+FFFD.
- IDs are unique as long as the document's page numbers are (they are: each page
  is read once).
- The software is named in `OCRProcessing`, which ALTO 4 marks deprecated in favour
  of `Processing` but which readers of ALTO 2 and 3 (and Tesseract's output) know.

For OCR results (`task == "ocr"`): the pages' `lines` are written. A markdown
result has no lines, so its pages would come out empty; the CLI offers ALTO for
OCR only.
"""

from __future__ import annotations

from .. import __version__
from ..results import BBox, DocumentResult, Line, PageResult
from .words import Word, escape_attr, escape_text, estimate_words, union_box

NAMESPACE = "http://www.loc.gov/standards/alto/ns-v4#"
SCHEMA_LOCATION = "http://www.loc.gov/standards/alto/v4/alto-4-4.xsd"

_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{namespace}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:schemaLocation="{namespace} {schema}" SCHEMAVERSION="4.4">
  <Description>
    <MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation>
      <fileName>{source}</fileName>
    </sourceImageInformation>
    <OCRProcessing ID="ocr_processing_1">
      <ocrProcessingStep>
        <processingStepSettings>model: {model}</processingStepSettings>
        <processingSoftware>
          <softwareName>kosmos25</softwareName>
          <softwareVersion>{version}</softwareVersion>
          <applicationDescription>OCR with Microsoft's KOSMOS-2.5</applicationDescription>
        </processingSoftware>
      </ocrProcessingStep>
    </OCRProcessing>
  </Description>
  <Layout>
"""
_TAIL = """  </Layout>
</alto>
"""


def word_confidence(confidence: float | None) -> str | None:
    """A 0..1 confidence as ALTO's `WC`: four decimals at most; None stays None."""
    if confidence is None:
        return None
    return str(round(min(1.0, max(0.0, confidence)), 4))


def _position(box: BBox | None) -> str:
    if box is None:
        return ""
    return f' HPOS="{box.x0}" VPOS="{box.y0}" WIDTH="{box.x1 - box.x0}" HEIGHT="{box.y1 - box.y0}"'


def _gap(before: Word, after: Word) -> BBox | None:
    """The space between two words of a line: from one's right edge to the next's left."""
    if before.bbox is None or after.bbox is None:
        return None
    return BBox(before.bbox.x1, before.bbox.y0, after.bbox.x0, before.bbox.y1)


def _line(line: Line, words: tuple[Word, ...], line_id: str) -> str:
    wc = word_confidence(line.confidence)
    confidence = f' WC="{wc}"' if wc is not None else ""
    out = [f'          <TextLine ID="{line_id}"{_position(line.bbox)}>\n']
    for j, word in enumerate(words, 1):
        if j > 1:
            out.append(f"            <SP{_position(_gap(words[j - 2], word))}/>\n")
        out.append(
            f'            <String ID="{line_id}_string_{j}" CONTENT="{escape_attr(word.text)}"'
            f"{_position(word.bbox)}{confidence}/>\n"
        )
    out.append("          </TextLine>\n")
    return "".join(out)


def _page(page: PageResult) -> str:
    page_id = f"page_{page.page}"
    whole = _position(BBox(0, 0, page.width, page.height))
    out = [f'    <Page ID="{page_id}" PHYSICAL_IMG_NR="{page.page}" WIDTH="{page.width}" HEIGHT="{page.height}">\n']
    lines = [(line, words) for line in page.lines if (words := estimate_words(line))]
    if not lines:
        out.append(f"      <PrintSpace{whole}/>\n    </Page>\n")
        return "".join(out)
    block = union_box([line.bbox for line, _ in lines if line.bbox]) or BBox(0, 0, page.width, page.height)
    out.append(f"      <PrintSpace{whole}>\n")
    out.append(f'        <TextBlock ID="{page_id}_block_1"{_position(block)}>\n')
    out.extend(_line(line, words, f"{page_id}_line_{i}") for i, (line, words) in enumerate(lines, 1))
    out.append("        </TextBlock>\n      </PrintSpace>\n    </Page>\n")
    return "".join(out)


def to_alto(result: DocumentResult) -> str:
    """One ALTO 4.4 document holding every page of an OCR result."""
    head = _HEAD.format(
        namespace=NAMESPACE,
        schema=SCHEMA_LOCATION,
        source=escape_text(result.source),
        model=escape_text(result.model),
        version=escape_text(__version__),
    )
    return head + "".join(_page(page) for page in result.pages) + _TAIL
