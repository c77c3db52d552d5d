"""Ground truth: finding, reading (files written by tesseract, and PAGE XML by hand), pairing, checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from images import multipage_pdf
from kosmos_cli.errors import BoxOutsidePage, GroundTruthMissing, GroundTruthUnreadable, PageCountMismatch
from kosmos_cli.evaluation.groundtruth import candidate_paths, find_truth, load_document_truth
from kosmos_cli.inputs.documents import Document, PageOptions
from kosmos_cli.results import BBox

FIXTURES = Path(__file__).parent / "fixtures" / "groundtruth"
TESSERACT_TEXTS = ["TOTAL 12.50", "Card Payment 50,000"]
TESSERACT_BOXES = [BBox(20, 36, 196, 56), BBox(22, 115, 322, 142)]


def doc_for(path: Path, output_name: str | None = None) -> Document:
    return Document(str(path), path, PurePosixPath(output_name or path.stem))


def page_with(tmp_path: Path, truth_fixture: str, truth_name: str) -> Document:
    shutil.copy(FIXTURES / "page.png", tmp_path / "page.png")
    shutil.copy(FIXTURES / truth_fixture, tmp_path / truth_name)
    return doc_for(tmp_path / "page.png")


@pytest.mark.parametrize(
    ("fixture", "name", "fmt"),
    [("page.xml", "page.xml", "alto"), ("page.hocr", "page.png.hocr", "hocr"), ("page.pagexml.xml", "page.xml", "page-xml")],
)
def test_files_written_by_other_tools(tmp_path, fixture, name, fmt):
    truth = load_document_truth(page_with(tmp_path, fixture, name), "ocr", PageOptions())
    assert truth.format == fmt and truth.path == tmp_path / name
    page = truth.pages[1]
    assert page.texts == TESSERACT_TEXTS
    assert [box for _, box in page.lines] == TESSERACT_BOXES and page.boxes


def test_txt_is_text_only(tmp_path):
    page = load_document_truth(page_with(tmp_path, "page.txt", "page.txt"), "ocr", PageOptions()).pages[1]
    assert page.texts == TESSERACT_TEXTS and not page.boxes and all(box is None for _, box in page.lines)


def test_kosmos_json_pairs_pages_by_number(tmp_path):
    pdf = multipage_pdf(tmp_path / "doc.pdf", pages=3)
    pages = [{"page": n, "width": 150, "height": 200, "lines": [{"text": f"p{n}", "bbox": [1, 2, 30, 40]}]}
             for n in (2, 3)]  # fmt: skip
    (tmp_path / "doc.json").write_text(json.dumps({"source": "x", "task": "ocr", "pages": pages}))
    truth = load_document_truth(doc_for(pdf), "ocr", PageOptions(dpi=50, pages=frozenset({3})))
    assert list(truth.pages) == [3] and truth.pages[3].lines == (("p3", BBox(1, 2, 30, 40)),)
    with pytest.raises(PageCountMismatch, match="has no page 1"):
        load_document_truth(doc_for(pdf), "ocr", PageOptions(dpi=50))
    # The same file rendered at another resolution is not this page.
    wrong_dpi = load_document_truth(doc_for(pdf), "ocr", PageOptions(dpi=100, pages=frozenset({2})))
    assert isinstance(wrong_dpi.pages[2], PageCountMismatch) and "check --dpi" in wrong_dpi.pages[2].message


def test_positional_formats_need_the_same_page_count(tmp_path):
    pdf = multipage_pdf(tmp_path / "doc.pdf", pages=3)
    shutil.copy(FIXTURES / "page.hocr", tmp_path / "doc.hocr")
    with pytest.raises(PageCountMismatch, match="has 3 pages but its ground truth .* has 1"):
        load_document_truth(doc_for(pdf), "ocr", PageOptions(dpi=50))


def test_candidate_names_and_mirrored_truth_folder(tmp_path):
    image = tmp_path / "in" / "sub" / "a.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(image)
    doc = doc_for(image, "sub/a")
    names = [p.name for p in candidate_paths(doc, "ocr")]
    assert names[:2] == ["a.png.json", "a.png.xml"] and names[5:7] == ["a.json", "a.xml"]
    assert [p.name for p in candidate_paths(doc, "md")] == ["a.png.md", "a.png.json", "a.png.txt", "a.md", "a.json", "a.txt"]
    (image.parent / "a.json").write_text("{}")
    (image.parent / "a.png.txt").write_text("x")
    assert find_truth(doc, "ocr") == image.parent / "a.png.txt"  # the full name wins over the stem
    truth_dir = tmp_path / "truth"
    with pytest.raises(GroundTruthMissing, match=r"truth/sub/a\.png\.json"):
        find_truth(doc, "ocr", truth_dir)
    (truth_dir / "sub").mkdir(parents=True)
    (truth_dir / "sub" / "a.md").write_text("# A")
    assert find_truth(doc, "md", truth_dir) == truth_dir / "sub" / "a.md"


def test_unreadable_and_wrong_kind(tmp_path):
    doc = page_with(tmp_path, "page.txt", "page.json")
    with pytest.raises(GroundTruthUnreadable, match="invalid JSON"):
        load_document_truth(doc, "ocr", PageOptions())
    (tmp_path / "page.json").write_text(json.dumps({"pages": [{"page": 1, "markdown": "# x"}]}))
    with pytest.raises(GroundTruthUnreadable, match="use it with --task md"):
        load_document_truth(doc, "ocr", PageOptions())
    assert load_document_truth(doc, "md", PageOptions()).pages[1].markdown == "# x"
    (tmp_path / "page.json").unlink()
    (tmp_path / "page.xml").write_text("<root/>")
    with pytest.raises(GroundTruthUnreadable, match="neither ALTO"):
        load_document_truth(doc, "ocr", PageOptions())


def test_box_outside_the_page_is_reported_per_page(tmp_path):
    doc = page_with(tmp_path, "page.txt", "page.json")
    lines = [{"text": "ok", "bbox": [0, 0, 601, 200]}, {"text": "far", "bbox": [500, 100, 650, 150]}]
    (tmp_path / "page.json").write_text(json.dumps({"pages": [{"page": 1, "lines": lines}]}))
    error = load_document_truth(doc, "ocr", PageOptions()).pages[1]
    assert isinstance(error, BoxOutsidePage) and "line 2 ('far')" in error.message


ALTO = """<?xml version="1.0"?>
<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#"><Description><MeasurementUnit>{unit}</MeasurementUnit></Description>
<Layout><Page WIDTH="{w}" HEIGHT="{h}"><PrintSpace><TextBlock>
<TextLine HPOS="{x}" VPOS="{y}" WIDTH="{bw}" HEIGHT="{bh}"><String CONTENT="Total"/><SP/><String CONTENT="12."/><HYP CONTENT="-"/></TextLine>
</TextBlock></PrintSpace></Page></Layout></alto>"""


@pytest.mark.parametrize(("unit", "dpi", "per_pixel"), [("mm10", 254, 1.0), ("inch1200", 300, 4.0), ("pixel", None, 1.0)])
def test_alto_measurement_units(tmp_path, unit, dpi, per_pixel):
    image = tmp_path / "scan.png"
    Image.new("RGB", (600, 200), "white").save(image, **({"dpi": (dpi, dpi)} if dpi else {}))
    values = {key: v * per_pixel for key, v in dict(w=600, h=200, x=20, y=36, bw=176, bh=20).items()}
    (tmp_path / "scan.xml").write_text(ALTO.format(unit=unit, **values))
    page = load_document_truth(doc_for(image), "ocr", PageOptions()).pages[1]
    assert page.lines == (("Total 12.-", BBox(20, 36, 196, 56)),)


def test_alto_in_mm10_needs_the_images_resolution(tmp_path):
    image = tmp_path / "scan.png"
    Image.new("RGB", (600, 200), "white").save(image)
    (tmp_path / "scan.xml").write_text(ALTO.format(unit="mm10", w=600, h=200, x=1, y=1, bw=5, bh=5))
    error = load_document_truth(doc_for(image), "ocr", PageOptions()).pages[1]
    assert isinstance(error, GroundTruthUnreadable) and "states none" in error.message


def test_markdown_pages(tmp_path):
    pdf = multipage_pdf(tmp_path / "doc.pdf", pages=2)
    (tmp_path / "doc.md").write_text("<!-- page 1 -->\n\n# One\n\n<!-- page 2 -->\n\n# Two\n")
    truth = load_document_truth(doc_for(pdf), "md", PageOptions(dpi=50))
    assert [truth.pages[n].markdown.strip() for n in (1, 2)] == ["# One", "# Two"]


@pytest.mark.parametrize("dpi", [77, 300])
def test_pdf_page_sizes_without_rendering_match_the_rendering(tmp_path, dpi):
    import pikepdf

    from kosmos_cli.inputs.documents import iter_pages, page_geometry

    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595.28, 841.89))  # A4: sizes that are not whole pixels
    pdf.add_blank_page(page_size=(612, 792))
    pdf.pages[1].Rotate = 90  # letter, turned: the sides swap
    pdf.save(tmp_path / "a4.pdf")
    doc = doc_for(tmp_path / "a4.pdf")
    options = PageOptions(dpi=dpi, pages=frozenset({1, 2}))
    total, geometry = page_geometry(doc, options)
    assert total == 2
    assert [(g.width, g.height) for g in geometry] == [page.image.size for page in iter_pages(doc, options)]


def test_image_page_sizes_follow_exif_rotation_and_tiff_frames(tmp_path):
    from images import exif_rotated_jpeg, multipage_tiff

    from kosmos_cli.inputs.documents import iter_pages, page_geometry

    for path in (exif_rotated_jpeg(tmp_path / "phone.jpg"), multipage_tiff(tmp_path / "pages.tif")):
        doc = doc_for(path)
        total, geometry = page_geometry(doc, PageOptions())
        pages = list(iter_pages(doc, PageOptions()))
        assert total == len(pages) and [(g.width, g.height) for g in geometry] == [p.image.size for p in pages]
