"""records: how a page's generated tokens become its RawOutput's flags and confidences."""

from __future__ import annotations

import math

import pytest

from kosmos_cli.model.records import finish_row, mean_probability, segment_confidences


def test_finish_row_cuts_batch_padding_after_eos():
    eos, pad = 2, 1
    # A page that finished early in a batch whose other page ran on: 100 pad tokens after EOS.
    assert finish_row([5, 6, 7, eos] + [pad] * 100, eos) == ([5, 6, 7, eos], False, False)
    assert finish_row([5, 6] * 3, eos) == ([5, 6] * 3, True, False)  # no EOS, no loop: truncated
    looped = [9] + [4] * 100
    assert finish_row(looped, eos) == ([9, 4], False, True)
    assert finish_row(looped, eos, detect_loops=False) == (looped, True, False)


def test_segment_confidences_split_at_box_tokens_and_skip_eos():
    box, eos = 7, 2
    tokens = [box, 11, 12, box, 13, eos]
    logprobs = [math.log(0.5), math.log(0.5), math.log(0.5), math.log(0.9), math.log(0.1), math.log(0.01)]
    parts = segment_confidences(tokens, logprobs, box, eos)
    assert parts[0] is None  # nothing before the first box
    assert parts[1] == pytest.approx(0.5)
    assert parts[2] == pytest.approx(math.sqrt(0.9 * 0.1))  # the end token belongs to no line


def test_mean_probability_is_the_geometric_mean():
    assert mean_probability([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)
    assert mean_probability([]) is None
