"""A failed page costs only that page: the document is written without it, the run
exits 1, and running the same command again reads only the failed pages and
completes the file. The failure is real (a page above --max-pixels), not mocked."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import run_cli
from images import pdf_with_big_page

pytestmark = [pytest.mark.cli, pytest.mark.model]

SMALL_LIMIT = "500000"  # pages 1 and 3 are 120,000 pixels at --dpi 100, page 2 is 1,920,000


def _ocr(scan, out, model, *extra):
    return run_cli("ocr", str(scan), "-o", str(out), "--model", str(model), "--dpi", "100", *extra)


def test_failed_page_is_recorded_and_a_rerun_reads_only_it(tmp_path, trained_model):
    scan = pdf_with_big_page(tmp_path / "scan.pdf")
    out = tmp_path / "out"
    sidecar = out / ".scan.json.failed-pages.json"

    first = _ocr(scan, out, trained_model, "--max-pixels", SMALL_LIMIT)
    assert first.returncode == 1, first.stderr
    assert f"kosmos25: error: {scan}: page 2: at 100 dpi it is 1,920,000 pixels" in first.stderr
    assert "2 of 3 pages written" in first.stderr and "page 2 failed" in first.stderr
    assert "0 done, 0 skipped, 1 failed; 2 pages" in first.stderr and "1 page failed" in first.stderr
    pages = json.loads((out / "scan.json").read_text())["pages"]
    assert [page["page"] for page in pages] == [1, 2, 3]
    assert pages[1] == {"page": 2, "error": pages[1]["error"]} and "1,920,000 pixels" in pages[1]["error"]
    assert pages[0]["lines"] and pages[2]["lines"]
    assert sidecar.is_file()

    # The same command again: only page 2 is read (and fails again); pages 1 and 3 are kept.
    again = _ocr(scan, out, trained_model, "--max-pixels", SMALL_LIMIT)
    assert again.returncode == 1 and "0 skipped, 1 failed; 0 pages" in again.stderr
    assert json.loads((out / "scan.json").read_text())["pages"] == pages

    # Fixed (limit raised): page 2 alone is read, merged, the sidecar goes, the file is complete
    # and equal, byte for byte, to a run that read all three pages at once.
    fixed = _ocr(scan, out, trained_model)
    assert fixed.returncode == 0, fixed.stderr
    assert "1 done, 0 skipped, 0 failed; 1 page in" in fixed.stderr
    assert not sidecar.exists()
    fresh = _ocr(scan, tmp_path / "fresh", trained_model)
    assert (out / "scan.json").read_bytes() == (tmp_path / "fresh" / "scan.json").read_bytes()
    done = _ocr(scan, out, trained_model)
    assert done.returncode == 0 and "0 done, 1 skipped" in done.stderr
    assert fresh.returncode == 0


def test_other_formats_leave_the_failed_page_out(tmp_path, trained_model):
    scan = pdf_with_big_page(tmp_path / "scan.pdf")
    out = tmp_path / "out"
    first = _ocr(scan, out, trained_model, "--format", "pdf", "--max-pixels", SMALL_LIMIT)
    assert first.returncode == 1 and "page 2 failed" in first.stderr
    assert (out / ".scan.pdf.failed-pages.json").is_file()
    # The PDF keeps all three pages; page 2 has no text layer.
    texts = [_pdftotext(out / "scan.pdf", page) for page in (1, 2, 3)]
    assert texts[0].strip() and not texts[1].strip() and texts[2].strip()

    fixed = _ocr(scan, out, trained_model, "--format", "pdf")
    assert fixed.returncode == 0 and "1 page in" in fixed.stderr, fixed.stderr
    assert _pdftotext(out / "scan.pdf", 2).strip() == texts[0].strip()
    assert not (out / ".scan.pdf.failed-pages.json").exists()


def _pdftotext(path, page):
    return subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), str(path), "-"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def test_a_page_the_model_fails_on_costs_only_itself(tmp_path):
    """The batch-level path, without a model: a batch that fails is retried page by page,
    and the page that fails alone is recorded; the TSV leaves it out."""
    from kosmos_cli.errors import GenerationFailed
    from kosmos_cli.inputs.documents import PageOptions, collect_documents
    from kosmos_cli.model.records import RawOutput
    from kosmos_cli.outputs.files import DirectorySink
    from kosmos_cli.outputs.formats import FORMATS, RenderOptions
    from kosmos_cli.run.pipeline import Pipeline, RunRequest
    from kosmos_cli.run.progress import PlainReporter

    documents, _ = collect_documents([str(pdf_with_big_page(tmp_path / "scan.pdf"))])

    def generate(sizes, task):
        if (120, 160) in sizes:  # page 2 at --dpi 10
            raise GenerationFailed("out of memory")
        return [RawOutput(f"<bbox><x_1><y_1><x_5><y_5></bbox>{width}", 8, 8, False) for width, _ in sizes]

    sink = DirectorySink(tmp_path / "out", FORMATS["tsv"], RenderOptions())
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as stream:
        request = RunRequest("ocr", "m", PageOptions(dpi=10), batch_size=3)
        summary = Pipeline(request, lambda image: image.size, generate, sink, PlainReporter(stream)).run(documents)
    assert (summary.done, summary.failed, summary.pages, summary.failed_pages) == (0, 1, 2, 1)
    assert summary.exit_code == 1
    rows = (tmp_path / "out" / "scan.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[1] for row in rows] == ["1", "3"]
    messages = stderr.read_text()
    assert "kosmos25: error: " + documents[0].source + ": page 2: out of memory" in messages
    assert "2 of 3 pages written" in messages and (tmp_path / "out" / ".scan.tsv.failed-pages.json").is_file()


def test_a_stream_that_fails_costs_only_the_page_that_fails_alone(tmp_path):
    """The continuous-batching path, without a model: the stream breaks on page 2 with
    pages in flight; those are read alone, page 2 is recorded failed, the stream goes on."""
    from kosmos_cli.errors import GenerationFailed
    from kosmos_cli.inputs.documents import PageOptions, collect_documents
    from kosmos_cli.model.records import RawOutput
    from kosmos_cli.outputs.files import DirectorySink
    from kosmos_cli.outputs.formats import FORMATS, RenderOptions
    from kosmos_cli.run.pipeline import Pipeline, RunRequest
    from kosmos_cli.run.progress import PlainReporter

    documents, _ = collect_documents([str(pdf_with_big_page(tmp_path / "scan.pdf"))])

    def raw(size):
        return RawOutput(f"<bbox><x_1><y_1><x_5><y_5></bbox>{size[0]}", 8, 8, False)

    def generate(sizes, task):
        if (120, 160) in sizes:
            raise GenerationFailed("out of memory")
        return [raw(size) for size in sizes]

    streams = []

    def stream(pairs, task):
        streams.append(task)
        for key, size in pairs:  # one slot: each page ends before the next is taken
            if size == (120, 160):
                raise GenerationFailed("out of memory")
            yield key, raw(size)

    sink = DirectorySink(tmp_path / "out", FORMATS["tsv"], RenderOptions())
    with open(tmp_path / "stderr.txt", "w") as errors:
        request = RunRequest("ocr", "m", PageOptions(dpi=10), batch_size=1)
        pipeline = Pipeline(request, lambda image: image.size, generate, sink, PlainReporter(errors), stream=stream)
        summary = pipeline.run(documents)
    assert len(streams) == 2  # the stream was started again after the failure
    assert (summary.failed, summary.pages, summary.failed_pages) == (1, 2, 1)
    rows = (tmp_path / "out" / "scan.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[1] for row in rows] == ["1", "3"]
    assert ": page 2: out of memory" in (tmp_path / "stderr.txt").read_text()
