"""The Python API: a `Reader` that loads the model once and reads documents, and `write`.

The command line runs on this same class (`run.app.execute` calls `Reader.read`), so
a script gets exactly what `kosmos25 ocr` / `kosmos25 md` produce.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Union

from .errors import InputError, InputNotFound, UsageError
from .inputs.documents import DEFAULT_MAX_PIXELS, Document, PageOptions, parse_page_selection
from .model.loading import default_model
from .model.batch_size import auto_batch_size
from .model.runner import ModelRunner, RunnerSettings
from .outputs.files import write_atomic_bytes
from .outputs.formats import RenderOptions, format_for_path, output_format
from .results import DocumentResult
from .run.pipeline import Pipeline, PageObserver, Reporter, RunRequest, Sink
from .run.progress import PlainReporter

if TYPE_CHECKING:
    from PIL import Image

Source = Union[str, Path, bytes, "Image.Image"]


class Reader:
    """KOSMOS-2.5, loaded once, reading images and PDFs.

    Takes the command line's model options by the same names. Errors are the
    library's typed errors (`kosmos_cli.KosmosError` and subclasses): a model that
    cannot be loaded raises `ModelUnavailable` here, a bad input raises an
    `InputError` subclass from `ocr`/`md` (or from `ocr_many`/`md_many` when its turn
    comes).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn: str = "sdpa",
        batch_size: int | None = None,
        max_new_tokens: int = 4096,
        max_patches: int | None = None,
        batching: str = "continuous",
        compile: bool = False,  # noqa: A002 - the command line's --compile
    ) -> None:
        if batching not in ("continuous", "static"):
            raise UsageError(f"batching {batching!r}: expected 'continuous' or 'static'")
        settings = RunnerSettings(
            model=model or default_model(),
            revision=revision,
            device=device,
            dtype=dtype,
            attn=attn,
            max_new_tokens=max_new_tokens,
            max_patches=max_patches,
            batching=batching,
            compile=compile,
        )
        self.settings = settings
        self.runner = ModelRunner(settings)
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size {batch_size}: must be at least 1")
        self.batch_size = batch_size or auto_batch_size(self.runner)

    @classmethod
    def from_settings(cls, settings: RunnerSettings, batch_size: int | None = None) -> Reader:
        """A Reader for settings the command line already gathered."""
        return cls(
            settings.model,
            revision=settings.revision,
            device=settings.device,
            dtype=settings.dtype,
            attn=settings.attn,
            batch_size=batch_size,
            max_new_tokens=settings.max_new_tokens,
            max_patches=settings.max_patches,
            batching=settings.batching,
            compile=settings.compile,
        )

    def describe(self) -> str:
        """Which model runs where, for the command line's first message."""
        runner = self.runner
        dtype = str(runner.dtype).removeprefix("torch.")
        continuous = self.settings.batching == "continuous" and runner.supports_continuous_batching
        kind = "continuous batching" if continuous else "per batch"
        if continuous and self.settings.compile:
            kind += ", compiled decoding steps"
        pages = f"{self.batch_size} page{'s' * (self.batch_size != 1)} {kind}"
        attention = f"{runner.attention} attention"
        if runner.cpu_kernels is not None:
            attention += f" [{runner.cpu_kernels.describe()}]"
        if runner.float32_products:
            attention += ", products of many rows in float32 (faster on this CPU)"
        return f"model {self.settings.model} on {runner.device} ({dtype}, {attention}), {pages}"

    def ocr(self, source: Source, *, pages: str | Iterable[int] | None = None, dpi: int = 200,
            password: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> DocumentResult:  # fmt: skip
        """Every text line of one image or PDF with its box: a path, PIL image or bytes."""
        return next(self.ocr_many([source], pages=pages, dpi=dpi, password=password, max_pixels=max_pixels))

    def md(self, source: Source, *, pages: str | Iterable[int] | None = None, dpi: int = 200,
           password: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> DocumentResult:  # fmt: skip
        """One image or PDF as markdown (`page.markdown` on each page)."""
        return next(self.md_many([source], pages=pages, dpi=dpi, password=password, max_pixels=max_pixels))

    def ocr_many(self, sources: Iterable[Source], *, errors: str = "raise", **page_options) -> Iterator[DocumentResult]:
        """OCR several documents, pages batched across them; yields results in input order.

        A document that cannot be read raises its `InputError` when its turn comes
        (`errors="raise"`), or is yielded as that error object in its place so the
        rest go on (`errors="yield"`). `page_options`: `pages`, `dpi`, `password`,
        `max_pixels`, as for `ocr`.
        """
        return self._read_many("ocr", sources, _page_options(**page_options), errors)

    def md_many(self, sources: Iterable[Source], *, errors: str = "raise", **page_options) -> Iterator[DocumentResult]:
        """Markdown of several documents, pages batched across them; yields in input order
        (`errors` as for `ocr_many`)."""
        return self._read_many("md", sources, _page_options(**page_options), errors)

    def read(
        self,
        task: str,
        documents: list[Document],
        sink: Sink,
        reporter: Reporter,
        page_options: PageOptions,
        page_observer: PageObserver | None = None,
    ) -> Pipeline:
        """A pipeline that reads `documents` into `sink`; call its `run` or `steps`."""
        request = RunRequest(task, self.settings.model, page_options, self.batch_size)
        runner = self.runner
        stream = None
        if self.settings.batching == "continuous" and runner.supports_continuous_batching:

            def stream(pairs, task):
                for streamed in runner.decode_stream(pairs, task, slots=self.batch_size):
                    yield streamed.key, streamed.output

        return Pipeline(request, runner.prepare, runner.generate_prepared, sink, reporter, page_observer, stream)

    def _read_many(
        self, task: str, sources: Iterable[Source], page_options: PageOptions, errors: str
    ) -> Iterator[DocumentResult]:
        if errors not in ("raise", "yield"):
            raise UsageError(f"errors={errors!r}: expected 'raise' or 'yield'")
        documents = [_document(source, index) for index, source in enumerate(sources)]
        collector = MemorySink(raise_errors=errors == "raise")
        pipeline = self.read(task, documents, collector, _SilentReporter(), page_options)
        waiting = iter(documents)
        next_doc = next(waiting, None)
        for _ in pipeline.steps(documents):
            while next_doc is not None and id(next_doc) in collector.finished:
                yield collector.take(next_doc)
                next_doc = next(waiting, None)
        while next_doc is not None:
            yield collector.take(next_doc)
            next_doc = next(waiting, None)


def write(result: DocumentResult, path: str | Path, *, format: str | None = None, source: Source | None = None,
          image_dpi: int = 300, password: str | None = None) -> Path:  # fmt: skip
    """Write `result` to `path` atomically in any output format (by suffix, or `format=`).

    The searchable PDF adds its text layer to the original document, so it needs it:
    `source` (a path, bytes or PIL image) or, by default, the path in `result.source`.
    """
    path = Path(path)
    fmt = output_format(format or format_for_path(path), result.task)
    doc = _document(source if source is not None else result.source, 0)
    write_atomic_bytes(path, fmt.render_result(doc, result, RenderOptions(image_dpi=image_dpi, password=password)))
    return path


def _page_options(pages: str | Iterable[int] | None = None, dpi: int = 200, password: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> PageOptions:  # fmt: skip
    selection = parse_page_selection(pages) if isinstance(pages, str) or pages is None else frozenset(pages)
    if selection is not None and (not selection or min(selection) < 1):
        raise UsageError("pages: page numbers start at 1")
    return PageOptions(dpi=dpi, pages=selection, max_pixels=max_pixels, password=password)


def _document(source: Source, index: int) -> Document:
    """A path, bytes or PIL image as a Document (a missing path fails when its turn comes)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        return Document(str(source), path, PurePosixPath(path.name))
    if isinstance(source, (bytes, bytearray)):
        return Document(f"<bytes {index}>", None, PurePosixPath(f"bytes-{index}"), bytes(source))
    if hasattr(source, "save") and hasattr(source, "size"):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")  # lossless; keeps one code path for every input
        return Document(f"<image {index}>", None, PurePosixPath(f"image-{index}"), buffer.getvalue())
    raise UsageError(f"cannot read a {type(source).__name__}: pass a path, bytes or a PIL image")


@dataclass
class MemorySink:
    """A sink that keeps each document's result (or error) in memory, by document identity:
    for the API's iterators and for `kosmos25 eval`."""

    raise_errors: bool = True

    def __post_init__(self) -> None:
        self.finished: dict[int, DocumentResult | InputError] = {}

    def is_done(self, doc: Document) -> bool:
        if doc.path is not None and doc.data is None and not doc.path.exists():
            self.finished[id(doc)] = InputNotFound(f"{doc.source}: no such file or directory")
            return True  # skip it; `take` raises its error in turn
        return False

    def unfinished(self, doc: Document, task: str, model: str) -> None:
        return None

    def write(self, doc: Document, result: DocumentResult) -> None:
        self.finished[id(doc)] = result

    def failed(self, doc: Document, error: InputError) -> None:
        self.finished[id(doc)] = error

    def take(self, doc: Document) -> DocumentResult | InputError:
        outcome = self.finished.pop(id(doc))
        if isinstance(outcome, InputError) and self.raise_errors:
            raise outcome
        return outcome


class _SilentReporter(PlainReporter):
    """The API reports through return values and exceptions, never on stderr."""

    def _say(self, text: str) -> None:
        pass
