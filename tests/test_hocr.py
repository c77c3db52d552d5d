"""hOCR writer tests: well-formed XHTML, boxes as in the JSON, estimated words, escaping.

Also the word-box estimation in outputs/words.py, which the ALTO writer shares.
"""

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from urllib.parse import unquote

from kosmos_cli import __version__
from kosmos_cli.outputs.hocr import to_hocr, wconf
from kosmos_cli.outputs.words import estimate_words, xml_safe
from kosmos_cli.outputs.text import to_json
from kosmos_cli.parsing import parse_ocr
from kosmos_cli.results import BBox, DocumentResult, Line, PageResult
from test_parsing import RECEIPT_OCR

XHTML = "{http://www.w3.org/1999/xhtml}"

# Real KOSMOS-2.5 lines with text that needs escaping or is not ASCII.
TRICKY_LINES = (
    Line("Fish & Chips <tag> 12,50", BBox(40, 100, 600, 140), 0.91),
    Line('He said "hi" it\'s', BBox(40, 150, 500, 190), 0.5),
    Line("Crème brûlée 5 €", BBox(40, 200, 420, 240), None),
    Line("東京都 合計 ¥1,200", BBox(40, 250, 640, 300), 0.999),
    Line("Thanks 😀 see you", BBox(40, 310, 520, 350), 0.0),
    Line("bell\x07 nul\x00 tab\tsep", BBox(40, 360, 520, 400), 1.0),
)


def receipt_lines() -> tuple[Line, ...]:
    """The receipt as the parser reads it, with a confidence on every other line."""
    lines = parse_ocr(RECEIPT_OCR, (864, 1216), (864, 1216))
    return tuple(replace(line, confidence=0.9 + i / 200) if i % 2 == 0 else line for i, line in enumerate(lines))


def page(number: int, lines, dpi=None, width=864, height=1216) -> PageResult:
    return PageResult(page=number, width=width, height=height, dpi=dpi, truncated=False, lines=tuple(lines))


def doc(*pages: PageResult, source="scans/receipt.png", task="ocr") -> DocumentResult:
    return DocumentResult(source=source, model="microsoft/kosmos-2.5", task=task, pages=pages)


def parse(text: str) -> ET.Element:
    """Parse as XML: fails unless the document is well-formed."""
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    return ET.fromstring(text.encode("utf-8"))


def props(element: ET.Element) -> dict[str, str]:
    """The hOCR properties of an element's title: name -> rest (image names never hold ';')."""
    title = element.get("title")
    if title is None:
        return {}
    return dict(part.split(" ", 1) for part in title.split("; "))


def box(element: ET.Element) -> list[int] | None:
    value = props(element).get("bbox")
    return [int(v) for v in value.split()] if value else None


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == cls]


def words_of(line: ET.Element) -> list[ET.Element]:
    return [e for e in line if e.get("class") == "ocrx_word"]


def check_words(line_el: ET.Element, text: str) -> None:
    """Words spell the line's text split on whitespace; their boxes lie inside the line's, in order."""
    words = words_of(line_el)
    assert [w.text for w in words] == [xml_safe(t) for t in text.split()]
    assert "".join(line_el.itertext()) == " ".join(xml_safe(t) for t in text.split())
    line_box = box(line_el)
    if line_box is None:
        assert all(box(w) is None for w in words)
        return
    x0, y0, x1, y1 = line_box
    boxes = [box(w) for w in words]
    for wx0, wy0, wx1, wy1 in boxes:
        assert x0 <= wx0 <= wx1 <= x1 and (wy0, wy1) == (y0, y1)
    for left, right in zip(boxes, boxes[1:]):
        assert left[2] <= right[0]  # ordered, no overlap
    assert boxes[0][0] == x0 and boxes[-1][2] == x1  # the words span the line


def test_receipt_lines_and_boxes_match_the_json():
    result = doc(page(1, receipt_lines()))
    root = parse(to_hocr(result))
    json_lines = json.loads(to_json(result))["pages"][0]["lines"]
    lines = by_class(root, "ocr_line")
    assert len(lines) == len(json_lines) == 14
    for element, expected in zip(lines, json_lines):
        assert box(element) == expected["bbox"]
        check_words(element, expected["text"])
    assert [w.text for w in words_of(lines[1])] == ["[REG]", "BLACK", "SAKURA"]
    # Lines sit in one paragraph in one content area, boxed by all lines together.
    (carea,) = by_class(root, "ocr_carea")
    (par,) = by_class(carea, "ocr_par")
    assert par.tag == XHTML + "p" and list(par) == lines
    assert box(carea) == box(par) == [17, 569, 836, 1108]


