"""Ground-truth files read into pages of lines (in the file's own units) or markdown.

Formats (by suffix; `.xml` by its root element):
- kosmos25's own JSON (`ocr --format json`, `md --format json`): pages by number;
- ALTO XML (`TextLine` HPOS/VPOS/WIDTH/HEIGHT in its `MeasurementUnit`: pixel, mm10 or
  inch1200, converted with the page's resolution);
- hOCR (`ocr_line`-like elements and their `bbox`);
- PAGE XML (a `TextLine`'s `Coords` polygon's bounding box, its own `TextEquiv` text);
- `.md` (markdown task; pages separated by `<!-- page N -->` as `md` writes them);
- `.txt` (one line per line, pages separated by form feeds as `ocr --format txt` writes):
  text only, no line metrics.

A file that cannot be read raises `GroundTruthUnreadable` naming it; `groundtruth.py`
finds the file that goes with an input and turns its pages into page pixels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import GroundTruthUnreadable

# Units ALTO measures in, per inch (pixel needs the page's resolution instead).
UNITS_PER_INCH = {"mm10": 254.0, "inch1200": 1200.0}


@dataclass(frozen=True)
class TruthLine:
    """One true line; `box` in the file's units until `resolve_page` turns it into pixels."""

    text: str
    box: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class TruthPage:
    """One page as a ground-truth file gives it.

    `number`: the page number the file states (kosmos25 JSON), else None (pages are then
    taken in order). `size`: the page size the file states, in its units, if any.
    `unit`: pixel, mm10 or inch1200. `boxes`: whether lines carry boxes at all.
    """

    lines: tuple[TruthLine, ...] = ()
    markdown: str | None = None
    number: int | None = None
    size: tuple[float, float] | None = None
    unit: str = "pixel"
    boxes: bool = True


@dataclass(frozen=True)
class TruthFile:
    """A parsed ground-truth file: its path, format name and pages in file order."""

    path: Path
    format: str
    pages: tuple[TruthPage, ...]


def read_truth(path: Path, task: str) -> TruthFile:
    """Parse a ground-truth file by its suffix (and `.xml` by its root element)."""
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GroundTruthUnreadable(f"{path}: cannot read ground truth ({exc.strerror or exc})") from None
    if suffix == ".json":
        truth = _read_kosmos_json(path, data)
    elif suffix in (".xml", ".hocr", ".html", ".htm"):
        truth = _read_xml(path, data, html=suffix != ".xml")
    elif suffix in (".txt", ".md"):
        text = _decode(path, data)
        truth = _read_md(path, text) if suffix == ".md" else _read_txt(path, text, task)
    else:
        raise GroundTruthUnreadable(f"{path}: unsupported ground truth type '{suffix}'")
    is_markdown = any(page.markdown is not None for page in truth.pages)
    if task == "ocr" and is_markdown:
        raise GroundTruthUnreadable(f"{path}: ground truth is markdown; use it with --task md")
    if task == "md" and truth.format not in ("md", "kosmos25-md", "txt"):
        raise GroundTruthUnreadable(f"{path}: {truth.format} ground truth has lines, not markdown; use --task ocr")
    return truth


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GroundTruthUnreadable(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _bad(path: Path, what: str) -> GroundTruthUnreadable:
    return GroundTruthUnreadable(f"{path}: not a kosmos25 JSON result ({what})")


def _read_kosmos_json(path: Path, data: bytes) -> TruthFile:
    try:
        doc = json.loads(_decode(path, data))
    except json.JSONDecodeError as exc:
        raise GroundTruthUnreadable(f"{path}: invalid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pages"), list):
        raise _bad(path, "no 'pages' list")
    pages = []
    for index, page in enumerate(doc["pages"], 1):
        if not isinstance(page, dict) or not isinstance(page.get("page"), int):
            raise _bad(path, f"page entry {index} has no page number")
        size = None
        if isinstance(page.get("width"), (int, float)) and isinstance(page.get("height"), (int, float)):
            size = (float(page["width"]), float(page["height"]))
        if isinstance(page.get("markdown"), str):
            pages.append(TruthPage(markdown=page["markdown"], number=page["page"], size=size, boxes=False))
            continue
        if not isinstance(page.get("lines"), list):
            raise _bad(path, f"page {page['page']} has neither 'lines' nor 'markdown'")
        lines = []
        for line in page["lines"]:
            if not isinstance(line, dict) or not isinstance(line.get("text"), str):
                raise _bad(path, f"page {page['page']}: a line without 'text'")
            box = line.get("bbox")
            if box is not None and not (
                isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            ):
                raise _bad(path, f"page {page['page']}: bbox {box!r} is not [x0, y0, x1, y1]")
            lines.append(TruthLine(line["text"], tuple(float(v) for v in box) if box else None))
        pages.append(TruthPage(tuple(lines), number=page["page"], size=size))
    is_md = any(page.markdown is not None for page in pages)
    return TruthFile(path, "kosmos25-md" if is_md else "kosmos25", tuple(pages))


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _read_xml(path: Path, data: bytes, html: bool) -> TruthFile:
    from lxml import etree

    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, recover=html, huge_tree=False)
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise GroundTruthUnreadable(f"{path}: not well-formed XML ({exc})") from None
    if root is None:
        raise GroundTruthUnreadable(f"{path}: empty XML document")
    name = _local(root.tag)
    if name.lower() == "alto":
        return _read_alto(path, root)
    if name == "PcGts":
        return _read_page_xml(path, root)
    if name.lower() == "html":
        return _read_hocr(path, root)
    raise GroundTruthUnreadable(f"{path}: XML root <{name}> is neither ALTO, PAGE XML nor hOCR")


