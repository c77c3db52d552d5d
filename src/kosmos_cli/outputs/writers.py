"""Writers: results -> text (pure functions) -> files or stdout.

Files are written atomically: to a temporary file in the same folder, then renamed
into place, so a reader never sees a half-written file and a crash leaves nothing
partial behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from ..errors import OutputFailed
from ..inputs.documents import Document
from ..results import DocumentResult

OCR_FORMATS = ("json", "tsv", "txt")
MD_FORMATS = ("md", "json")
SUFFIXES = {"json": ".json", "tsv": ".tsv", "txt": ".txt", "md": ".md"}
TSV_COLUMNS = ("source", "page", "x0", "y0", "x1", "y1", "text")
PAGE_BREAK = "\f"


def to_json(result: DocumentResult, indent: int | None = 2) -> str:
    """One JSON document; `indent=None` gives a single line (JSON Lines)."""
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=indent) + "\n"


def _escape_tsv(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def to_tsv(result: DocumentResult, header: bool = True) -> str:
    """Tab-separated rows, one per line; empty box fields for a line without a box."""
    rows = ["\t".join(TSV_COLUMNS)] if header else []
    for page in result.pages:
        for line in page.lines:
            box = [str(v) for v in line.bbox.to_list()] if line.bbox else ["", "", "", ""]
            rows.append("\t".join([_escape_tsv(result.source), str(page.page), *box, _escape_tsv(line.text)]))
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


def render(result: DocumentResult, fmt: str) -> str:
    """Text of one document's output file in the given format."""
    if fmt == "json":
        return to_json(result)
    if fmt == "tsv":
        return to_tsv(result)
    if fmt == "txt":
        return to_txt(result)
    return to_markdown(result)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` via a temporary file in the same folder and a rename."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename.

    Raises OutputFailed (nothing left behind) if the folder cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise OutputFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        raise OutputFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def check_folder_writable(folder: Path) -> None:
    """Raise OutputFailed now, before the model is loaded, if `folder` cannot take files."""
    probe = folder / ".kosmos25-write-test"
    write_atomic(probe, "")
    probe.unlink()


class DirectorySink:
    """Writes one file per input under a folder, mirroring the inputs' sub-folders."""

    def __init__(self, folder: Path, fmt: str, overwrite: bool = False) -> None:
        self.folder = folder
        self.fmt = fmt
        self.overwrite = overwrite

    def path_for(self, doc: Document) -> Path:
        return self.folder / (str(doc.output_name) + SUFFIXES[self.fmt])

    def is_done(self, doc: Document) -> bool:
        """True when this input's complete output exists (outputs are atomic) and may be kept."""
        return not self.overwrite and self.path_for(doc).is_file()

    def write(self, doc: Document, result: DocumentResult) -> Path:
        path = self.path_for(doc)
        write_atomic(path, render(result, self.fmt))
        return path


class StdoutSink:
    """Streams results to stdout: JSON Lines, one TSV header, plain text or markdown."""

    def __init__(self, fmt: str, stream: TextIO | None = None, several: bool = False) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stdout
        self.several = several
        self._wrote_header = False

    def is_done(self, doc: Document) -> bool:
        return False

    def write(self, doc: Document, result: DocumentResult) -> None:
        if self.fmt == "json":
            text = to_json(result, indent=None)
        elif self.fmt == "tsv":
            text = to_tsv(result, header=not self._wrote_header)
            self._wrote_header = True
        elif self.fmt == "md" and self.several:
            text = f"<!-- source: {result.source} -->\n\n{to_markdown(result)}\n"
        else:
            text = render(result, self.fmt)
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            raise OutputFailed("stdout closed (broken pipe)") from None
