"""End-to-end tests: the installed `kosmos25` command in a subprocess, with a tiny
trained checkpoint loaded through the same path as the real model (no mocks)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from images import encrypted_pdf, exif_rotated_jpeg, multipage_pdf, multipage_tiff
from tiny_checkpoint import MAX_PATCHES, TRAINED_MD

pytestmark = [pytest.mark.cli, pytest.mark.model]

# Boxes the trained checkpoint emits, in the processor's resized pixels (see tiny_checkpoint.TRAINED_OCR).
MODEL_BOXES = [(16, 8, 176, 40), (200, 100, 400, 300), None]
TEXTS = ["TOTAL 12.50", "Clipped box", "Degenerate box"]


def resized_size(width: int, height: int) -> tuple[int, int]:
    """The processor's resize rule, restated independently: the largest 16-px grid within MAX_PATCHES."""
    scale = math.sqrt(MAX_PATCHES * (16 / height) * (16 / width))
    rows = max(min(math.floor(scale * height / 16), MAX_PATCHES), 1)
    cols = max(min(math.floor(scale * width / 16), MAX_PATCHES), 1)
    return cols * 16, rows * 16


def expected_lines(width: int, height: int) -> list[dict]:
    rw, rh = resized_size(width, height)
    lines = []
    for text, box in zip(TEXTS, MODEL_BOXES):
        bbox = None
        if box:
            x0, y0, x1, y1 = box
            bbox = [min(round(x0 * width / rw), width), min(round(y0 * height / rh), height),
                    min(round(x1 * width / rw), width), min(round(y1 * height / rh), height)]  # fmt: skip
            if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
                bbox = None  # clipped away entirely
        lines.append({"text": text, "bbox": bbox})
    return lines


def boxes_and_texts(lines: list[dict]) -> list[dict]:
    """The lines without their confidences, after checking that the trained model is sure of each."""
    assert all(0.9 < line["confidence"] <= 1 for line in lines), lines
    return [{key: value for key, value in line.items() if key != "confidence"} for line in lines]


def check_document(doc: dict, source: str, model: Path, task: str = "ocr") -> None:
    assert set(doc) == {"source", "model", "task", "pages"}
    assert doc["source"] == source and doc["model"] == str(model) and doc["task"] == task
    for page in doc["pages"]:
        content = {"lines"} if task == "ocr" else {"markdown", "confidence"}
        assert set(page) == {"page", "width", "height", "dpi", "truncated", "looping"} | content
        assert page["truncated"] is False and page["looping"] is False
        if task == "ocr":
            assert boxes_and_texts(page["lines"]) == expected_lines(page["width"], page["height"])


def test_help_and_version_do_not_import_torch():
    code = "import sys; from kosmos_cli import cli; print('torch' in sys.modules, 'ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False False"
    assert run_cli("--version").stdout.startswith("kosmos25 ")
    assert "ocr" in run_cli("--help").stdout
    module = subprocess.run([sys.executable, "-m", "kosmos_cli", "md", "--help"], capture_output=True, text=True)
    assert module.returncode == 0 and "--max-new-tokens" in module.stdout


def test_ocr_png_json_to_stdout_with_exact_boxes(tmp_path, trained_model):
    Image.new("RGB", (400, 200), "white").save(tmp_path / "receipt.png")
    result = run_cli("ocr", str(tmp_path / "receipt.png"), "--format", "json", "--model", str(trained_model))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    check_document(doc, str(tmp_path / "receipt.png"), trained_model)
    # 400x200 -> resized 352x176: x * 400/352, y * 200/176, clipped to the page; the reversed box is null.
    assert boxes_and_texts(doc["pages"][0]["lines"]) == [
        {"text": "TOTAL 12.50", "bbox": [18, 9, 200, 45]},
        {"text": "Clipped box", "bbox": [227, 114, 400, 200]},
        {"text": "Degenerate box", "bbox": None},
    ]
    assert doc["pages"][0]["dpi"] is None
    assert "1 done, 0 skipped, 0 failed" in result.stderr


