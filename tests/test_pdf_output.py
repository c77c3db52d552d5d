"""Searchable PDF output: the text layer lands on the text, the input stays as it was.

Fixtures are built in code: PDFs with Helvetica text drawn upright on the displayed
page (also under /Rotate and with page boxes away from the origin), and images. Where
the text is comes from poppler itself (`pdftotext -bbox-layout` of the input), so the
checks do not share the module's geometry.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path, PurePosixPath

import pikepdf
import pytest
from pikepdf import Array, Dictionary, Name
from PIL import Image, ImageOps

from kosmos_cli.errors import CorruptInput, PasswordRequired
from kosmos_cli.inputs.documents import Document, PageOptions, iter_pages
from kosmos_cli.outputs.pdf import render_pdf
from kosmos_cli.results import BBox, DocumentResult, Line, PageResult

DPI = 100
TOLERANCE_PT = 2.0
HELVETICA = Dictionary(Type=Name.Font, Subtype=Name.Type1, BaseFont=Name.Helvetica, Encoding=Name.WinAnsiEncoding)
# (text, x, y from the displayed page's top, font size): drawn upright on the displayed page.
TEXTS = (("Hello searchable world", 40, 50, 18), ("second line of text", 60, 120, 12), ("42 Main St.", 200, 200, 10))


# --- fixtures ------------------------------------------------------------------


def _display_cm(rotate: int, box: tuple[float, float, float, float]) -> str:
    """cm taking displayed-page points (origin bottom-left, y up) to user space under /Rotate."""
    x0, y0, x1, y1 = box
    return {
        0: f"1 0 0 1 {x0} {y0}",
        90: f"0 1 -1 0 {x1} {y0}",
        180: f"-1 0 0 -1 {x1} {y1}",
        270: f"0 -1 1 0 {x0} {y1}",
    }[rotate] + " cm"


def _add_text_page(pdf, media=(0, 0, 400, 300), rotate=0, crop=None, texts=TEXTS, shown=None):
    shown = shown or (crop or media)
    height = (shown[3] - shown[1]) if rotate in (0, 180) else (shown[2] - shown[0])
    ops = ["q", _display_cm(rotate, shown), "0 0.4 0 rg 10 10 30 20 re f"]
    for text, x, y, size in texts:
        ops.append(f"BT /F1 {size} Tf {x} {height - y} Td ({text}) Tj ET")
    # A graphics state left open on purpose (no Q): the text layer must not inherit it.
    ops += ["4 w 1 0 0 RG 3 0 0 3 0 0 cm"]
    page = Dictionary(
        Type=Name.Page,
        MediaBox=Array(list(media)),
        Contents=pdf.make_stream("\n".join(ops).encode()),
        Resources=Dictionary(Font=Dictionary(F1=HELVETICA)),
    )
    if rotate:
        page.Rotate = rotate
    if crop:
        page.CropBox = Array(list(crop))
    pdf.pages.append(pikepdf.Page(page))


def _write(pdf, path: Path) -> Path:
    pdf.save(path)
    return path


def _doc(path: Path) -> Document:
    return Document(str(path), path, PurePosixPath(path.stem))


def _poppler_lines(pdf: Path, page: int, *flags: str) -> list[tuple[list[float], str]]:
    """[(xMin, yMin, xMax, yMax) in displayed points, 'words joined by spaces'] per pdftotext line."""
    html = _run("pdftotext", "-bbox-layout", "-f", str(page), "-l", str(page), *flags, str(pdf), "-").decode()
    found = []
    for match in re.finditer(r'<line xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</line>', html, re.S):
        words = re.findall(r">([^<]*)</word>", match.group(5))
        found.append(([float(match.group(i)) for i in range(1, 5)], " ".join(words)))
    return found


def _run(*args: str) -> bytes:
    """Run a poppler tool; it must not complain about the file (syntax errors, broken fonts)."""
    done = subprocess.run(args, check=True, capture_output=True, timeout=60)
    assert done.stderr == b"", done.stderr
    return done.stdout


def _ocr_result(doc: Document, lines_per_page: dict[int, list[Line]], dpi=DPI, **options) -> DocumentResult:
    """A DocumentResult for the pages the app would read, sized as it renders them."""
    pages = []
    for page in iter_pages(doc, PageOptions(dpi=dpi, pages=frozenset(lines_per_page), **options)):
        lines = tuple(lines_per_page[page.number])
        pages.append(PageResult(page.number, page.image.width, page.image.height, page.dpi, False, lines=lines))
    return DocumentResult(doc.source, "test", "ocr", tuple(pages))


def _lines_from_input(path: Path, page: int, dpi=DPI, *flags: str) -> list[Line]:
    """OCR lines where poppler says the input's text is, in rendered pixels."""
    scale = dpi / 72
    return [
        Line(text, BBox(*(round(v * scale) for v in box))) for box, text in _poppler_lines(path, page, *flags)
    ]


