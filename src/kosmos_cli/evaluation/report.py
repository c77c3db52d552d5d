"""An EvalReport as a JSON report, a TSV report (one row per page), or a table for people."""

from __future__ import annotations

import json
from typing import TextIO

from .metrics import PageScore
from .run import EvalReport, PageEval

TSV_KEYS = ("cer", "wer", "wer_unordered", "line_precision", "line_recall", "line_f1", "mean_iou", "line_cer",
            "char_edits", "chars", "word_edits", "words")  # fmt: skip
# More pages than this: the table shows the worst ones and says how many it left out.
TABLE_ROWS = 20
DIFFERENCES_SHOWN = 5


def to_json(report: EvalReport) -> str:
    """`{"summary": {...}, "pages": [...], "failures": [...]}` (plus "baseline" with --baseline)."""
    return json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"


def _tsv_value(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def to_tsv(report: EvalReport) -> str:
    """A header, then one row per scored page: source, page, the metrics (empty where not
    defined), and with a baseline the same metrics again prefixed `baseline_`."""
    keys = [key for key in TSV_KEYS if report.task == "ocr" or not key.startswith(("line_", "mean_"))]
    header = ["source", "page", *keys]
    if report.baseline_model is not None:
        header += [f"baseline_{key}" for key in keys]
    rows = ["\t".join(header)]
    for page in report.pages:
        values = page.result.score.to_dict()
        row = [page.source, page.page, *(values.get(key) for key in keys)]
        if page.baseline is not None:
            base = page.baseline.score.to_dict()
            row += [base.get(key) for key in keys]
        rows.append("\t".join(_tsv_value(value) for value in row))
    return "".join(row + "\n" for row in rows)


def _sort_key(page: PageEval) -> tuple[float, str, int]:
    value = page.result.score.chars.value
    return (-(value if value is not None else float("inf")), page.source, page.page)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cells(score: PageScore, lines: bool) -> list[str]:
    cells = [_percent(score.chars.value), _percent(score.words.value), _percent(score.words_unordered.value)]
    if lines:
        match = score.lines
        cells += [_fraction(match.f1), _fraction(match.mean_iou)] if match else ["n/a", "n/a"]
    return cells


def print_table(report: EvalReport, stream: TextIO, terminal: bool = False) -> None:
    """Per-page rows (worst first; the worst `TABLE_ROWS` of a large set), the totals, and the
    first differing line of the worst pages."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False, width=None if terminal else 160, force_terminal=terminal)
    if not report.pages:
        console.print("no page was scored", markup=False)
        return
    lines = report.task == "ocr" and any(page.result.score.lines is not None for page in report.pages)
    names = ["CER", "WER", "WER (any order)"] + (["line F1", "mean IoU"] if lines else [])
    title = f"{report.model} on {len(report.pages)} page{'s' * (len(report.pages) != 1)} ({report.task})"
    table = Table(title=title, title_justify="left", show_footer=True)
    table.add_column("source", footer="total")
    table.add_column("page", justify="right")
    totals = _cells(report.summary, lines)
    for name, total in zip(names, totals):
        table.add_column(name, justify="right", footer=total)
    if report.baseline_model is not None:
        for name, total in zip(names, _cells(report.baseline_summary, lines)):
            table.add_column(f"baseline {name}", justify="right", footer=total)
    ranked = sorted(report.pages, key=_sort_key)
    for page in ranked[:TABLE_ROWS]:
        cells = _cells(page.result.score, lines)
        if page.baseline is not None:
            cells += _cells(page.baseline.score, lines)
        flags = [flag for flag, on in (("truncated", page.result.truncated), ("looping", page.result.looping)) if on]
        table.add_row(page.source, f"{page.page}{' (' + ', '.join(flags) + ')' if flags else ''}", *cells)
    console.print(table, markup=False)
    if len(ranked) > TABLE_ROWS:
        console.print(f"({len(ranked) - TABLE_ROWS} better pages not shown; --report FILE has them all)", markup=False)
    if report.baseline_model is not None:
        console.print(f"baseline: {report.baseline_model}", markup=False)
    shown = [page for page in ranked if page.result.difference is not None][:DIFFERENCES_SHOWN]
    if shown:
        console.print("first differing line of the worst pages:", markup=False)
    for page in shown:
        difference = page.result.difference
        console.print(f"  {page.source} page {page.page}, line {difference.line}:", markup=False)
        console.print(f"    predicted: {difference.predicted!r}", markup=False)
        console.print(f"    truth:     {difference.truth!r}", markup=False)


def write_report(report: EvalReport, path) -> None:
    """Write the report atomically, as JSON or TSV by the file's suffix."""
    from pathlib import Path

    from ..outputs.files import write_atomic

    path = Path(path)
    write_atomic(path, to_tsv(report) if path.suffix.lower() == ".tsv" else to_json(report))
