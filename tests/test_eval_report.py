"""Scoring a page and writing the report: pure functions on hand-made records (no model)."""

from __future__ import annotations

import io
import json

from kosmos_cli.evaluation.groundtruth import PageTruth
from kosmos_cli.evaluation.report import TABLE_ROWS, print_table, to_json, to_tsv
from kosmos_cli.evaluation.run import EvalReport, Failure, PageEval
from kosmos_cli.evaluation.scoring import score_page
from kosmos_cli.results import BBox, Line, PageResult

TRUTH = PageTruth((("Total 12.50", BBox(0, 0, 100, 20)), ("Card", BBox(0, 30, 100, 50))))


def predicted(*texts: str, truncated: bool = False) -> PageResult:
    boxes = [BBox(0, 0, 100, 20), BBox(0, 30, 100, 50)]
    return PageResult(1, 200, 100, None, truncated, lines=tuple(Line(t, b) for t, b in zip(texts, boxes)))


def test_score_page_and_first_difference():
    result = score_page(predicted("Total 12.50", "Cart", truncated=True), TRUTH)
    assert (result.score.chars.edits, result.score.chars.length) == (1, 16)
    assert result.difference.to_dict() == {"line": 2, "predicted": "Cart", "truth": "Card"}
    assert result.truncated and result.to_dict()["truncated"] is True
    markdown = score_page(PageResult(1, 9, 9, None, False, markdown="# Hi\n"), PageTruth(markdown="# Hi", boxes=False))
    assert markdown.score.chars.edits == 0 and markdown.score.lines is None and markdown.difference is None


def report(pages: int = 2) -> EvalReport:
    good = score_page(predicted("Total 12.50", "Card"), TRUTH)
    bad = score_page(predicted("Total 12.80", "Cart", truncated=True), TRUTH)
    records = [PageEval("a.pdf", n, "a.json", bad if n == 2 else good) for n in range(1, pages + 1)]
    return EvalReport("ocr", "m", tuple(records), (Failure("b.png", None, "b.png: no ground truth found"),))


def test_json_and_tsv_reports():
    data = json.loads(to_json(report()))
    assert set(data) == {"summary", "pages", "failures"}
    summary = data["summary"]
    assert summary["pages"] == 2 and summary["failed"] == 1
    assert (summary["char_edits"], summary["chars"]) == (2, 32)  # totals of edits over totals of lengths
    assert {"cer", "wer", "wer_unordered", "line_precision", "line_recall", "line_f1", "mean_iou"} <= set(summary)
    assert [(p["source"], p["page"]) for p in data["pages"]] == [("a.pdf", 1), ("a.pdf", 2)]
    assert data["failures"] == [{"source": "b.png", "page": None, "error": "b.png: no ground truth found"}]
    rows = [row.split("\t") for row in to_tsv(report()).splitlines()]
    assert rows[0][:3] == ["source", "page", "cer"] and len(rows) == 3
    assert rows[2][:3] == ["a.pdf", "2", str(round(2 / 16, 6))]


def test_table_worst_first_with_flags_and_differences():
    out = io.StringIO()
    print_table(report(TABLE_ROWS + 5), out)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if "a.pdf" in line and "│" in line]
    assert "2 (truncated)" in rows[0] and len(rows) == TABLE_ROWS
    assert "(5 better pages not shown; --report FILE has them all)" in text
    assert "a.pdf page 2, line 1:" in text and "predicted: 'Total 12.80'" in text