def _text_layer_only(output: bytes, original: Path, path: Path) -> Path:
    """The output with the input's own text objects removed, so poppler sees only the OCR text.

    The input's other operators stay, its unclosed `cm` included, so a graphics state
    leaking into the text layer would still move it.
    """
    with pikepdf.open(original) as source:
        originals = {bytes(page.obj.Contents.read_bytes()) for page in source.pages}
    with pikepdf.open(io.BytesIO(output)) as pdf:
        for page in pdf.pages:
            contents = page.obj.Contents
            for stream in contents if isinstance(contents, Array) else [contents]:
                if stream.read_bytes() in originals:
                    stream.write(re.sub(rb"BT.*?ET", b"", stream.read_bytes(), flags=re.S))
        pdf.save(path)
    return path


def _assert_valid(output: bytes) -> None:
    with pikepdf.open(io.BytesIO(output)) as pdf:
        assert pdf.check_pdf_syntax() == []


def _assert_placed(lines: list[Line], found: list[tuple[list[float], str]], dpi=DPI) -> None:
    assert [text for _, text in found] == [line.text for line in lines]
    for line, (box, _) in zip(lines, found):
        expected = [v * 72 / dpi for v in line.bbox.to_list()]
        assert max(abs(a - b) for a, b in zip(box, expected)) <= TOLERANCE_PT, (line.text, box, expected)


def _pypdf_lines(pdf: Path, page: int = 1) -> list[str]:
    from pypdf import PdfReader

    text = PdfReader(pdf).pages[page - 1].extract_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _render(pdf: Path, dpi=50, *flags: str) -> list[bytes]:
    prefix = pdf.with_suffix("")
    _run("pdftoppm", "-r", str(dpi), *flags, str(pdf), str(prefix))
    return [p.read_bytes() for p in sorted(prefix.parent.glob(prefix.name + "-*.ppm"))]


# --- PDF inputs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "rotate, media, crop",
    [
        (0, (0, 0, 400, 300), None),
        (90, (0, 0, 400, 300), None),
        (180, (0, 0, 400, 300), None),
        (270, (0, 0, 400, 300), None),
        (0, (100, 200, 500, 500), (120, 230, 470, 480)),
        (90, (100, 200, 500, 500), (120, 230, 470, 480)),
    ],
)
def test_text_layer_lands_on_the_text(tmp_path, rotate, media, crop):
    source = pikepdf.new()
    _add_text_page(source, media, rotate, crop, shown=media)
    path = _write(source, tmp_path / "in.pdf")
    lines = _lines_from_input(path, 1)
    assert [line.text for line in lines] == [text for text, *_ in TEXTS]  # the fixture reads upright
    output = render_pdf(_doc(path), _ocr_result(_doc(path), {1: lines}))
    _assert_valid(output)
    layer = _text_layer_only(output, path, tmp_path / "layer.pdf")
    _assert_placed(lines, _poppler_lines(layer, 1))
    assert _pypdf_lines(layer) == [line.text for line in lines]
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    assert _render(out_path) == _render(path)


