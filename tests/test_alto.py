"""ALTO writer tests: valid against the ALTO 4.4 schema (offline), and positions and text
parse back equal to the results."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from kosmos_cli import __version__
from kosmos_cli.outputs.alto import to_alto, word_confidence
from kosmos_cli.outputs.words import xml_safe
from kosmos_cli.results import BBox, Line, PageResult
from test_hocr import TRICKY_LINES, doc, page, receipt_lines

SCHEMAS = Path(__file__).parent / "fixtures" / "alto"
ALTO = "{http://www.loc.gov/standards/alto/ns-v4#}"
POSITION = ("HPOS", "VPOS", "WIDTH", "HEIGHT")


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(
        str(SCHEMAS / "alto-4-4.xsd"),
        locations={"http://www.w3.org/1999/xlink": str(SCHEMAS / "xlink.xsd")},
        allow="local",
    )


def valid(schema: xmlschema.XMLSchema, text: str) -> ET.Element:
    """Validate against ALTO 4.4 and return the parsed root."""
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text.encode("utf-8"))
    schema.validate(root)
    return root


def position(element: ET.Element) -> list[int] | None:
    """HPOS, VPOS, WIDTH, HEIGHT as a box [x0, y0, x1, y1]; None when all are absent."""
    values = [element.get(name) for name in POSITION]
    if values == [None] * 4:
        return None
    x, y, w, h = (int(v) for v in values)
    return [x, y, x + w, y + h]


def text_lines(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(ALTO + "TextLine"))


def strings(line: ET.Element) -> list[ET.Element]:
    return line.findall(ALTO + "String")


def check_line(line_el: ET.Element, line: Line) -> None:
    """The line's box and words parse back; words and spaces alternate inside the line's box."""
    assert position(line_el) == (line.bbox.to_list() if line.bbox else None)
    words = strings(line_el)
    assert [s.get("CONTENT") for s in words] == [xml_safe(t) for t in line.text.split()]
    children = list(line_el)
    assert [c.tag for c in children] == [ALTO + ("String" if i % 2 == 0 else "SP") for i in range(len(children))]
    wc = word_confidence(line.confidence)
    assert {s.get("WC") for s in words} == {wc}
    if line.bbox is None:
        assert all(position(c) is None for c in children)
        return
    x0, y0, x1, y1 = line.bbox.to_list()
    boxes = [position(c) for c in children]
    assert boxes[0][0] == x0 and boxes[-1][2] == x1
    for left, right in zip(boxes, boxes[1:]):
        assert left[2] == right[0]  # each space fills the gap between its words
    for bx0, by0, bx1, by1 in boxes:
        assert x0 <= bx0 <= bx1 <= x1 and (by0, by1) == (y0, y1)


def test_multi_page_document_is_valid_and_parses_back(schema):
    pdf = doc(
        page(3, receipt_lines(), dpi=200),
        page(4, [], dpi=200, width=1700, height=2200),
        page(7, TRICKY_LINES, dpi=200),
        source="scans/a.pdf",
    )
    root = valid(schema, to_alto(pdf))
    assert root.get("SCHEMAVERSION") == "4.4"
    pages = list(root.iter(ALTO + "Page"))
    assert [p.get("ID") for p in pages] == ["page_3", "page_4", "page_7"]
    assert [p.get("PHYSICAL_IMG_NR") for p in pages] == ["3", "4", "7"]
    assert [(p.get("WIDTH"), p.get("HEIGHT")) for p in pages] == [("864", "1216"), ("1700", "2200"), ("864", "1216")]
    for page_el, page_result in zip(pages, pdf.pages):
        (space,) = page_el.findall(ALTO + "PrintSpace")
        assert position(space) == [0, 0, page_result.width, page_result.height]
        lines = text_lines(page_el)
        assert len(lines) == len(page_result.lines)
        for line_el, line in zip(lines, page_result.lines):
            check_line(line_el, line)
    assert [s.get("CONTENT") for s in strings(text_lines(pages[0])[1])] == ["[REG]", "BLACK", "SAKURA"]
    # The receipt's lines sit in one block boxed by all of them.
    (block,) = pages[0].iter(ALTO + "TextBlock")
    assert position(block) == [17, 569, 836, 1108] and block.get("ID") == "page_3_block_1"


def test_description(schema):
    root = valid(schema, to_alto(doc(page(1, receipt_lines()))))
    description = root.find(ALTO + "Description")
    assert description.findtext(ALTO + "MeasurementUnit") == "pixel"
    assert description.findtext(f"{ALTO}sourceImageInformation/{ALTO}fileName") == "scans/receipt.png"
    software = description.find(f"{ALTO}OCRProcessing/{ALTO}ocrProcessingStep/{ALTO}processingSoftware")
    assert software.findtext(ALTO + "softwareName") == "kosmos25"
    assert software.findtext(ALTO + "softwareVersion") == __version__
    settings = description.findtext(f"{ALTO}OCRProcessing/{ALTO}ocrProcessingStep/{ALTO}processingStepSettings")
    assert settings == "model: microsoft/kosmos-2.5"


def test_confidences_present_and_absent(schema):
    lines = (
        Line("a b", BBox(0, 0, 30, 10), 0.93456),
        Line("c", BBox(0, 20, 10, 30)),
        Line("d", BBox(0, 40, 10, 50), 1.0),
    )
    root = valid(schema, to_alto(doc(page(1, lines))))
    confidences = [[s.get("WC") for s in strings(line)] for line in text_lines(root)]
    assert confidences == [["0.9346", "0.9346"], [None], ["1.0"]]
    assert all(line.get("WC") is None for line in text_lines(root))  # ALTO has no WC on TextLine
    assert [word_confidence(c) for c in (None, 0.0, 0.00004, 0.5, 1.0, 1.3, -0.2)] == [
        None, "0.0", "0.0", "0.5", "1.0", "1.0", "0.0",
    ]  # fmt: skip


def test_lines_without_a_box_keep_their_text_without_positions(schema):
    lines = (
        Line("Sub Total 45,455", BBox(31, 742, 820, 781), 0.8),
        Line("SAKURA 1 x", None, 0.42),
        Line("45,455", None),
        Line("Total 50,000", BBox(24, 872, 827, 921), 0.97),
    )
    root = valid(schema, to_alto(doc(page(1, lines))))
    elements = text_lines(root)
    assert len(elements) == 4
    for element, line in zip(elements, lines):
        check_line(element, line)
    assert all(name not in e.attrib for e in elements[1].iter() for name in POSITION)
    assert position(next(root.iter(ALTO + "TextBlock"))) == [24, 742, 827, 921]
    # A page whose lines all lack a box: the block is the page.
    root = valid(schema, to_alto(doc(page(1, lines[1:3]))))
    assert position(next(root.iter(ALTO + "TextBlock"))) == [0, 0, 864, 1216]


def test_empty_pages_and_whitespace_lines(schema):
    blank = [Line("  ", BBox(1, 2, 30, 40), 0.5), Line("", None)]
    root = valid(schema, to_alto(doc(page(1, []), page(2, blank), page(3, [blank[0], Line("x", None), blank[1]]))))
    pages = list(root.iter(ALTO + "Page"))
    assert [len(list(p.find(ALTO + "PrintSpace"))) for p in pages] == [0, 0, 1]
    assert [s.get("CONTENT") for s in root.iter(ALTO + "String")] == ["x"]
    assert next(root.iter(ALTO + "TextLine")).get("ID") == "page_3_line_1"


def test_escaping_round_trips(schema):
    source = 'scans/Fish & "Chips" <1>; 100%\r\ncafé 東京\x01.png'
    root = valid(schema, to_alto(doc(page(1, TRICKY_LINES), source=source)))
    assert root.findtext(f"{ALTO}Description/{ALTO}sourceImageInformation/{ALTO}fileName") == xml_safe(source)
    contents = [[s.get("CONTENT") for s in strings(line)] for line in text_lines(root)]
    assert contents == [[xml_safe(w) for w in line.text.split()] for line in TRICKY_LINES]
    assert contents[0] == ["Fish", "&", "Chips", "<tag>", "12,50"]
    assert contents[1] == ["He", "said", '"hi"', "it's"]
    assert contents[4] == ["Thanks", "😀", "see", "you"]
    assert contents[5] == ["bell\ufffd", "nul\ufffd", "tab", "sep"]


def test_ids_unique_and_valid(schema):
    result = doc(page(1, receipt_lines() + TRICKY_LINES), page(2, receipt_lines()), page(10, TRICKY_LINES))
    root = valid(schema, to_alto(result))  # the schema checks xsd:ID syntax and uniqueness
    ids = [e.get("ID") for e in root.iter() if e.get("ID")]
    assert len(ids) == len(set(ids)) and not any(i[0].isdigit() for i in ids)
    assert "page_10_line_2_string_1" in ids


def test_schema_catches_a_broken_document(schema):
    """The validation is real: an ID starting with a digit or a String without CONTENT fails."""
    text = to_alto(doc(page(1, receipt_lines())))
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        valid(schema, text.replace('ID="page_1"', 'ID="1page"'))
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        valid(schema, text.replace(' CONTENT="[REG]"', ""))


def test_markdown_result_gives_empty_pages_without_raising(schema):
    md_page = PageResult(page=1, width=864, height=1216, dpi=None, truncated=False, markdown="# Receipt")
    root = valid(schema, to_alto(doc(md_page, task="md")))
    assert len(list(root.iter(ALTO + "Page"))) == 1 and text_lines(root) == []