def _children(element, name: str):
    return [child for child in element.iter() if _local(child.tag) == name]


def _number(path: Path, element, attribute: str) -> float | None:
    value = element.get(attribute)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise GroundTruthUnreadable(f"{path}: {_local(element.tag)} {attribute}={value!r} is not a number") from None


def _read_alto(path: Path, root) -> TruthFile:
    units = [el.text.strip() for el in _children(root, "MeasurementUnit") if el.text]
    unit = units[0] if units else "pixel"  # ALTO's default unit when none is stated
    if unit not in ("pixel", "mm10", "inch1200"):
        raise GroundTruthUnreadable(f"{path}: ALTO MeasurementUnit {unit!r} is not pixel, mm10 or inch1200")
    pages = []
    for page in _children(root, "Page"):
        width, height = _number(path, page, "WIDTH"), _number(path, page, "HEIGHT")
        lines = []
        for line in _children(page, "TextLine"):
            words = []
            for part in line:
                kind = _local(part.tag)
                if kind == "String":
                    words.append(part.get("CONTENT", ""))
                elif kind == "HYP" and words:
                    words[-1] += part.get("CONTENT", "-")  # a hyphen ends the last word, no space
            values = [_number(path, line, key) for key in ("HPOS", "VPOS", "WIDTH", "HEIGHT")]
            box = None
            if None not in values:
                x, y, w, h = values
                box = (x, y, x + w, y + h)
            lines.append(TruthLine(" ".join(words), box))
        size = (width, height) if width and height else None
        pages.append(TruthPage(tuple(lines), size=size, unit=unit))
    return TruthFile(path, "alto", tuple(pages))


_HOCR_LINES = {"ocr_line", "ocr_header", "ocr_caption", "ocr_textfloat", "ocrx_line"}
_BBOX = re.compile(r"(?:^|;)\s*bbox\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)")


def _hocr_box(element) -> tuple[float, float, float, float] | None:
    match = _BBOX.search(element.get("title", ""))
    return tuple(float(v) for v in match.groups()) if match else None


def _classes(element) -> set[str]:
    return set(element.get("class", "").split())


def _read_hocr(path: Path, root) -> TruthFile:
    pages = []
    for page in (el for el in root.iter() if "ocr_page" in _classes(el)):
        page_box = _hocr_box(page)
        lines = []
        for line in (el for el in page.iter() if _classes(el) & _HOCR_LINES):
            words = [" ".join("".join(w.itertext()).split()) for w in line.iter() if "ocrx_word" in _classes(w)]
            text = " ".join(w for w in words if w) if words else " ".join("".join(line.itertext()).split())
            lines.append(TruthLine(text, _hocr_box(line)))
        size = (page_box[2] - page_box[0], page_box[3] - page_box[1]) if page_box else None
        pages.append(TruthPage(tuple(lines), size=size))
    if not pages:
        raise GroundTruthUnreadable(f"{path}: hOCR without any ocr_page element")
    return TruthFile(path, "hocr", tuple(pages))


def _read_page_xml(path: Path, root) -> TruthFile:
    pages = []
    for page in _children(root, "Page"):
        width, height = _number(path, page, "imageWidth"), _number(path, page, "imageHeight")
        lines = []
        for line in _children(page, "TextLine"):
            coords = next((c for c in line if _local(c.tag) == "Coords"), None)
            box = _polygon_box(path, coords.get("points", "")) if coords is not None else None
            # The line's own TextEquiv (not its words'); the first one, or the one with index 1.
            equivs = [e for e in line if _local(e.tag) == "TextEquiv"]
            equivs.sort(key=lambda e: e.get("index", "1") != "1")
            unicode = next((u for e in equivs[:1] for u in e if _local(u.tag) == "Unicode"), None)
            lines.append(TruthLine(unicode.text or "" if unicode is not None else "", box))
        pages.append(TruthPage(tuple(lines), size=(width, height) if width and height else None))
    return TruthFile(path, "page-xml", tuple(pages))


def _polygon_box(path: Path, points: str) -> tuple[float, float, float, float] | None:
    try:
        xy = [tuple(float(v) for v in point.split(",")) for point in points.split()]
    except ValueError:
        raise GroundTruthUnreadable(f"{path}: PAGE XML Coords points {points[:40]!r} are not x,y pairs") from None
    if not xy or any(len(point) != 2 for point in xy):
        return None
    xs, ys = [x for x, _ in xy], [y for _, y in xy]
    return min(xs), min(ys), max(xs), max(ys)


def _read_txt(path: Path, text: str, task: str) -> TruthFile:
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages = pages[:-1]  # a trailing form feed ends the last page, it does not start another
    if task == "md":
        return TruthFile(path, "txt", tuple(TruthPage(markdown=page, boxes=False) for page in pages))
    return TruthFile(
        path,
        "txt",
        tuple(TruthPage(tuple(TruthLine(line, None) for line in page.split("\n") if line.strip()), boxes=False)
              for page in pages),  # fmt: skip
    )


_MD_PAGE = re.compile(r"^<!-- page (\d+) -->\n", re.MULTILINE)


def _read_md(path: Path, text: str) -> TruthFile:
    parts = _MD_PAGE.split(text)
    if len(parts) == 1:
        return TruthFile(path, "md", (TruthPage(markdown=text, boxes=False),))
    numbers, bodies = parts[1::2], parts[2::2]
    pages = tuple(TruthPage(markdown=body, number=int(n), boxes=False) for n, body in zip(numbers, bodies))
    return TruthFile(path, "md", pages)
