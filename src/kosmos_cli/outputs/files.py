"""Where results go: one file per input under a folder, or stdout.

Files are written atomically: to a temporary file in the same folder, then renamed
into place, so a reader never sees a half-written file and a crash leaves nothing
partial behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError, OutputFailed
from ..inputs.documents import Document
from ..results import DocumentResult, Unfinished
from .formats import OutputFormat, RenderOptions
from .text import to_json, to_markdown, to_tsv

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

    def __init__(self, folder: Path, fmt: OutputFormat, options: RenderOptions, overwrite: bool = False) -> None:
        self.folder = folder
        self.fmt = fmt
        self.options = options
        self.overwrite = overwrite

    def path_for(self, doc: Document) -> Path:
        return self.folder / (str(doc.output_name) + self.fmt.suffix)

    def is_done(self, doc: Document) -> bool:
        """True when this input's complete output exists (outputs are atomic) and may be kept.

        An output written with pages missing has a sidecar and is not done."""
        from .sidecar import has_sidecar  # here, not at the top: sidecar writes through this module

        path = self.path_for(doc)
        return not self.overwrite and path.is_file() and not has_sidecar(path)

    def unfinished(self, doc: Document, task: str, model: str) -> Unfinished | None:
        """The pages an earlier run read and those it failed on, if it left this input
        incomplete; None to read it in full."""
        from .sidecar import read_sidecar

        return None if self.overwrite else read_sidecar(self.path_for(doc), task, model)

    def write(self, doc: Document, result: DocumentResult) -> Path:
        from .sidecar import remove_sidecar, write_sidecar

        path = self.path_for(doc)
        data = self.fmt.render_result(doc, result, self.options)
        if result.failed_pages:
            write_sidecar(path, result)  # first: the output never counts as done while pages are missing
            write_atomic_bytes(path, data)
        else:
            write_atomic_bytes(path, data)
            remove_sidecar(path)
        return path

    def failed(self, doc: Document, error: InputError) -> None:
        """Nothing to write: the reporter tells the user, and no file means a re-run retries it."""


class StdoutSink:
    """Streams results to stdout: JSON Lines, one TSV header, plain text, markdown, or one
    document of a format that cannot be concatenated (PDF, hOCR, ALTO)."""

    def __init__(self, fmt: OutputFormat, options: RenderOptions, stream: BinaryIO | None = None, several: bool = False) -> None:
        self.fmt = fmt
        self.options = options
        self.stream = stream or sys.stdout.buffer
        self.several = several
        self._wrote_header = False

    def is_done(self, doc: Document) -> bool:
        return False

    def unfinished(self, doc: Document, task: str, model: str) -> Unfinished | None:
        return None

    def failed(self, doc: Document, error: InputError) -> None:
        """Nothing to write: the reporter tells the user on stderr."""

    def write(self, doc: Document, result: DocumentResult) -> None:
        if not self.fmt.records_failed_pages:
            result = result.read_pages_only()
        if self.fmt.name == "json":
            data = to_json(result, indent=None).encode("utf-8")
        elif self.fmt.name == "tsv":
            data = to_tsv(result, header=not self._wrote_header).encode("utf-8")
            self._wrote_header = True
        elif self.fmt.name == "md" and self.several:
            data = f"<!-- source: {result.source} -->\n\n{to_markdown(result)}\n".encode("utf-8")
        else:
            data = self.fmt.render(doc, result, self.options)
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            raise OutputFailed("stdout closed (broken pipe)") from None
