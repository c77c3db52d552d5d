"""The model stage's records: a page as the model takes it (`PreparedPage`), the text it
gives back (`RawOutput`), and how a page's generated tokens become that record's flags and
confidences. Pure data and pure functions, shared by static batches and the decode loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .repetition import trim_loop


@dataclass(frozen=True)
class PreparedPage:
    """One page as the model takes it: its patches and the size the processor resized it to."""

    flattened_patches: Any
    resized_width: int
    resized_height: int


@dataclass(frozen=True)
class RawOutput:
    """The model's text for one page and the size of the image it actually saw.

    `segment_confidences`: one per part of the output that starts at a `<bbox>` token
    (the first part is what precedes the first box, usually nothing), as parsing splits
    the text; `confidence`: the whole page's. Both are geometric means of the chosen
    tokens' probabilities, None where there were no tokens.
    """

    text: str
    resized_width: int
    resized_height: int
    truncated: bool
    looping: bool = False
    segment_confidences: tuple[float | None, ...] = ()
    confidence: float | None = None


def mean_probability(logprobs: list[float]) -> float | None:
    """Geometric mean of the probabilities whose logarithms are given; None for none."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else None


def segment_confidences(
    tokens: list[int], logprobs: list[float], box_token_id: int, eos_token_id: int
) -> tuple[float | None, ...]:
    """Confidence of each part of the output that starts at a `<bbox>` token.

    The first part holds the tokens before the first box (usually none). The end
    token belongs to no line. Parsing splits the decoded text at the same places.
    """
    parts: list[list[float]] = [[]]
    for token, logprob in zip(tokens, logprobs):
        if token == box_token_id:
            parts.append([])
        if token != eos_token_id:
            parts[-1].append(logprob)
    return tuple(mean_probability(part) for part in parts)


def finish_row(row: list[int], eos_token_id: int, detect_loops: bool = True) -> tuple[list[int], bool, bool]:
    """One page's generated tokens -> (tokens, truncated, looping).

    A page that ended before others in its batch is padded after its EOS; the row is
    cut there, so padding is never mistaken for a loop. A row without EOS either
    stopped repeating itself (looping) or ran into max_new_tokens (truncated).
    """
    if eos_token_id in row:
        return row[: row.index(eos_token_id) + 1], False, False
    tokens, looping = trim_loop(row) if detect_loops else (row, False)
    return tokens, not looping, looping
