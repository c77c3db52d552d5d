"""Ground truth: finding the file that goes with an input, pairing its pages with the input's,
and turning them into page pixels (`truth_formats.py` reads the files).

Everything here runs before the model loads: a pair that cannot be scored raises a
`GroundTruthError` subclass naming the file and page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import BoxOutsidePage, GroundTruthError, GroundTruthMissing, GroundTruthUnreadable, PageCountMismatch
from ..inputs.documents import Document, PageGeometry, PageOptions, page_geometry
from ..results import BBox
from .truth_formats import UNITS_PER_INCH, TruthFile, TruthPage, read_truth

# Looked for in this order, for an input `a.png`: `a.png<suffix>` first, then `a<suffix>`.
TRUTH_SUFFIXES = {
    "ocr": (".json", ".xml", ".hocr", ".html", ".txt"),
    # .md first: next to a scan, a.json is more likely `ocr`'s output than `md --format json`'s.
    "md": (".md", ".json", ".txt"),
}
# Rounding (unit conversion, a PDF page's size computed rather than rendered) may put a
# correct box this many pixels past the page's edge; such boxes are clipped, not refused.
EDGE_TOLERANCE = 1


@dataclass(frozen=True)
class PageTruth:
    """One page's ground truth in page pixels, ready to score: (text, box) lines, or markdown."""

    lines: tuple[tuple[str, BBox | None], ...] = ()
    markdown: str | None = None
    boxes: bool = True

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.lines]


# --- finding ------------------------------------------------------------------


def candidate_paths(doc: Document, task: str, truth_dir: Path | None = None) -> list[Path]:
    """Where the ground truth of `doc` may be, in the order they are tried.

    Next to the input (or, with `truth_dir`, under it at the input's place in the folder
    it was found in): the input's full name plus a suffix (`a.png.json`), then its stem
    plus a suffix (`a.json`): exactly the names `kosmos25 ocr -o` writes.
    """
    if doc.path is None:
        return []
    if truth_dir is None:
        folder = doc.path.parent
    else:
        folder = truth_dir / Path(*PurePosixPath(doc.output_name).parent.parts)
    suffixes = TRUTH_SUFFIXES[task]
    names = [doc.path.name + suffix for suffix in suffixes]
    if doc.path.suffix:
        names += [doc.path.stem + suffix for suffix in suffixes]
    return [folder / name for name in names]


def find_truth(doc: Document, task: str, truth_dir: Path | None = None) -> Path:
    """The first existing candidate path; GroundTruthMissing naming where it looked."""
    candidates = candidate_paths(doc, task, truth_dir)
    for path in candidates:
        if path.is_file():
            return path
    if not candidates:
        raise GroundTruthMissing(f"{doc.source}: standard input has no ground truth file; pass a file path")
    shown = ", ".join(str(path) for path in candidates[:2])
    suffixes = "/".join(TRUTH_SUFFIXES[task])
    raise GroundTruthMissing(f"{doc.source}: no ground truth found (looked for {shown}, ... with {suffixes})")


# --- pairing ------------------------------------------------------------------


def pair_pages(doc: Document, truth: TruthFile, total: int, pages: list[PageGeometry]) -> dict[int, TruthPage]:
    """Which truth page goes with each selected page of the document.

    Files that state page numbers (kosmos25 JSON, multi-page markdown) pair by number;
    the others pair by position and must have exactly the document's page count.
    """
    numbered = [page for page in truth.pages if page.number is not None]
    if numbered and len(numbered) == len(truth.pages):
        by_number = {page.number: page for page in numbered}
        missing = [geometry.number for geometry in pages if geometry.number not in by_number]
        if missing:
            raise PageCountMismatch(
                f"{doc.source}: ground truth {truth.path} has no page {missing[0]} "
                f"(it has page{'s' * (len(by_number) != 1)} {', '.join(map(str, sorted(by_number)))})"
            )
        return {geometry.number: by_number[geometry.number] for geometry in pages}
    if len(truth.pages) != total:
        raise PageCountMismatch(
            f"{doc.source}: has {total} page{'s' * (total != 1)} but its ground truth {truth.path} has "
            f"{len(truth.pages)}"
        )
    return {geometry.number: truth.pages[geometry.number - 1] for geometry in pages}


def resolve_page(doc: Document, truth: TruthFile, page: TruthPage, geometry: PageGeometry) -> PageTruth:
    """A truth page in page pixels: units converted, stated size and boxes checked against the page."""
    where = f"{doc.source}: page {geometry.number}: ground truth {truth.path}"
    if page.markdown is not None:
        return PageTruth(markdown=page.markdown, boxes=False)
    scale = 1.0
    if page.unit != "pixel":
        if geometry.dpi is None:
            raise GroundTruthUnreadable(
                f"{where} measures in {page.unit}, which needs the image's resolution, and the image states none"
            )
        scale = geometry.dpi / UNITS_PER_INCH[page.unit]
    if page.size is not None:
        width, height = page.size[0] * scale, page.size[1] * scale
        if abs(width - geometry.width) > EDGE_TOLERANCE or abs(height - geometry.height) > EDGE_TOLERANCE:
            raise PageCountMismatch(
                f"{where} is for a {width:.0f}x{height:.0f}-pixel page, but the page is "
                f"{geometry.width}x{geometry.height}" + (" (check --dpi)" if doc.is_pdf else "")
            )
    lines = []
    for number, line in enumerate(page.lines, 1):
        box = None
        if line.box is not None:
            x0, y0, x1, y1 = (round(value * scale) for value in line.box)
            limit_x, limit_y = geometry.width + EDGE_TOLERANCE, geometry.height + EDGE_TOLERANCE
            if min(x0, y0) < -EDGE_TOLERANCE or x1 > limit_x or y1 > limit_y:
                raise BoxOutsidePage(
                    f"{where}: line {number} ({line.text[:30]!r}) has box [{x0}, {y0}, {x1}, {y1}], outside the "
                    f"{geometry.width}x{geometry.height} page"
                )
            box = BBox(max(x0, 0), max(y0, 0), min(x1, geometry.width), min(y1, geometry.height))
            if box.x0 >= box.x1 or box.y0 >= box.y1:
                box = None  # an empty box places nothing; the line still counts, as one without a box
        lines.append((line.text, box))
    return PageTruth(tuple(lines), boxes=page.boxes)


@dataclass(frozen=True)
class DocumentTruth:
    """A document's ground truth, page by page: a `PageTruth`, or the error that rules the page out."""

    path: Path
    format: str
    pages: dict[int, PageTruth | GroundTruthError]
    geometry: dict[int, PageGeometry]


def load_document_truth(
    doc: Document, task: str, page_options: PageOptions, truth_dir: Path | None = None
) -> DocumentTruth:
    """Find, read and pair a document's ground truth, checking every selected page.

    Raises an InputError (GroundTruthError for the ground truth's own problems) when
    the document as a whole cannot be scored; a single bad page is kept as its error.
    """
    path = find_truth(doc, task, truth_dir)
    truth = read_truth(path, task)
    total, geometry = page_geometry(doc, page_options)
    paired = pair_pages(doc, truth, total, geometry)
    pages: dict[int, PageTruth | GroundTruthError] = {}
    for page in geometry:
        try:
            pages[page.number] = resolve_page(doc, truth, paired[page.number], page)
        except GroundTruthError as error:
            pages[page.number] = error
    return DocumentTruth(path, truth.format, pages, {page.number: page for page in geometry})