def test_mixed_inputs_to_folder_mirrored_and_scaled_per_page(tmp_path, trained_model):
    scans = tmp_path / "scans"
    (scans / "a").mkdir(parents=True)
    (scans / "b").mkdir()
    Image.new("RGB", (400, 200), "white").save(scans / "a" / "page.png")
    Image.new("RGB", (250, 900), "white").save(scans / "b" / "page.png")  # same name, other folder
    exif_rotated_jpeg(scans / "phone.jpg")
    Image.new("RGBA", (320, 240), (0, 0, 0, 0)).save(scans / "clear.png")
    multipage_tiff(scans / "pages.tiff")
    multipage_pdf(scans / "report.pdf", pages=3)
    out = tmp_path / "results"
    result = run_cli("ocr", str(scans), "-o", str(out), "--model", str(trained_model), "--batch-size", "3", "--dpi", "100")
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a/page.json", "b/page.json", "clear.json", "pages.json", "phone.json", "report.json"]
    docs = {name: json.loads((out / name).read_text()) for name in written}
    sources = {"a/page.json": "a/page.png", "b/page.json": "b/page.png", "clear.json": "clear.png",
               "pages.json": "pages.tiff", "phone.json": "phone.jpg", "report.json": "report.pdf"}  # fmt: skip
    for name, doc in docs.items():
        check_document(doc, str(scans / sources[name]), trained_model)
    assert [(p["width"], p["height"]) for p in docs["phone.json"]["pages"]] == [(100, 300)]  # EXIF applied
    assert [(p["page"], p["width"], p["height"]) for p in docs["pages.json"]["pages"]] == [
        (1, 400, 200), (2, 200, 400), (3, 300, 300)]  # fmt: skip
    assert [(p["page"], p["dpi"], p["width"]) for p in docs["report.json"]["pages"]] == [
        (1, 100, 300), (2, 100, 300), (3, 100, 300)]  # fmt: skip
    assert docs["b/page.json"]["pages"][0]["width"] == 250


def test_pages_option_numbers_pages_as_the_document_does(tmp_path, trained_model):
    pdf = multipage_pdf(tmp_path / "scan.pdf", pages=4)
    result = run_cli("md", str(pdf), "--pages", "2-3", "-o", str(tmp_path / "out"), "--model", str(trained_model), "--dpi", "50")
    assert result.returncode == 0, result.stderr
    markdown = TRAINED_MD.strip("\n")
    assert (tmp_path / "out" / "scan.md").read_text() == (
        f"<!-- page 2 -->\n\n{markdown}\n\n<!-- page 3 -->\n\n{markdown}\n"
    )
    as_json = run_cli("md", str(pdf), "--pages", "4", "--format", "json", "--model", str(trained_model), "--dpi", "50")
    doc = json.loads(as_json.stdout)
    check_document(doc, str(pdf), trained_model, task="md")
    assert [(p["page"], p["markdown"], p["dpi"]) for p in doc["pages"]] == [(4, markdown, 50)]


def test_tsv_and_txt_formats_and_stdin(tmp_path, trained_model):
    image = tmp_path / "r.png"
    Image.new("RGB", (400, 200), "white").save(image)
    tsv = run_cli("ocr", "-", "--format", "tsv", "--model", str(trained_model), stdin=image.read_bytes())
    assert tsv.returncode == 0, tsv.stderr
    rows = [row.split("\t") for row in tsv.stdout.splitlines()]
    assert all(0.9 < float(row[6]) <= 1 for row in rows[1:])
    assert ["\t".join(row[:6] + row[7:]) for row in rows] == [
        "source\tpage\tx0\ty0\tx1\ty1\ttext",
        "-\t1\t18\t9\t200\t45\tTOTAL 12.50",
        "-\t1\t227\t114\t400\t200\tClipped box",
        "-\t1\t\t\t\t\tDegenerate box",
    ]
    txt = run_cli("ocr", str(image), str(image.with_name("missing.png")), "-f", "txt", "--model", str(trained_model))
    assert txt.stdout == "TOTAL 12.50\nClipped box\nDegenerate box\n"
    assert txt.returncode == 1 and "missing.png: no such file or directory" in txt.stderr


def test_bad_inputs_reported_and_the_rest_processed(tmp_path, trained_model):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (400, 200), "white").save(folder / "good.png")
    (folder / "text.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7 nothing here")
    encrypted_pdf(folder / "locked.pdf")
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "out"
    result = run_cli("ocr", str(folder), str(tmp_path / "notes.txt"), "-o", str(out), "--model", str(trained_model))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 5, result.stderr
    for name, reason in [("text.png", "not a readable image"), ("empty.jpg", "file is empty"),
                         ("broken.pdf", "not a readable PDF"), ("locked.pdf", "encrypted; give its password"),
                         ("notes.txt", "unsupported file type '.txt'")]:  # fmt: skip
        assert any(name in line and reason in line for line in errors), (name, result.stderr)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.json"]
    unlocked = run_cli("ocr", str(folder / "locked.pdf"), "--password", "secret", "--model", str(trained_model))
    assert unlocked.returncode == 0 and json.loads(unlocked.stdout)["pages"][0]["dpi"] == 200


def test_missing_pdftoppm_is_a_clear_per_file_error(tmp_path, trained_model):
    multipage_pdf(tmp_path / "a.pdf", pages=1)
    Image.new("RGB", (400, 200), "white").save(tmp_path / "b.png")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    result = run_cli("ocr", str(tmp_path / "a.pdf"), str(tmp_path / "b.png"), "--model", str(trained_model),
                     env={"PATH": str(empty_bin)})  # fmt: skip
    assert result.returncode == 1
    assert "a.pdf: cannot read PDFs: poppler's pdftoppm/pdfinfo not found" in result.stderr
    assert json.loads(result.stdout)["source"].endswith("b.png")


