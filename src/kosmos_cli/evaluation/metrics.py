"""Accuracy metrics for one page: pure functions over texts and boxes, no model needed.

Definitions (the README's "How good is it on my documents?" restates them):

- Text is compared after Unicode NFC normalisation, as sequences of grapheme clusters
  (`regex`'s `\\X`), so "e" + U+0301 and "é" are the same single character.
- A page's text is its lines in reading order (the order the model wrote them, the order
  of the ground truth file), each stripped of surrounding whitespace, empty lines dropped,
  joined by one newline. The newlines count as characters.
- CER = Levenshtein distance over grapheme clusters / number of ground-truth clusters.
  WER = the same over words (runs of non-whitespace). Unordered WER (bag of words) =
  (max(|T|, |P|) - |T ∩ P|) / |T|, with T and P the multisets of true and predicted
  words: the fewest substitutions, insertions and deletions once order is ignored.
- Lines: predicted and true lines with boxes are paired one to one by box IoU with the
  optimal assignment (Hungarian method); pairs under the IoU threshold are dropped.
  Precision = pairs / predicted lines, recall = pairs / true lines. Line CER sums the
  edits within pairs, plus every unpaired true line's length (deleted) and every
  unpaired predicted line's length (inserted), over the true lines' total length.
  Lines without a box (on either side) cannot be located, so they are left out of the
  line metrics and counted apart (`unboxed`); their text still counts in CER and WER.
- Totals over many pages add up edits and lengths (and pair counts) first and divide
  once: they are not means of per-page ratios.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import regex

from ..results import BBox

DEFAULT_IOU = 0.5
_GRAPHEME = regex.compile(r"\X")


def normalize(text: str) -> str:
    """NFC, so that composed and decomposed forms of a character compare equal."""
    return unicodedata.normalize("NFC", text)


def graphemes(text: str) -> list[str]:
    """The user-perceived characters of `text` (after NFC)."""
    return _GRAPHEME.findall(normalize(text))


def words(text: str) -> list[str]:
    """Words: maximal runs of non-whitespace (after NFC)."""
    return normalize(text).split()


def page_text(lines: Sequence[str]) -> str:
    """Lines in reading order as one text: each stripped, empty ones dropped, joined by newlines."""
    return "\n".join(stripped for stripped in (line.strip() for line in lines) if stripped)


def _distance(predicted: Sequence[str], truth: Sequence[str]) -> int:
    from rapidfuzz.distance import Levenshtein

    # rapidfuzz compares sequences of hashables element by element: here clusters or words.
    return Levenshtein.distance(list(predicted), list(truth))


@dataclass(frozen=True)
class Rate:
    """Edits against a ground-truth length; `value` is their ratio.

    `value` is None when the truth is empty but edits were needed (any prediction on an
    empty page): the ratio is undefined there, yet the edits still count in totals.
    """

    edits: int = 0
    length: int = 0

    @property
    def value(self) -> float | None:
        if self.length:
            return self.edits / self.length
        return 0.0 if self.edits == 0 else None

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.edits + other.edits, self.length + other.length)


def cer(predicted: str, truth: str) -> Rate:
    """Character error: grapheme-cluster edit distance and the truth's cluster count."""
    truth_chars = graphemes(truth)
    return Rate(_distance(graphemes(predicted), truth_chars), len(truth_chars))


def wer(predicted: str, truth: str) -> Rate:
    """Word error: word-level edit distance and the truth's word count."""
    truth_words = words(truth)
    return Rate(_distance(words(predicted), truth_words), len(truth_words))


def wer_unordered(predicted: str, truth: str) -> Rate:
    """Bag-of-words error: (max(|T|, |P|) - |T ∩ P|) over |T|, ignoring word order."""
    truth_bag, predicted_bag = Counter(words(truth)), Counter(words(predicted))
    common = sum((truth_bag & predicted_bag).values())
    truth_total, predicted_total = sum(truth_bag.values()), sum(predicted_bag.values())
    return Rate(max(truth_total, predicted_total) - common, truth_total)