def test_word_confidence_on_lines_and_words():
    root = parse(to_hocr(doc(page(1, receipt_lines() + TRICKY_LINES))))
    lines = by_class(root, "ocr_line")
    expected = [wconf(0.9 + i / 200) if i % 2 == 0 else None for i in range(14)] + [91, 50, None, 100, 0, 100]
    for element, conf in zip(lines, expected):
        line_conf = props(element).get("x_wconf")
        assert line_conf == (str(conf) if conf is not None else None)
        assert {props(w).get("x_wconf") for w in words_of(element)} == {line_conf}
    assert props(lines[0])["x_wconf"] == "90" and props(lines[2])["x_wconf"] == "91"


def test_wconf_is_an_integer_percentage():
    assert [wconf(c) for c in (None, 0.0, 0.004, 0.5, 0.934, 0.996, 1.0, 1.2, -0.1)] == [
        None, 0, 0, 50, 93, 100, 100, 100, 0,
    ]  # fmt: skip


def test_head_metadata():
    root = parse(to_hocr(doc(page(1, receipt_lines()), page(2, []))))
    assert root.tag == XHTML + "html"
    metas = {m.get("name"): m.get("content") for m in root.iter(XHTML + "meta") if m.get("name")}
    assert metas["ocr-system"] == f"kosmos25 {__version__}"
    capabilities = ["ocr_page", "ocr_carea", "ocr_par", "ocr_line", "ocrx_word", "ocrp_wconf"]
    assert metas["ocr-capabilities"].split() == capabilities
    assert metas["ocr-number-of-pages"] == "2"
    emitted = {e.get("class") for e in root.iter() if (e.get("class") or "").startswith("ocr")}
    assert emitted <= set(metas["ocr-capabilities"].split())
    assert root.find(f"{XHTML}head/{XHTML}title").text == "scans/receipt.png"


def test_pages_ppageno_is_zero_based_and_scan_res_only_for_pdf_pages():
    # A PDF read with --pages 3,7 at 200 dpi, and an image.
    pdf = doc(page(3, receipt_lines(), dpi=200), page(7, [], dpi=200, width=1700, height=2200), source="a.pdf")
    pages = by_class(parse(to_hocr(pdf)), "ocr_page")
    assert [p.tag for p in pages] == [XHTML + "div"] * 2
    assert [p.get("id") for p in pages] == ["page_3", "page_7"]
    assert [props(p)["ppageno"] for p in pages] == ["2", "6"]
    assert [props(p)["scan_res"] for p in pages] == ["200 200", "200 200"]
    assert [box(p) for p in pages] == [[0, 0, 864, 1216], [0, 0, 1700, 2200]]
    assert props(pages[0])["image"] == '"a.pdf"'
    (image_page,) = by_class(parse(to_hocr(doc(page(1, receipt_lines())))), "ocr_page")
    assert props(image_page)["ppageno"] == "0" and "scan_res" not in props(image_page)
    assert box(image_page) == [0, 0, 864, 1216]


def test_empty_page_has_no_content_area():
    root = parse(to_hocr(doc(page(1, []), page(2, [Line("   ", BBox(1, 2, 3, 4)), Line("", None)]))))
    pages = by_class(root, "ocr_page")
    assert len(pages) == 2 and all(list(p) == [] for p in pages)
    assert by_class(root, "ocr_line") == [] and by_class(root, "ocr_carea") == []


def test_escaping_round_trips():
    source = 'scans/Fish & "Chips" <1>; 100%\tcafé 東京.png'
    text = to_hocr(doc(page(1, TRICKY_LINES), source=source))
    root = parse(text)
    lines = by_class(root, "ocr_line")
    assert len(lines) == len(TRICKY_LINES)
    for element, line in zip(lines, TRICKY_LINES):
        assert box(element) == line.bbox.to_list()
        check_words(element, line.text)
    assert [w.text for w in words_of(lines[0])] == ["Fish", "&", "Chips", "<tag>", "12,50"]
    assert [w.text for w in words_of(lines[1])] == ["He", "said", '"hi"', "it's"]
    assert [w.text for w in words_of(lines[3])] == ["東京都", "合計", "¥1,200"]
    assert [w.text for w in words_of(lines[4])] == ["Thanks", "😀", "see", "you"]
    # Control characters XML cannot hold become U+FFFD; the tab separates words.
    assert [w.text for w in words_of(lines[5])] == ["bell\ufffd", "nul\ufffd", "tab", "sep"]
    assert "\x00" not in text and "\x07" not in text
    # The source: as it is in <title>, percent-encoded in the image property (printable ASCII, no '"').
    assert root.find(f"{XHTML}head/{XHTML}title").text == source
    image = props(by_class(root, "ocr_page")[0])["image"]
    assert re.fullmatch(r'"[\x20-\x7e]+"', image) and '"' not in image[1:-1] and ";" not in image
    assert unquote(image[1:-1]) == source


