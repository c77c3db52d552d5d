"""Detect a generation that repeats itself (a known failure of long greedy outputs).

A loop is a block of L tokens repeated back to back at the end of the output, at least
`max(MIN_REPEATS, ceil(MIN_SPAN / L))` times: one token 96 times, a 30-token line 4 times.
Real pages repeat a line with different boxes (other coordinate tokens), so identical
consecutive blocks of box + text do not occur in good OCR output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_PERIOD = 256
MIN_REPEATS = 4
MIN_SPAN = 96


def required_repeats(period: int) -> int:
    """How many back-to-back copies of a block of `period` tokens count as a loop."""
    return max(MIN_REPEATS, math.ceil(MIN_SPAN / period))


def find_loop(tokens: Sequence[int], max_period: int = MAX_PERIOD) -> tuple[int, int] | None:
    """Return (start, period) of a loop at the end of `tokens`, or None.

    `start` is where the first copy of the repeated block begins, so
    `tokens[: start + period]` keeps one copy and drops the rest.
    """
    n = len(tokens)
    for period in range(1, min(max_period, n // MIN_REPEATS) + 1):
        need = required_repeats(period) * period
        if need > n:
            continue
        # Length of the periodic run at the end: tokens[i] == tokens[i - period].
        run = 0
        i = n - 1
        while i - period >= 0 and tokens[i] == tokens[i - period]:
            run += 1
            i -= 1
        if run + period >= need:
            start = n - run - period
            return start, period
    return None


def trim_loop(tokens: Sequence[int]) -> tuple[list[int], bool]:
    """Keep one copy of a repeated block at the end; returns (tokens, looped)."""
    loop = find_loop(tokens)
    if loop is None:
        return list(tokens), False
    start, period = loop
    return list(tokens[: start + period]), True
