"""Text formats: results -> JSON, TSV, plain text, markdown. Pure functions."""

from __future__ import annotations

import json

from ..results import DocumentResult

TSV_COLUMNS = ("source", "page", "x0", "y0", "x1", "y1", "confidence", "text")
PAGE_BREAK = "\f"


def to_json(result: DocumentResult, indent: int | None = 2) -> str:
    """One JSON document; `indent=None` gives a single line (JSON Lines)."""
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=indent) + "\n"


def _escape_tsv(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def to_tsv(result: DocumentResult, header: bool = True) -> str:
    """Tab-separated rows, one per line; empty fields for a missing box or confidence."""
    rows = ["\t".join(TSV_COLUMNS)] if header else []
    for page in result.pages:
        for line in page.lines:
            box = [str(v) for v in line.bbox.to_list()] if line.bbox else ["", "", "", ""]
            confidence = f"{line.confidence:.4f}" if line.confidence is not None else ""
            rows.append("\t".join([_escape_tsv(result.source), str(page.page), *box, confidence, _escape_tsv(line.text)]))
    return "".join(row + "\n" for row in rows)


def to_txt(result: DocumentResult) -> str:
    """The lines' text, one per line; pages separated by a form feed (like pdftotext)."""
    pages = ["".join(line.text + "\n" for line in page.lines) for page in result.pages]
    return PAGE_BREAK.join(pages)


def to_markdown(result: DocumentResult) -> str:
    """The pages' markdown; several pages are separated by a blank line and `<!-- page N -->`."""
    if len(result.pages) == 1:
        return (result.pages[0].markdown or "") + "\n"
    parts = [f"<!-- page {page.page} -->\n\n{page.markdown or ''}\n" for page in result.pages]
    return "\n".join(parts)
