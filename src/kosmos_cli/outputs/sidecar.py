"""Bookkeeping for documents written with pages missing, so a re-run reads only those.

Next to such an output `a.json` lies `.a.json.failed-pages.json` (hidden, written
atomically): the pages that were read, at full precision, and the pages that failed.
A re-run reads the failed pages only, merges them with the stored ones and rewrites
the output; the sidecar is removed once the document is complete. Any format works
the same way, since the stored pages are the results themselves, not the output.

The sidecar is written before the output and removed after it, so a crash in
between leaves at worst a complete output with a stale sidecar (its pages are read
again) and never an incomplete output that counts as done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..results import BBox, DocumentResult, Line, PageResult, Unfinished
from .files import write_atomic

VERSION = 1


def sidecar_path(output: Path) -> Path:
    """Where the bookkeeping for `output` lives: a hidden file next to it."""
    return output.with_name(f".{output.name}.failed-pages.json")


def write_sidecar(output: Path, result: DocumentResult) -> None:
    """Record `result`'s read pages and failed pages next to `output` (atomically)."""
    record = {
        "kosmos25_failed_pages": VERSION,
        "source": result.source,
        "model": result.model,
        "task": result.task,
        "failed": {str(page.page): page.error for page in result.failed_pages},
        "done": [_page_record(page) for page in result.pages if page.error is None],
    }
    write_atomic(sidecar_path(output), json.dumps(record, ensure_ascii=False) + "\n")


def remove_sidecar(output: Path) -> None:
    """The document is complete: forget its failed pages."""
    try:
        os.unlink(sidecar_path(output))
    except FileNotFoundError:
        pass


def has_sidecar(output: Path) -> bool:
    """True when `output` is missing pages that a re-run should read."""
    return sidecar_path(output).is_file()


def read_sidecar(output: Path, task: str, model: str) -> Unfinished | None:
    """What an earlier run left for `output`; None when there is no sidecar or it
    cannot be used (unreadable, another version, task or model), so the document is
    read again in full."""
    try:
        record = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kosmos25_failed_pages") != VERSION:
        return None
    if record.get("task") != task or record.get("model") != model:
        return None
    try:
        retry = frozenset(int(number) for number in record["failed"])
        done = tuple(_page_from_record(page) for page in record["done"])
    except (KeyError, TypeError, ValueError):
        return None
    if not retry:
        return None
    return Unfinished(done=done, retry=retry)


def _page_record(page: PageResult) -> dict[str, Any]:
    # Unlike to_dict, keeps confidences unrounded so a resumed output equals a fresh one.
    return {
        "page": page.page,
        "width": page.width,
        "height": page.height,
        "dpi": page.dpi,
        "truncated": page.truncated,
        "looping": page.looping,
        "lines": [[line.text, line.bbox.to_list() if line.bbox else None, line.confidence] for line in page.lines],
        "markdown": page.markdown,
        "confidence": page.confidence,
    }


def _page_from_record(record: dict[str, Any]) -> PageResult:
    lines = tuple(Line(text, BBox(*box) if box else None, confidence) for text, box, confidence in record["lines"])
    return PageResult(
        page=int(record["page"]),
        width=int(record["width"]),
        height=int(record["height"]),
        dpi=record["dpi"],
        truncated=bool(record["truncated"]),
        looping=bool(record["looping"]),
        lines=lines,
        markdown=record["markdown"],
        confidence=record["confidence"],
    )