def test_inherited_page_attributes_are_followed(tmp_path):
    """MediaBox, /Rotate and /Resources set on the page tree, not on the page."""
    source = pikepdf.new()
    _add_text_page(source, (0, 0, 400, 300), 90)
    page = source.pages[0].obj
    tree = source.Root.Pages
    tree.MediaBox, tree.Rotate, tree.Resources = page.MediaBox, page.Rotate, page.Resources
    del page.MediaBox, page.Rotate, page.Resources
    path = _write(source, tmp_path / "in.pdf")
    lines = _lines_from_input(path, 1)
    assert [line.text for line in lines] == [text for text, *_ in TEXTS]
    output = render_pdf(_doc(path), _ocr_result(_doc(path), {1: lines}))
    _assert_valid(output)
    _assert_placed(lines, _poppler_lines(_text_layer_only(output, path, tmp_path / "layer.pdf"), 1))
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    assert _render(out_path) == _render(path)


def test_crop_box_rendering_is_placed_too(tmp_path):
    """A page rendered with pdftoppm -cropbox (size of the CropBox) is placed on the CropBox."""
    source = pikepdf.new()
    _add_text_page(source, (100, 200, 500, 500), 0, (120, 230, 470, 480))
    path = _write(source, tmp_path / "in.pdf")
    lines = _lines_from_input(path, 1, DPI, "-cropbox")
    image = Image.open(io.BytesIO(_run("pdftoppm", "-r", str(DPI), "-cropbox", "-png", str(path))))
    result = DocumentResult(str(path), "t", "ocr", (PageResult(1, image.width, image.height, DPI, False, lines=tuple(lines)),))
    output = render_pdf(_doc(path), result)
    found = _poppler_lines(_text_layer_only(output, path, tmp_path / "layer.pdf"), 1, "-cropbox")
    _assert_placed(lines, found)


def test_document_kept_and_unread_pages_get_no_text(tmp_path):
    source = pikepdf.new()
    for rotate in (0, 90, 0):
        _add_text_page(source, rotate=rotate)
    source.pages[1].obj.Annots = source.make_indirect(
        Array([Dictionary(Type=Name.Annot, Subtype=Name.Link, Rect=Array([10, 10, 60, 40]), Border=Array([0, 0, 0]))])
    )
    source.docinfo[Name.Title] = "Fixture title"
    path = _write(source, tmp_path / "in.pdf")
    lines = [Line("only page two", BBox(100, 100, 300, 130))]
    output = render_pdf(_doc(path), _ocr_result(_doc(path), {2: lines}))
    _assert_valid(output)
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    with pikepdf.open(path) as before, pikepdf.open(out_path) as after:
        assert len(after.pages) == len(before.pages) == 3
        assert after.docinfo[Name.Title] == "Fixture title"
        assert len(after.pages[1].obj.Annots) == 1
        for old, new in zip(before.pages, after.pages):
            for key in ("/MediaBox", "/CropBox", "/Rotate"):
                assert repr(old.obj.get(key)) == repr(new.obj.get(key))
    for page in (1, 3):
        assert _run("pdftotext", "-f", str(page), "-l", str(page), str(out_path), "-") == _run(
            "pdftotext", "-f", str(page), "-l", str(page), str(path), "-"
        )
    assert "only page two" in _run("pdftotext", "-f", "2", "-l", "2", str(out_path), "-").decode()
    assert _render(out_path) == _render(path)
    assert render_pdf(_doc(path), _ocr_result(_doc(path), {2: lines})) == output  # deterministic


def test_scanned_pdf_text_comes_back_in_order(tmp_path):
    """An image-only PDF (a scan): everything pdftotext finds is the OCR layer."""
    path = tmp_path / "scan.pdf"
    Image.new("RGB", (400, 300), "white").save(path, resolution=100.0)
    lines = [
        Line("first line with words", BBox(20, 20, 300, 50)),
        Line("second line", BBox(20, 60, 200, 80)),
        Line("third", BBox(20, 100, 90, 120)),
    ]
    result = _ocr_result(_doc(path), {1: lines})
    output = render_pdf(_doc(path), result)
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    _assert_placed(lines, _poppler_lines(out_path, 1))
    assert _run("pdftotext", str(out_path), "-").decode().split() == " ".join(line.text for line in lines).split()
    from_stdin = Document("-", None, PurePosixPath("stdin"), data=path.read_bytes())
    assert render_pdf(from_stdin, result) == output