def test_out_of_range_pages_and_usage_errors(tmp_path, trained_model):
    multipage_pdf(tmp_path / "a.pdf", pages=2)
    result = run_cli("ocr", str(tmp_path / "a.pdf"), "--pages", "3", "--model", str(trained_model))
    assert result.returncode == 1 and "a.pdf: --pages asks for page 3 but the document has 2 pages" in result.stderr
    for args, message in [
        (["--pages", "2-1"], "--pages"),
        (["--format", "md"], "'md' is not one of 'json', 'tsv', 'txt', 'pdf', 'hocr', 'alto'"),
        (["--device", "tpu"], "--device tpu"),
        (["--compile", "--batching", "static"], "--compile applies to --batching continuous"),
    ]:
        bad = run_cli("ocr", str(tmp_path / "a.pdf"), "--model", str(trained_model), *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert run_cli("ocr").returncode == 2


@pytest.mark.parametrize("kind", ["missing", "wrong-architecture", "empty-folder"])
def test_model_not_loadable(tmp_path, kind):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    model = tmp_path / "model"
    if kind == "wrong-architecture":
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    elif kind == "empty-folder":
        model.mkdir()
    result = run_cli("ocr", str(tmp_path / "a.png"), "--model", str(model))
    assert result.returncode == 3, result.stderr
    assert "Cannot load the KOSMOS-2.5 model" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_model_from_environment_variable(tmp_path, trained_model):
    Image.new("RGB", (400, 200)).save(tmp_path / "a.png")
    env = {**os.environ, "KOSMOS25_MODEL": str(trained_model), "HF_HUB_OFFLINE": "1"}
    direct = subprocess.run([sys.executable, "-m", "kosmos_cli", "ocr", str(tmp_path / "a.png"), "-f", "txt"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.startswith("TOTAL 12.50\n")


def test_stderr_holds_only_kosmos25s_own_lines(tmp_path, trained_model):
    Image.new("RGB", (400, 200), "white").save(tmp_path / "r.png")
    # Warnings raised inside torch/transformers would show up here (transformers 5.24 warned on every run).
    env = {"PYTHONWARNINGS": "default"}
    quiet = run_cli("ocr", str(tmp_path / "r.png"), "-q", "--model", str(trained_model), env=env, fresh=True)
    assert quiet.returncode == 0 and quiet.stdout and quiet.stderr == ""
    normal = run_cli("ocr", str(tmp_path / "r.png"), "--model", str(trained_model), env=env, fresh=True)
    assert normal.returncode == 0 and normal.stderr
    assert all(line.startswith("kosmos25: ") for line in normal.stderr.splitlines()), normal.stderr


def test_verbose_folds_library_warnings_into_one_line_each(monkeypatch):
    import io
    import warnings

    import transformers

    from kosmos_cli.cli import common
    from kosmos_cli.run.progress import PlainReporter

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    for verbose, expected in [(True, "kosmos25: library warning (transformers): FutureWarning: a library says\n"), (False, "")]:
        stream = io.StringIO()
        with warnings.catch_warnings():
            common.route_library_messages(verbose, PlainReporter(stream))
            warnings.warn_explicit("a library says\nsecond line", FutureWarning, transformers.__file__, 1)
        assert stream.getvalue() == expected


def _scanned_pdf(path: Path) -> Path:
    """A one-page image-only PDF, 4x2 inches: what a scanner writes."""
    Image.new("RGB", (400, 200), "white").save(path, resolution=100.0)
    return path


def _words(bbox_layout_xhtml: str) -> list[tuple[str, list[float]]]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(bbox_layout_xhtml)
    return [(word.text, [float(word.get(k)) for k in ("xMin", "yMin", "xMax", "yMax")])
            for word in root.iter("{http://www.w3.org/1999/xhtml}word")]  # fmt: skip


def test_searchable_pdf_from_a_scanned_pdf(tmp_path, trained_model):
    scan = _scanned_pdf(tmp_path / "scan.pdf")
    first = run_cli("ocr", str(scan), "-f", "pdf", "-o", str(tmp_path / "out"), "--dpi", "100", "--model", str(trained_model))
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out" / "scan.pdf"
    assert "TOTAL 12.50" in subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
    # The word lands on its box: JSON pixels at 100 dpi -> points (x 72/100).
    json_run = run_cli("ocr", str(scan), "--dpi", "100", "--model", str(trained_model))
    box = json.loads(json_run.stdout)["pages"][0]["lines"][0]["bbox"]
    layout = subprocess.run(["pdftotext", "-bbox-layout", str(out), "-"], capture_output=True, text=True).stdout
    words = dict(_words(layout))
    expected_line = [v * 72 / 100 for v in box]
    assert words["TOTAL"][0] == pytest.approx(expected_line[0], abs=2)
    assert words["12.50"][2] == pytest.approx(expected_line[2], abs=2)
    assert words["TOTAL"][1] == pytest.approx(expected_line[1], abs=2)
    assert words["TOTAL"][3] == pytest.approx(expected_line[3], abs=2)
    again = run_cli("ocr", str(scan), "-f", "pdf", "-o", str(tmp_path / "out"), "--model", str(trained_model))
    assert again.returncode == 0 and "1 skipped" in again.stderr


def test_pdf_to_stdout_for_one_input_only(tmp_path, trained_model):
    from conftest import KOSMOS25

    Image.new("RGB", (400, 200), "white").save(tmp_path / "r.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([str(KOSMOS25), "ocr", str(tmp_path / "r.png"), "-f", "pdf", "-q", "--model", str(trained_model)],
                         capture_output=True, env=env)  # fmt: skip
    assert one.returncode == 0 and one.stdout.startswith(b"%PDF") and one.stderr == b""
    Image.new("RGB", (200, 200), "white").save(tmp_path / "s.png")
    two = run_cli("ocr", str(tmp_path / "r.png"), str(tmp_path / "s.png"), "-f", "alto", "--model", str(trained_model))
    assert two.returncode == 2 and "--format alto writes one file per input: give -o DIR" in two.stderr


def test_hocr_and_alto_line_boxes_equal_the_json_boxes(tmp_path, trained_model):
    import xml.etree.ElementTree as ET

    from test_alto import schema as alto_schema

    Image.new("RGB", (400, 200), "white").save(tmp_path / "r.png")
    for fmt in ("json", "hocr", "alto"):
        result = run_cli("ocr", str(tmp_path / "r.png"), "-f", fmt, "-o", str(tmp_path / "out"), "--model", str(trained_model))
        assert result.returncode == 0, result.stderr
    json_boxes = [line["bbox"] for line in json.loads((tmp_path / "out" / "r.json").read_text())["pages"][0]["lines"]]
    hocr = ET.parse(tmp_path / "out" / "r.hocr").getroot()
    hocr_boxes = []
    for span in hocr.iter("{http://www.w3.org/1999/xhtml}span"):
        if span.get("class") == "ocr_line":
            fields = dict(part.strip().split(" ", 1) for part in span.get("title").split(";"))
            hocr_boxes.append([int(v) for v in fields["bbox"].split()] if "bbox" in fields else None)
    assert hocr_boxes == json_boxes
    alto_text = (tmp_path / "out" / "r.xml").read_text()
    alto_schema.__wrapped__().validate(alto_text)
    ns = "{http://www.loc.gov/standards/alto/ns-v4#}"
    alto_boxes = []
    for line in ET.fromstring(alto_text).iter(f"{ns}TextLine"):
        if line.get("HPOS") is None:
            alto_boxes.append(None)
        else:
            x, y, w, h = (int(float(line.get(k))) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))
            alto_boxes.append([x, y, x + w, y + h])
    assert alto_boxes == json_boxes


def test_readme_option_table_matches_help():
    import re

    from typer.main import get_command

    from kosmos_cli import cli

    group = get_command(cli.app)
    in_help = {}
    for name in ("ocr", "md"):
        for param in group.commands[name].params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    in_help[opt] = param.rich_help_panel
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("| option | default | meaning |") :].split("\n\n", 1)[0]
    in_readme, panel = {}, None
    for row in table.splitlines()[2:]:
        heading = re.match(r"\| \*\*(\w+)\*\* \|", row)
        if heading:
            panel = heading.group(1)
            continue
        in_readme[re.match(r"\| `(?:-\w, )?(--[\w-]+)", row).group(1)] = panel
    assert in_readme == in_help


def test_ray_missing_is_exit_3_before_any_work(tmp_path):
    """Without Ray installed, --ray stops with exit code 3 and says what to install."""
    fake = tmp_path / "no-ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    Image.new("RGB", (40, 20), "white").save(tmp_path / "a.png")
    path = os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))
    result = run_cli("ocr", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--ray", env={"PYTHONPATH": path})
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == (
        "kosmos25: error: --ray needs Ray, which is not installed: pip install 'kosmos25[ray]' (or 'make install')"
    )


def test_ray_address_that_does_not_answer_is_exit_3_at_once(tmp_path):
    pytest.importorskip("ray")
    Image.new("RGB", (40, 20), "white").save(tmp_path / "a.png")
    result = run_cli("ocr", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--ray", "127.0.0.1:1")
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("kosmos25: error: --ray: no Ray cluster answers at 127.0.0.1:1")
