"""Small test inputs generated in code (no binary fixtures committed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def exif_rotated_jpeg(path: Path) -> Path:
    """A 300x100 landscape JPEG whose EXIF says 'rotate 90° CW' (orientation 6): upright it is 100x300."""
    image = Image.new("RGB", (300, 100), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())
    return path


def multipage_tiff(path: Path, sizes=((400, 200), (200, 400), (300, 300))) -> Path:
    frames = [Image.new("RGB", size, (255, 255, 255)) for size in sizes]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def multipage_pdf(path: Path, pages: int = 3) -> Path:
    """A PDF of `pages` pages, each 3x4 inches at 100 dpi (300x400 pixels at --dpi 100)."""
    frames = [Image.new("RGB", (300, 400), (255, 255, 255)) for _ in range(pages)]
    frames[0].save(path, save_all=True, append_images=frames[1:], resolution=100.0)
    return path


def encrypted_pdf(path: Path, password: str = "secret") -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = multipage_pdf(path.with_name(path.stem + "-plain.pdf"), pages=1)
    writer = PdfWriter()
    for page in PdfReader(plain).pages:
        writer.add_page(page)
    writer.encrypt(password)
    with open(path, "wb") as handle:
        writer.write(handle)
    plain.unlink()
    return path


def pdf_with_big_page(path: Path, big: int = 2) -> Path:
    """A 3-page PDF at 100 dpi whose page `big` is 4 times wider and taller (1200x1600
    pixels at --dpi 100) than the others (300x400): `--max-pixels` between the two sizes
    makes that one page fail and the others read."""
    frames = [Image.new("RGB", (1200, 1600) if number == big else (300, 400), "white") for number in (1, 2, 3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], resolution=100.0)
    return path


def gradient_pages() -> list[Image.Image]:
    """Two fixed pages of different shapes (deterministic, unlike effect_noise)."""
    return [Image.radial_gradient("L").resize((300, 200)).convert("RGB"), Image.linear_gradient("L").resize((100, 500)).convert("RGB")]