def test_lines_without_box_are_still_searchable(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), "white").save(path)
    lines = [Line("no box first", None), Line("no box second", None), Line("boxed", BBox(10, 150, 80, 170))]
    output = render_pdf(_doc(path), _image_result(_doc(path), {1: lines}))
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    text = _run("pdftotext", str(out_path), "-").decode()
    assert [line for line in text.splitlines() if line.strip()] == ["no box first", "no box second", "boxed"]


def test_encrypted_pdf_keeps_its_encryption(tmp_path):
    source = pikepdf.new()
    _add_text_page(source)
    path = tmp_path / "locked.pdf"
    source.save(path, encryption=pikepdf.Encryption(user="secret", owner="owner", R=6))
    doc = _doc(path)
    with pytest.raises(PasswordRequired, match="locked.pdf"):
        render_pdf(doc, DocumentResult(str(path), "t", "ocr", ()))
    result = _ocr_result(doc, {1: [Line("hidden words", BBox(300, 350, 500, 380))]}, password="secret")
    output = render_pdf(doc, result, password="secret")
    with pytest.raises(pikepdf.PasswordError):
        pikepdf.open(io.BytesIO(output))
    with pikepdf.open(io.BytesIO(output), password="secret") as pdf:
        assert pdf.is_encrypted and pdf.check_pdf_syntax() == []
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    assert "hidden words" in _run("pdftotext", "-upw", "secret", str(out_path), "-").decode()
    assert _render(out_path, 50, "-upw", "secret") == _render(path, 50, "-upw", "secret")


def test_corrupt_pdf_is_a_typed_error(tmp_path):
    path = tmp_path / "bad.pdf"
    path.write_bytes(b"%PDF-1.7\nthis is not a pdf")
    with pytest.raises(CorruptInput, match="bad.pdf"):
        render_pdf(_doc(path), DocumentResult(str(path), "t", "ocr", ()))


# --- image inputs --------------------------------------------------------------


def _image_result(doc: Document, lines_per_page: dict[int, list[Line]]) -> DocumentResult:
    return _ocr_result(doc, lines_per_page)


def _page_sizes(output: bytes) -> list[tuple[float, float]]:
    with pikepdf.open(io.BytesIO(output)) as pdf:
        return [tuple(float(v) for v in page.obj.MediaBox[2:]) for page in pdf.pages]


def test_png_with_dpi_sets_page_size_and_text_is_placed(tmp_path):
    path = tmp_path / "scan.png"
    Image.new("RGB", (600, 300), "white").save(path, dpi=(150, 150))
    lines = [Line("Invoice number 1234", BBox(30, 40, 400, 80)), Line("Total due", BBox(30, 200, 250, 230))]
    output = render_pdf(_doc(path), _image_result(_doc(path), {1: lines}))
    _assert_valid(output)
    assert _page_sizes(output) == [pytest.approx((600 / 150 * 72, 300 / 150 * 72), abs=0.01)]
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    _assert_placed(lines, _poppler_lines(out_path, 1), dpi=150)


