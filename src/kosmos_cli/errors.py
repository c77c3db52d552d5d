"""Typed errors raised by the library; only the CLI turns them into exit codes.

Each class is one kind of failure and carries the exit code the CLI uses for it.
Per-input failures (`InputError` and subclasses) do not stop a run: the run goes on
with the other inputs and exits with `ExitCode.SOME_FAILED`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    MODEL_UNAVAILABLE = 3
    OUTPUT_FAILED = 4
    INTERRUPTED = 130


class KosmosError(Exception):
    """Base class: a failure with a one-line (or one-paragraph) message for the user."""

    exit_code: ExitCode = ExitCode.SOME_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(KosmosError):
    """An option or argument the user gave is invalid."""

    exit_code = ExitCode.USAGE


class ModelUnavailable(KosmosError):
    """The model, or a library or device needed to run it, cannot be loaded."""

    exit_code = ExitCode.MODEL_UNAVAILABLE


class OutputFailed(KosmosError):
    """A result could not be written (read-only folder, disk full, ...)."""

    exit_code = ExitCode.OUTPUT_FAILED


class InputError(KosmosError):
    """One input (file or page) cannot be processed; the rest of the run goes on."""

    exit_code = ExitCode.SOME_FAILED


class InputNotFound(InputError):
    """A path given on the command line does not exist."""


class UnreadableInput(InputError):
    """A file exists but cannot be read (permissions, I/O error)."""


class UnsupportedInput(InputError):
    """A file is of a type the tool does not read."""


class CorruptInput(InputError):
    """A file claims a supported type but cannot be decoded."""


class PasswordRequired(InputError):
    """A PDF is encrypted and no (or a wrong) password was given."""


class PageOutOfRange(InputError):
    """`--pages` asks for pages the document does not have."""


class ImageTooLarge(InputError):
    """An image or rendered page has more pixels than `--max-pixels` allows."""


class PdfRendererMissing(InputError):
    """poppler's `pdftoppm`/`pdfinfo` are not installed, so PDFs cannot be read."""


class GenerationFailed(InputError):
    """The model failed while reading a page (for example out of memory)."""


class GroundTruthError(InputError):
    """A page cannot be scored against its ground truth; `eval` reports it and goes on."""


class GroundTruthMissing(GroundTruthError):
    """No ground-truth file was found for an input."""


class GroundTruthUnreadable(GroundTruthError):
    """A ground-truth file cannot be read or parsed, or is of the wrong kind for the task."""


class PageCountMismatch(GroundTruthError):
    """The ground truth does not have the pages the document has (or states another page size)."""


class BoxOutsidePage(GroundTruthError):
    """A ground-truth box lies (partly) outside its page."""


class TargetTooLong(GroundTruthError):
    """A page's ground truth needs more tokens than the model can write for it."""


class TrainingInterrupted(KosmosError):
    """Ctrl-C or SIGTERM stopped `kosmos25 train`; `last/` holds the last completed save point."""

    exit_code = ExitCode.INTERRUPTED
