"""Output tests: the JSON and TSV schemas, text and markdown layout, the format table, atomic files."""

import json
import os
from pathlib import Path, PurePosixPath

import pytest

from kosmos_cli.errors import OutputFailed
from kosmos_cli.inputs.documents import Document
from kosmos_cli.parsing import parse_ocr
from kosmos_cli.results import BBox, DocumentResult, Line, PageResult
from kosmos_cli.errors import UsageError
from kosmos_cli.outputs.files import DirectorySink, StdoutSink, write_atomic
from kosmos_cli.outputs.formats import FORMATS, RenderOptions, format_for_path, output_format
from kosmos_cli.outputs.text import to_json, to_markdown, to_tsv, to_txt
from test_parsing import RECEIPT_OCR


def _ocr_doc(*pages: PageResult) -> DocumentResult:
    return DocumentResult(source="scans/r.png", model="m", task="ocr", pages=pages)


def _page(number: int, lines, dpi=None) -> PageResult:
    return PageResult(page=number, width=864, height=1216, dpi=dpi, truncated=False, lines=tuple(lines))


def test_json_schema_from_real_output():
    lines = parse_ocr(RECEIPT_OCR, (864, 1216), (864, 1216))
    data = json.loads(to_json(_ocr_doc(_page(1, lines))))
    assert set(data) == {"source", "model", "task", "pages"}
    page = data["pages"][0]
    assert set(page) == {"page", "width", "height", "dpi", "truncated", "looping", "lines"}
    assert page["dpi"] is None and page["truncated"] is False
    assert page["lines"][1] == {"text": "[REG] BLACK SAKURA", "bbox": [79, 573, 464, 611]}


def test_json_lines_are_single_line_and_keep_unicode():
    doc = _ocr_doc(_page(1, [Line("Crème brûlée 5 €", None)]))
    text = to_json(doc, indent=None)
    assert text.count("\n") == 1 and "€" in text
    assert json.loads(text)["pages"][0]["lines"][0]["bbox"] is None


def test_markdown_json_has_markdown_instead_of_lines():
    page = PageResult(page=2, width=10, height=10, dpi=200, truncated=True, markdown="# T")
    data = json.loads(to_json(DocumentResult("a.pdf", "m", "md", (page,))))
    assert data["pages"][0] == {"page": 2, "width": 10, "height": 10, "dpi": 200, "truncated": True, "looping": False, "markdown": "# T"}


def test_tsv_header_escaping_and_missing_box():
    doc = _ocr_doc(_page(3, [Line("a\tb\\c", BBox(1, 2, 3, 4), 0.98765), Line("x\ny", None)]))
    rows = to_tsv(doc).splitlines()
    assert rows[0] == "source\tpage\tx0\ty0\tx1\ty1\tconfidence\ttext"
    assert rows[1] == "scans/r.png\t3\t1\t2\t3\t4\t0.9877\ta\\tb\\\\c"
    assert rows[2] == "scans/r.png\t3\t\t\t\t\t\tx\\ny"
    assert all(len(row.split("\t")) == 8 for row in rows)
    assert not to_tsv(doc, header=False).startswith("source")


def test_txt_pages_separated_by_form_feed():
    doc = _ocr_doc(_page(1, [Line("one", None), Line("two", None)]), _page(2, [Line("three", None)]))
    assert to_txt(doc) == "one\ntwo\n\fthree\n"


def test_markdown_pages_marked_with_their_own_numbers():
    pages = tuple(PageResult(n, 1, 1, 200, False, markdown=f"text {n}") for n in (2, 3))
    assert to_markdown(DocumentResult("a.pdf", "m", "md", pages)) == (
        "<!-- page 2 -->\n\ntext 2\n\n<!-- page 3 -->\n\ntext 3\n"
    )
    single = DocumentResult("a.png", "m", "md", pages[:1])
    assert to_markdown(single) == "text 2\n"


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_atomic(target, "first")
    write_atomic(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def test_write_atomic_to_unwritable_folder_fails_cleanly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputFailed, match="cannot write"):
        write_atomic(blocker / "out.json", "x")


def test_directory_sink_mirrors_subfolders_and_resumes(tmp_path):
    doc = Document("in/sub/a.png", Path("in/sub/a.png"), PurePosixPath("sub/a"))
    sink = DirectorySink(tmp_path, FORMATS["tsv"], RenderOptions())
    assert sink.path_for(doc) == tmp_path / "sub" / "a.tsv"
    assert not sink.is_done(doc)
    sink.write(doc, _ocr_doc(_page(1, [Line("x", None)])))
    assert sink.is_done(doc)
    assert not DirectorySink(tmp_path, FORMATS["tsv"], RenderOptions(), overwrite=True).is_done(doc)


def test_stdout_sink_writes_one_tsv_header(tmp_path):
    import io

    stream = io.BytesIO()
    sink = StdoutSink(FORMATS["tsv"], RenderOptions(), stream=stream)
    doc = Document("a.png", Path("a.png"), PurePosixPath("a"))
    sink.write(doc, _ocr_doc(_page(1, [Line("x", None)])))
    sink.write(doc, _ocr_doc(_page(1, [Line("y", None)])))
    assert stream.getvalue().count(b"source\tpage") == 1


def test_formats_by_task_and_by_file_suffix():
    assert output_format("alto", "ocr").suffix == ".xml"
    with pytest.raises(UsageError, match="'md' writes json, md"):
        output_format("pdf", "md")
    assert [format_for_path(Path(name)) for name in ("a.PDF", "b.hocr", "c.xml", "d.json")] == ["pdf", "hocr", "alto", "json"]
    with pytest.raises(UsageError, match="cannot tell the format"):
        format_for_path(Path("a.docx"))