def test_control_characters_and_surrogates_in_the_source_name():
    source = "bad\x01name\udcff.png"
    root = parse(to_hocr(doc(page(1, receipt_lines()), source=source)))
    assert root.find(f"{XHTML}head/{XHTML}title").text == "bad\ufffdname\ufffd.png"
    assert unquote(props(by_class(root, "ocr_page")[0])["image"][1:-1]) == "bad\ufffdname\ufffd.png"


def test_lines_without_a_box_keep_their_text_and_have_no_bbox():
    lines = (
        Line("Sub Total 45,455", BBox(31, 742, 820, 781), 0.8),
        Line("SAKURA 1 x", None, 0.42),
        Line("45,455", None),
        Line("Total 50,000", BBox(24, 872, 827, 921), 0.97),
    )
    root = parse(to_hocr(doc(page(1, lines))))
    elements = by_class(root, "ocr_line")
    assert ["".join(e.itertext()) for e in elements] == [line.text for line in lines]
    assert [box(e) for e in elements] == [[31, 742, 820, 781], None, None, [24, 872, 827, 921]]
    assert props(elements[1]) == {"x_wconf": "42"} and elements[2].get("title") is None
    for element, line in zip(elements, lines):
        check_words(element, line.text)
    assert box(by_class(root, "ocr_carea")[0]) == [24, 742, 827, 921]  # the boxed lines only
    # A page whose lines all lack a box: the content area is the page.
    root = parse(to_hocr(doc(page(1, lines[1:3]))))
    assert box(by_class(root, "ocr_carea")[0]) == box(by_class(root, "ocr_par")[0]) == [0, 0, 864, 1216]


def test_ids_are_unique():
    root = parse(to_hocr(doc(page(1, receipt_lines() + TRICKY_LINES), page(2, receipt_lines(), dpi=300))))
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert len(ids) == len(set(ids)) and "word_2_2_3" in ids and "line_1_20" in ids


def test_markdown_result_gives_empty_pages_without_raising():
    md_page = PageResult(page=1, width=864, height=1216, dpi=None, truncated=False, markdown="# Receipt")
    root = parse(to_hocr(doc(md_page, task="md")))
    assert len(by_class(root, "ocr_page")) == 1 and by_class(root, "ocr_line") == []


# Word-box estimation (outputs/words.py), shared with the ALTO writer.


def _estimate(text: str, x0: int, x1: int) -> list[tuple[str, int, int]]:
    return [(w.text, w.bbox.x0, w.bbox.x1) for w in estimate_words(Line(text, BBox(x0, 10, x1, 30)))]


def test_words_share_the_line_box_by_characters_spaces_included():
    assert _estimate("ab cd", 0, 50) == [("ab", 0, 20), ("cd", 30, 50)]
    assert _estimate("Total 50,000", 24, 827) == [("Total", 24, 359), ("50,000", 426, 827)]
    assert _estimate("one", 5, 9) == [("one", 5, 9)]
    # Leading and trailing whitespace is not part of the box; runs of spaces count.
    assert _estimate("  ab   c ", 0, 60) == [("ab", 0, 20), ("c", 50, 60)]
    # Characters above U+FFFF count once; tabs and no-break spaces separate words.
    assert _estimate("😀😀 x", 0, 40) == [("😀😀", 0, 20), ("x", 30, 40)]
    assert _estimate("a\tb\u00a0c", 0, 50) == [("a", 0, 10), ("b", 20, 30), ("c", 40, 50)]


def test_words_of_lines_without_box_or_text():
    assert estimate_words(Line("  \t ", BBox(0, 0, 10, 10))) == ()
    assert estimate_words(Line("", None)) == ()
    words = estimate_words(Line(" a  b ", None))
    assert [(w.text, w.bbox) for w in words] == [("a", None), ("b", None)]


def test_word_boxes_ordered_inside_the_line_for_narrow_lines():
    for width in range(0, 40):
        words = estimate_words(Line("a bb ccc dddd e", BBox(100, 0, 100 + width, 9)))
        edges = [edge for w in words for edge in (w.bbox.x0, w.bbox.x1)]
        assert edges == sorted(edges) and edges[0] == 100 and edges[-1] == 100 + width
