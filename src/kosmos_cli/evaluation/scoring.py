"""One page's prediction against its ground truth -> a `PageEval` record. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import PageResult
from .groundtruth import PageTruth
from .metrics import DEFAULT_IOU, PageScore, first_difference, score_lines, score_text


@dataclass(frozen=True)
class Difference:
    """The first line (1-based, in reading order) where prediction and truth part."""

    line: int
    predicted: str
    truth: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "predicted": self.predicted, "truth": self.truth}


@dataclass(frozen=True)
class ModelPageEval:
    """One model's score on one page, where it first went wrong (None: identical text), and
    whether its reading was cut short (`truncated`: --max-new-tokens; `looping`: repeats stopped)."""

    score: PageScore
    difference: Difference | None = None
    truncated: bool = False
    looping: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = self.score.to_dict()
        out["first_difference"] = self.difference.to_dict() if self.difference else None
        out["truncated"], out["looping"] = self.truncated, self.looping
        return out


def score_page(predicted: PageResult, truth: PageTruth, min_iou: float = DEFAULT_IOU) -> ModelPageEval:
    """Score a page the model read against its ground truth (both in page pixels)."""
    if truth.markdown is not None:
        predicted_text = predicted.markdown if predicted.markdown is not None else "\n".join(l.text for l in predicted.lines)
        score = score_text(predicted_text, truth.markdown)
        predicted_lines, truth_lines = predicted_text.split("\n"), truth.markdown.split("\n")
    else:
        pairs = [(line.text, line.bbox) for line in predicted.lines]
        score = score_lines(pairs, truth.lines, min_iou, boxes=truth.boxes)
        predicted_lines, truth_lines = [line.text for line in predicted.lines], truth.texts
    found = first_difference(predicted_lines, truth_lines)
    difference = Difference(found[0] + 1, found[1], found[2]) if found else None
    return ModelPageEval(score, difference, predicted.truncated, predicted.looping)