def iou(a: BBox, b: BBox) -> float:
    """Intersection over union of two boxes (right/bottom exclusive)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union


@dataclass(frozen=True)
class LineMatch:
    """Counts from pairing one page's predicted and true lines by their boxes.

    `iou_sum` is the sum of the pairs' IoUs; `text` the line CER (edits within pairs,
    plus unpaired lines as wholly deleted or inserted, over the true lines' length).
    """

    predicted: int = 0
    truth: int = 0
    paired: int = 0
    iou_sum: float = 0.0
    text: Rate = Rate()

    @property
    def precision(self) -> float | None:
        return self.paired / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.paired / self.truth if self.truth else None

    @property
    def f1(self) -> float | None:
        if not self.predicted and not self.truth:
            return None
        # 2PR/(P+R) written with counts, so it is defined when either side is empty (then 0).
        return 2 * self.paired / (self.predicted + self.truth)

    @property
    def mean_iou(self) -> float | None:
        return self.iou_sum / self.paired if self.paired else None

    def __add__(self, other: LineMatch) -> LineMatch:
        return LineMatch(
            self.predicted + other.predicted,
            self.truth + other.truth,
            self.paired + other.paired,
            self.iou_sum + other.iou_sum,
            self.text + other.text,
        )


def match_lines(
    predicted: Sequence[tuple[str, BBox | None]],
    truth: Sequence[tuple[str, BBox | None]],
    min_iou: float = DEFAULT_IOU,
) -> LineMatch:
    """Pair lines (text, box) one to one by IoU with the optimal assignment.

    Lines without a box are not located, so they are left out here (see the module docstring).
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    predicted = [line for line in predicted if line[1] is not None]
    truth = [line for line in truth if line[1] is not None]
    predicted_boxed, truth_boxed = list(range(len(predicted))), list(range(len(truth)))
    pairs: list[tuple[int, int, float]] = []
    if predicted_boxed and truth_boxed:
        overlap = np.array([[iou(predicted[i][1], truth[j][1]) for j in truth_boxed] for i in predicted_boxed])
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        pairs = [
            (predicted_boxed[r], truth_boxed[c], float(overlap[r, c]))
            for r, c in zip(rows, cols)
            if overlap[r, c] >= min_iou and overlap[r, c] > 0
        ]
    text = Rate()
    for i, j, _ in pairs:
        text += cer(predicted[i][0].strip(), truth[j][0].strip())
    paired_predicted = {i for i, _, _ in pairs}
    paired_truth = {j for _, j, _ in pairs}
    for j, (line, _) in enumerate(truth):
        if j not in paired_truth:
            text += Rate(len(graphemes(line.strip())), len(graphemes(line.strip())))
    for i, (line, _) in enumerate(predicted):
        if i not in paired_predicted:
            text += Rate(len(graphemes(line.strip())), 0)
    return LineMatch(len(predicted), len(truth), len(pairs), sum(score for _, _, score in pairs), text)


@dataclass(frozen=True)
class PageScore:
    """All metrics of one page (or, summed, of many). `lines` is None without true boxes."""

    chars: Rate = Rate()
    words: Rate = Rate()
    words_unordered: Rate = Rate()
    lines: LineMatch | None = None
    unboxed_predicted: int = 0
    unboxed_truth: int = 0

    def __add__(self, other: PageScore) -> PageScore:
        if self.lines is None:
            lines = other.lines
        elif other.lines is None:
            lines = self.lines
        else:
            lines = self.lines + other.lines
        return PageScore(
            self.chars + other.chars,
            self.words + other.words,
            self.words_unordered + other.words_unordered,
            lines,
            self.unboxed_predicted + other.unboxed_predicted,
            self.unboxed_truth + other.unboxed_truth,
        )

    def to_dict(self) -> dict:
        """The report's metric keys (line keys only where lines were scored)."""
        out = {
            "cer": _round(self.chars.value),
            "wer": _round(self.words.value),
            "wer_unordered": _round(self.words_unordered.value),
            "char_edits": self.chars.edits,
            "chars": self.chars.length,
            "word_edits": self.words.edits,
            "words": self.words.length,
        }
        if self.lines is not None:
            lines = self.lines
            out |= {
                "line_precision": _round(lines.precision),
                "line_recall": _round(lines.recall),
                "line_f1": _round(lines.f1),
                "mean_iou": _round(lines.mean_iou),
                "line_cer": _round(lines.text.value),
                "predicted_lines": lines.predicted,
                "true_lines": lines.truth,
                "paired_lines": lines.paired,
                "unboxed_predicted_lines": self.unboxed_predicted,
                "unboxed_true_lines": self.unboxed_truth,
            }
        return out


METRIC_KEYS = ("cer", "wer", "wer_unordered", "line_precision", "line_recall", "line_f1", "mean_iou", "line_cer")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def score_text(predicted: str, truth: str) -> PageScore:
    """CER, WER and unordered WER of a page's whole text (markdown, or text-only truth)."""
    predicted, truth = predicted.strip(), truth.strip()
    return PageScore(cer(predicted, truth), wer(predicted, truth), wer_unordered(predicted, truth))


def score_lines(
    predicted: Sequence[tuple[str, BBox | None]],
    truth: Sequence[tuple[str, BBox | None]],
    min_iou: float = DEFAULT_IOU,
    boxes: bool = True,
) -> PageScore:
    """Text metrics over the joined lines, plus line pairing by box when `boxes` (the truth has them)."""
    score = score_text(page_text([t for t, _ in predicted]), page_text([t for t, _ in truth]))
    if not boxes:
        return score
    kept_truth = [(t, b) for t, b in truth if t.strip()]
    kept_predicted = [(t, b) for t, b in predicted if t.strip()]
    return PageScore(
        score.chars,
        score.words,
        score.words_unordered,
        match_lines(kept_predicted, kept_truth, min_iou),
        sum(box is None for _, box in kept_predicted),
        sum(box is None for _, box in kept_truth),
    )


def first_difference(predicted: Sequence[str], truth: Sequence[str]) -> tuple[int, str, str] | None:
    """The first line (0-based index, predicted, true) where the two texts part, in reading order.

    Lines are compared as `page_text` keeps them; a missing line is the empty string.
    """
    left = page_text(predicted).split("\n") if page_text(predicted) else []
    right = page_text(truth).split("\n") if page_text(truth) else []
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else ""
        b = right[index] if index < len(right) else ""
        if normalize(a) != normalize(b):
            return index, a, b
    return None

