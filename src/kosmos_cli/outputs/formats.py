"""The output formats: which task writes which, their file suffixes, and rendering to bytes.

Text formats are pure functions of the result. The searchable PDF also needs the
input document (it adds a text layer to the original pages or embeds the image), so
every renderer takes the document too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..inputs.documents import Document
from ..results import DocumentResult
from . import text


@dataclass(frozen=True)
class RenderOptions:
    """What some formats need beyond the result: the PDF's image resolution and password."""

    image_dpi: int = 300
    password: str | None = None


@dataclass(frozen=True)
class OutputFormat:
    """One `--format`: its name, file suffix, the tasks that write it, and its renderer."""

    name: str
    suffix: str
    tasks: tuple[str, ...]
    render: Callable[[Document, DocumentResult, RenderOptions], bytes]
    # Formats whose documents cannot be concatenated on stdout (binary or one XML root each).
    one_per_stream: bool = False
    # Formats that can record a failed page (JSON: the page with its "error"); the others
    # leave failed pages out (the PDF keeps the page, without a text layer).
    records_failed_pages: bool = False

    def render_result(self, doc: Document, result: DocumentResult, options: RenderOptions) -> bytes:
        """`result` as this format's bytes; failed pages recorded or left out as the format can."""
        return self.render(doc, result if self.records_failed_pages else result.read_pages_only(), options)


def _utf8(render_text: Callable[[DocumentResult], str]) -> Callable[[Document, DocumentResult, RenderOptions], bytes]:
    return lambda doc, result, options: render_text(result).encode("utf-8")


def _hocr(doc: Document, result: DocumentResult, options: RenderOptions) -> bytes:
    from .hocr import to_hocr

    return to_hocr(result).encode("utf-8")


def _alto(doc: Document, result: DocumentResult, options: RenderOptions) -> bytes:
    from .alto import to_alto

    return to_alto(result).encode("utf-8")


def _pdf(doc: Document, result: DocumentResult, options: RenderOptions) -> bytes:
    from .pdf import render_pdf

    return render_pdf(doc, result, image_dpi=options.image_dpi, password=options.password)


FORMATS = {
    fmt.name: fmt
    for fmt in (
        OutputFormat("json", ".json", ("ocr", "md"), _utf8(text.to_json), records_failed_pages=True),
        OutputFormat("tsv", ".tsv", ("ocr",), _utf8(text.to_tsv)),
        OutputFormat("txt", ".txt", ("ocr",), _utf8(text.to_txt)),
        OutputFormat("md", ".md", ("md",), _utf8(text.to_markdown)),
        OutputFormat("pdf", ".pdf", ("ocr",), _pdf, one_per_stream=True),
        OutputFormat("hocr", ".hocr", ("ocr",), _hocr, one_per_stream=True),
        OutputFormat("alto", ".xml", ("ocr",), _alto, one_per_stream=True),
    )
}
OCR_FORMATS = tuple(name for name, fmt in FORMATS.items() if "ocr" in fmt.tasks)
MD_FORMATS = tuple(name for name, fmt in FORMATS.items() if "md" in fmt.tasks)
_BY_SUFFIX = {".json": "json", ".tsv": "tsv", ".txt": "txt", ".md": "md", ".pdf": "pdf", ".hocr": "hocr",
              ".html": "hocr", ".xml": "alto"}  # fmt: skip


def output_format(name: str, task: str) -> OutputFormat:
    """The format called `name`, checked against the task; raises UsageError otherwise."""
    fmt = FORMATS.get(name)
    if fmt is None or task not in fmt.tasks:
        writes = OCR_FORMATS if task == "ocr" else MD_FORMATS
        raise UsageError(f"--format {name}: '{task}' writes {', '.join(writes)}")
    return fmt


def format_for_path(path: Path) -> str:
    """The format a file name asks for by its suffix; raises UsageError for an unknown one."""
    try:
        return _BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(_BY_SUFFIX))
        raise UsageError(f"{path}: cannot tell the format from the suffix (known: {known}); pass format=") from None
