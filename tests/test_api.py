"""The Python API through its public names only, on a tiny trained checkpoint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import kosmos_cli
from images import multipage_pdf
from test_cli import boxes_and_texts, expected_lines

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reader(trained_model):
    return kosmos_cli.Reader(model=str(trained_model), dtype="float32", max_new_tokens=200)


def test_ocr_takes_a_path_an_image_or_bytes(reader, tmp_path):
    image = Image.new("RGB", (400, 200), "white")
    image.save(tmp_path / "r.png")
    png = (tmp_path / "r.png").read_bytes()
    results = [reader.ocr(tmp_path / "r.png"), reader.ocr(str(tmp_path / "r.png")), reader.ocr(image), reader.ocr(png)]
    for doc in results:
        assert isinstance(doc, kosmos_cli.DocumentResult) and doc.task == "ocr"
        assert boxes_and_texts(doc.to_dict()["pages"][0]["lines"]) == expected_lines(400, 200)
        line = doc.pages[0].lines[0]
        assert isinstance(line, kosmos_cli.Line) and isinstance(line.bbox, kosmos_cli.BBox)
        assert 0.9 < line.confidence <= 1
    assert [doc.source for doc in results] == [str(tmp_path / "r.png")] * 2 + ["<image 0>", "<bytes 0>"]


def test_md_with_pages_and_many_in_input_order(reader, tmp_path):
    multipage_pdf(tmp_path / "a.pdf", pages=3)
    doc = reader.md(tmp_path / "a.pdf", pages="2-3", dpi=50)
    assert [page.page for page in doc.pages] == [2, 3] and all(page.markdown for page in doc.pages)
    Image.new("RGB", (300, 500), "white").save(tmp_path / "b.png")
    sources = [tmp_path / "b.png", tmp_path / "a.pdf", tmp_path / "b.png"]
    docs = list(reader.ocr_many(sources, pages=[1], dpi=50, errors="raise"))
    assert [d.source for d in docs] == [str(s) for s in sources]
    assert [d.pages[0].width for d in docs] == [300, docs[1].pages[0].width, 300]


def test_errors_are_typed_never_system_exit(reader, tmp_path, trained_model):
    Image.new("RGB", (300, 500), "white").save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(kosmos_cli.InputError, match="bad.png"):
        reader.ocr(tmp_path / "bad.png")
    with pytest.raises(kosmos_cli.InputError, match="missing.png: no such file"):
        reader.ocr(tmp_path / "missing.png")
    outcomes = list(reader.ocr_many([tmp_path / "ok.png", tmp_path / "bad.png", tmp_path / "ok.png"], errors="yield"))
    assert [type(o).__name__ for o in outcomes] == ["DocumentResult", "CorruptInput", "DocumentResult"]
    with pytest.raises(kosmos_cli.KosmosError) as raised:
        kosmos_cli.Reader(model=str(tmp_path / "no-model"))
    assert isinstance(raised.value, kosmos_cli.ModelUnavailable) and raised.value.exit_code == 3
    with pytest.raises(kosmos_cli.UsageError):
        reader.ocr(12345)


def test_write_any_format_by_suffix(reader, tmp_path):
    Image.new("RGB", (400, 200), "white").save(tmp_path / "r.png")
    doc = reader.ocr(tmp_path / "r.png")
    assert kosmos_cli.write(doc, tmp_path / "out" / "r.json").read_text().startswith("{")
    kosmos_cli.write(doc, tmp_path / "out" / "r.txt")
    assert (tmp_path / "out" / "r.txt").read_text() == "TOTAL 12.50\nClipped box\nDegenerate box\n"
    hocr = kosmos_cli.write(doc, tmp_path / "out" / "r.hocr").read_text()
    assert "ocr_line" in hocr and "TOTAL" in hocr
    pdf = kosmos_cli.write(doc, tmp_path / "out" / "r.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "TOTAL 12.50" in text
    with pytest.raises(kosmos_cli.UsageError, match="'ocr' writes"):
        kosmos_cli.write(doc, tmp_path / "r.md")


def test_readme_api_example_runs(tmp_path, trained_model):
    readme = (REPO / "README.md").read_text()
    example = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    env = {"KOSMOS25_MODEL": str(trained_model), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    (tmp_path / "examples").symlink_to(REPO / "examples")
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "TOTAL 12.50" in result.stdout
    assert (tmp_path / "out" / "receipt.pdf").is_file()


def test_continuous_and_static_batching_give_the_same_documents(trained_model, random_model, tmp_path):
    # The random checkpoint's pages end at different steps, so slots are refilled mid-run.
    multipage_pdf(tmp_path / "a.pdf", pages=3)
    Image.new("RGB", (300, 500), "white").save(tmp_path / "b.png")
    sources = [tmp_path / "a.pdf", tmp_path / "b.png"]
    for model in (trained_model, random_model):
        docs = {}
        for batching in ("continuous", "static"):
            reader = kosmos_cli.Reader(model=str(model), dtype="float32", max_new_tokens=40, batch_size=2,
                                       batching=batching)  # fmt: skip
            assert batching in reader.describe() or "per batch" in reader.describe()
            docs[batching] = [d.to_dict() for d in reader.ocr_many(sources, dpi=50)]
        assert docs["continuous"] == docs["static"]
    # compile=True (--compile): the same documents, its decoding steps run compiled.
    reader = kosmos_cli.Reader(model=str(random_model), dtype="float32", max_new_tokens=40, batch_size=2, compile=True)
    assert "compiled decoding steps" in reader.describe()
    assert [d.to_dict() for d in reader.ocr_many(sources, dpi=50)] == docs["static"]
