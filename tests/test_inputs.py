"""Input tests: discovery, output naming, page selection, image modes, PDFs."""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import numpy as np
import pytest
from PIL import Image

from images import encrypted_pdf, exif_rotated_jpeg, multipage_pdf, multipage_tiff
from kosmos_cli.errors import (
    CorruptInput,
    ImageTooLarge,
    PageOutOfRange,
    PasswordRequired,
    UnsupportedInput,
    UsageError,
)
from kosmos_cli.inputs.documents import PageOptions, collect_documents, iter_pages, parse_page_selection, to_rgb


def _pages(path, **options):
    docs, errors = collect_documents([str(path)])
    assert not errors
    return list(iter_pages(docs[0], PageOptions(**options)))


def test_page_selection_parsing():
    assert parse_page_selection("1-3,7") == {1, 2, 3, 7}
    assert parse_page_selection(" 2 ") == {2}
    assert parse_page_selection(None) is None
    for bad in ("0", "3-1", "a", "1-", "1,,2"):
        with pytest.raises(UsageError):
            parse_page_selection(bad)


def test_directory_walk_sorted_recursive_supported_only(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.tiff", "sub/deeper/d.pdf", "notes.txt", ".hidden.png", "z.PNG"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    docs, errors = collect_documents([str(tmp_path)])
    assert not errors
    assert [str(d.output_name) for d in docs] == ["a", "b", "z", "sub/c", "sub/deeper/d"]


def test_same_stem_in_one_folder_keeps_suffix(tmp_path):
    for name in ("a.png", "a.pdf", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    docs, _ = collect_documents([str(tmp_path)])
    assert [str(d.output_name) for d in docs] == ["a.pdf", "a.png", "b"]


def test_same_named_files_from_two_arguments_are_refused(tmp_path):
    for name in ("x/a.png", "y/a.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UsageError, match="same output file"):
        collect_documents([str(tmp_path / "x/a.png"), str(tmp_path / "y/a.png")])


def test_missing_path_is_an_error_not_an_exception(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    docs, errors = collect_documents([str(tmp_path / "missing.png"), str(tmp_path / "a.png")])
    assert len(docs) == 1
    assert "missing.png: no such file or directory" in errors[0][1].message


def test_duplicate_paths_read_once(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    docs, _ = collect_documents([str(tmp_path / "a.png"), str(tmp_path)])
    assert len(docs) == 1


def test_stdin_document():
    data = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(data, format="PNG")
    docs, _ = collect_documents(["-"], stdin=io.BytesIO(data.getvalue()))
    assert docs[0].output_name == PurePosixPath("stdin")
    pages = list(iter_pages(docs[0], PageOptions()))
    assert pages[0].image.size == (40, 30)


def test_exif_orientation_applied(tmp_path):
    page = _pages(exif_rotated_jpeg(tmp_path / "r.jpg"))[0]
    assert page.image.size == (100, 300) and page.dpi is None


def test_multipage_tiff_every_frame_and_selection(tmp_path):
    path = multipage_tiff(tmp_path / "m.tif")
    assert [(p.number, p.image.size) for p in _pages(path)] == [(1, (400, 200)), (2, (200, 400)), (3, (300, 300))]
    assert [p.number for p in _pages(path, pages=frozenset({2, 3}))] == [2, 3]
    with pytest.raises(PageOutOfRange, match="page 5 but the document has 3 pages"):
        _pages(path, pages=frozenset({5}))


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert len(_pages(tmp_path / "a.gif")) == 1


@pytest.mark.parametrize("fmt", ["webp", "bmp", "png", "tiff"])
def test_other_formats_read(tmp_path, fmt):
    Image.new("RGB", (33, 17), (1, 2, 3)).save(tmp_path / f"a.{fmt}")
    page = _pages(tmp_path / f"a.{fmt}")[0]
    assert page.image.mode == "RGB" and page.image.size == (33, 17)


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 128))
    assert to_rgb(la).getpixel((0, 0)) == (127, 127, 127)
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_and_cmyk_and_bilevel():
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    mid = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # 128 * 257
    assert to_rgb(mid).getpixel((0, 0)) == (128, 128, 128)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_text_file_named_png_is_corrupt(tmp_path):
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(CorruptInput, match="fake.png: not a readable image"):
        _pages(tmp_path / "fake.png")


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptInput, match="file is empty"):
        _pages(tmp_path / "empty.png")
    full = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(full, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(CorruptInput, match="cut.jpg"):
        _pages(tmp_path / "cut.jpg")


def test_unsupported_type(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedInput, match="unsupported file type '.txt'"):
        _pages(tmp_path / "notes.txt")


def test_pixel_limit(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageTooLarge, match="10,000 pixels, above the limit of 9,999"):
        _pages(tmp_path / "big.png", max_pixels=9999)


def test_pdf_pages_rendered_lazily_with_numbers_and_dpi(tmp_path):
    path = multipage_pdf(tmp_path / "d.pdf", pages=3)
    pages = _pages(path, dpi=100, pages=frozenset({2, 3}))
    assert [(p.number, p.image.size, p.dpi) for p in pages] == [(2, (300, 400), 100), (3, (300, 400), 100)]
    with pytest.raises(PageOutOfRange):
        _pages(path, pages=frozenset({4}))


def test_pdf_password(tmp_path):
    path = encrypted_pdf(tmp_path / "locked.pdf")
    with pytest.raises(PasswordRequired, match="locked.pdf: PDF is encrypted"):
        _pages(path)
    with pytest.raises(PasswordRequired):
        _pages(path, password="wrong")
    assert len(_pages(path, password="secret", dpi=50)) == 1


def test_pdf_from_stdin(tmp_path):
    data = multipage_pdf(tmp_path / "d.pdf", pages=2).read_bytes()
    docs, _ = collect_documents(["-"], stdin=io.BytesIO(data))
    assert [p.number for p in iter_pages(docs[0], PageOptions(dpi=50))] == [1, 2]


def test_corrupt_pdf(tmp_path):
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 garbage")
    with pytest.raises(CorruptInput, match="bad.pdf: not a readable PDF"):
        _pages(tmp_path / "bad.pdf")