def test_image_without_dpi_uses_image_dpi(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("L", (400, 200), 255).save(path)
    output = render_pdf(_doc(path), _image_result(_doc(path), {1: []}), image_dpi=200)
    assert _page_sizes(output) == [pytest.approx((400 / 200 * 72, 200 / 200 * 72), abs=0.01)]


def _quadrant_jpeg(path: Path, orientation: int) -> Path:
    """A 120x60 JPEG in four colored blocks, with an EXIF orientation."""
    image = Image.new("RGB", (120, 60), (255, 0, 0))
    image.paste((0, 0, 255), (60, 0, 120, 30))
    image.paste((0, 160, 0), (0, 30, 60, 60))
    image.paste((240, 240, 0), (60, 30, 120, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif.tobytes(), dpi=(72, 72))
    return path


def _embedded_images(output: bytes) -> list[tuple[Name, bytes]]:
    with pikepdf.open(io.BytesIO(output)) as pdf:
        return [
            (image.get("/Filter"), image.read_raw_bytes())
            for page in pdf.pages
            for image in page.obj.Resources.XObject.values()
        ]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_embedded_as_is_and_shown_upright(tmp_path, orientation):
    path = _quadrant_jpeg(tmp_path / "photo.jpg", orientation)
    result = _image_result(_doc(path), {1: [Line("label", BBox(5, 5, 50, 20))]})
    output = render_pdf(_doc(path), result)
    _assert_valid(output)
    assert render_pdf(Document("-", None, PurePosixPath("stdin"), data=path.read_bytes()), result) == output
    assert _embedded_images(output) == [(Name.DCTDecode, path.read_bytes())]
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert _page_sizes(output) == [pytest.approx(upright.size, abs=0.01)]
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    rendered = Image.open(io.BytesIO(_run("pdftoppm", "-r", "72", "-png", str(out_path)))).convert("RGB")
    assert rendered.size == upright.size
    for x, y in ((15, 15), (upright.width - 15, 15), (15, upright.height - 15), (upright.width - 15, upright.height - 15)):
        assert max(abs(a - b) for a, b in zip(rendered.getpixel((x, y)), upright.getpixel((x, y)))) < 40, (x, y)


def test_multiframe_tiff_gives_one_page_per_frame(tmp_path):
    path = tmp_path / "scan.tif"
    frames = [Image.new("RGB", (300, 200), "white"), Image.new("1", (200, 400), 1)]
    frames[0].save(path, save_all=True, append_images=frames[1:], dpi=(100, 100))
    lines = [Line("frame two text", BBox(20, 30, 180, 50))]
    output = render_pdf(_doc(path), _image_result(_doc(path), {2: lines}))
    _assert_valid(output)
    assert _page_sizes(output) == [pytest.approx((216, 144), abs=0.01), pytest.approx((144, 288), abs=0.01)]
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    assert _run("pdftotext", "-f", "1", "-l", "1", str(out_path), "-").strip(b"\x0c\n ") == b""
    _assert_placed(lines, _poppler_lines(out_path, 2))


def test_transparent_png_is_composited_on_white_losslessly(tmp_path):
    path = tmp_path / "alpha.png"
    image = Image.new("RGBA", (80, 40), (0, 0, 0, 0))
    image.paste((10, 20, 200, 255), (0, 0, 40, 40))
    image.save(path, dpi=(72, 72))
    output = render_pdf(_doc(path), _image_result(_doc(path), {1: []}))
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    rendered = Image.open(io.BytesIO(_run("pdftoppm", "-r", "72", "-png", str(out_path)))).convert("RGB")
    assert rendered.getpixel((20, 20)) == (10, 20, 200) and rendered.getpixel((60, 20)) == (255, 255, 255)


# --- Unicode -------------------------------------------------------------------

UNICODE_LINES = ["café naïve", "Καλημέρα κόσμε", "漢字テスト", "𝔘𝔫𝔦 😀 ok"]


def _unicode_output(tmp_path) -> Path:
    path = tmp_path / "blank.png"
    Image.new("RGB", (600, 400), "white").save(path, dpi=(100, 100))
    lines = [Line(text, BBox(20, 20 + 50 * i, 400, 50 + 50 * i)) for i, text in enumerate(UNICODE_LINES)]
    lines.append(Line("no box here", None))
    output = render_pdf(_doc(path), _image_result(_doc(path), {1: lines}))
    _assert_valid(output)
    out_path = tmp_path / "out.pdf"
    out_path.write_bytes(output)
    return out_path


def test_unicode_round_trips_through_pdftotext(tmp_path):
    text = _run("pdftotext", str(_unicode_output(tmp_path)), "-").decode()
    assert [line for line in text.splitlines() if line.strip()] == [*UNICODE_LINES, "no box here"]


def test_unicode_round_trips_through_pypdf(tmp_path):
    assert _pypdf_lines(_unicode_output(tmp_path)) == [*UNICODE_LINES, "no box here"]
