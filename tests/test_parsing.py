"""Parser tests on real microsoft/kosmos-2.5 outputs (../shared/reference/kosmos25-facts.md)."""

from kosmos_cli.parsing import clean_markdown, parse_ocr, scale_box
from kosmos_cli.results import BBox, Line

# receipt_00008.png, bf16, greedy, recorded by the transformers integration tests.
RECEIPT_OCR = (
    "<bbox><x_53><y_573><x_69><y_606></bbox>1\n"
    "<bbox><x_79><y_573><x_464><y_611></bbox>[REG] BLACK SAKURA\n"
    "<bbox><x_690><y_569><x_810><y_606></bbox>45,455\n"
    "<bbox><x_53><y_614><x_69><y_648></bbox>1\n"
    "<bbox><x_79><y_614><x_468><y_651></bbox>COOKIE DOH SAUCES\n"
    "<bbox><x_788><y_609><x_812><y_642></bbox>0\n"
    "<bbox><x_50><y_658><x_69><y_693></bbox>1\n"
    "<bbox><x_79><y_658><x_358><y_693></bbox>NATA DE COCO\n"
    "<bbox><x_790><y_652><x_814><y_683></bbox>0\n"
    "<bbox><x_31><y_742><x_820><y_781></bbox>Sub Total 45,455\n"
    "<bbox><x_27><y_781><x_822><y_827></bbox>PB1 (10%) 4,545\n"
    "<bbox><x_27><y_826><x_824><y_872></bbox>Rounding 0\n"
    "<bbox><x_24><y_872><x_827><y_921></bbox>Total 50,000\n"
    "<bbox><x_17><y_1056><x_836><y_1108></bbox>Card Payment 50,000\n"
)
RECEIPT_MD = (
    "- **1 \\[REG\\] BLACK SAKURA** 45,455\n"
    "- **1 COOKIE DOH SAUCES** 0\n"
    "- **1 NATA DE COCO** 0\n"
    "- **Sub Total** 45,455\n"
    "- **PB1 (10%)** 4,545\n"
    "- **Rounding** 0\n"
    "- **Total** **50,000**\n"
    "\n"
    "Card Payment 50,000\n"
)


def test_receipt_lines_and_texts_in_order():
    lines = parse_ocr(RECEIPT_OCR, (864, 1216), (864, 1216))
    assert [line.text for line in lines] == [
        "1", "[REG] BLACK SAKURA", "45,455", "1", "COOKIE DOH SAUCES", "0", "1", "NATA DE COCO", "0",
        "Sub Total 45,455", "PB1 (10%) 4,545", "Rounding 0", "Total 50,000", "Card Payment 50,000",
    ]  # fmt: skip
    assert lines[1].bbox == BBox(79, 573, 464, 611)
    assert lines[-1].bbox == BBox(17, 1056, 836, 1108)


def test_boxes_rescaled_by_each_pages_own_size():
    # Resized 864x1216 from an original twice as wide and 1.5 times as tall.
    lines = parse_ocr(RECEIPT_OCR, (864, 1216), (1728, 1824))
    assert lines[1].bbox == BBox(158, 860, 928, 916)  # 573*1.5=859.5 -> 860, 611*1.5=916.5 -> 916 (to even)
    assert lines[-1].bbox == BBox(34, 1584, 1672, 1662)


def test_boxes_clipped_to_the_page():
    # The model may point past the resized image; boxes are clipped to the page.
    lines = parse_ocr(RECEIPT_OCR, (800, 1000), (800, 1000))
    for line in lines:
        assert line.bbox is None or (0 <= line.bbox.x0 < line.bbox.x1 <= 800 and 0 <= line.bbox.y0 < line.bbox.y1 <= 1000)
    assert lines[-2].bbox == BBox(24, 872, 800, 921)  # x1=827 clipped to 800
    # "Card Payment" starts below the clipped page bottom: its box is gone, its text stays.
    assert lines[-1] == Line("Card Payment 50,000", None)


def test_degenerate_and_malformed_boxes_keep_their_text():
    raw = (
        "<bbox><x_90><y_90><x_40><y_120></bbox>reversed x\n"
        "<bbox><x_10><y_50><x_40><y_50></bbox>flat\n"
        "<bbox><x_10><y_20></bbox>half a box\n"
        "no box at all\n"
        "<bbox><x_1><y_2><x_3><y_4></bbox>ok\n"
        "<bbox><x_5><y_6>"
    )
    lines = parse_ocr(raw, (100, 100), (100, 100))
    assert lines == (
        Line("reversed x", None),
        Line("flat", None),
        Line("half a box", None),
        Line("no box at all", None),
        Line("ok", BBox(1, 2, 3, 4)),
    )


def test_line_without_newline_between_boxes_and_prompt_prefix():
    raw = "<ocr><bbox><x_0><y_0><x_10><y_10></bbox>A<bbox><x_20><y_0><x_30><y_10></bbox>B"
    assert parse_ocr(raw, (100, 100), (200, 100)) == (
        Line("A", BBox(0, 0, 20, 10)),
        Line("B", BBox(40, 0, 60, 10)),
    )


def test_empty_output_has_no_lines():
    assert parse_ocr("", (16, 16), (16, 16)) == ()


def test_scale_box_rejects_box_outside_page():
    assert scale_box((1100, 10, 1200, 20), (1000, 1000), (800, 800)) is None


def test_markdown_kept_as_is_without_prompt():
    assert clean_markdown("<md>" + RECEIPT_MD) == RECEIPT_MD.rstrip("\n")
    assert "\\[REG\\]" in clean_markdown(RECEIPT_MD)


def test_markdown_with_html_table_is_untouched():
    raw = "<table><tr><td>Total</td><td>50,000</td></tr></table>\n"
    assert clean_markdown(raw) == raw.rstrip("\n")


def test_confidences_follow_their_box_segments():
    # One value per part starting at <bbox>, plus the (empty) part before the first box.
    confidences = [None] + [i / 100 for i in range(1, 15)]
    lines = parse_ocr(RECEIPT_OCR, (864, 1216), (864, 1216), confidences)
    assert [line.confidence for line in lines] == confidences[1:]
    assert lines[1].to_dict() == {"text": "[REG] BLACK SAKURA", "bbox": [79, 573, 464, 611], "confidence": 0.02}


def test_confidences_that_do_not_line_up_are_dropped_not_shifted():
    lines = parse_ocr(RECEIPT_OCR, (864, 1216), (864, 1216), [0.5] * 3)
    assert all(line.confidence is None for line in lines)
    assert "confidence" not in lines[0].to_dict()
