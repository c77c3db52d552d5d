"""Metrics against values computed by hand (no model)."""

from __future__ import annotations

import pytest

from kosmos_cli.evaluation.metrics import (
    LineMatch,
    PageScore,
    Rate,
    cer,
    first_difference,
    graphemes,
    iou,
    match_lines,
    page_text,
    score_lines,
    score_text,
    wer,
    wer_unordered,
)
from kosmos_cli.results import BBox


def test_cer_counts_substitutions_insertions_deletions():
    assert cer("kitten", "kitten") == Rate(0, 6)
    assert cer("sitten", "kitten") == Rate(1, 6)  # one substitution
    assert cer("kittens", "kitten") == Rate(1, 6)  # one insertion
    assert cer("kiten", "kitten") == Rate(1, 6)  # one deletion
    assert cer("sittin", "kitten").value == pytest.approx(2 / 6)
    # Errors can exceed the truth's length: CER above 1 is possible.
    assert cer("abcdef", "x") == Rate(6, 1)


def test_combining_characters_are_one_character():
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    assert graphemes(decomposed) == ["c", "a", "f", "\u00e9"]
    assert cer(decomposed, composed) == Rate(0, 4)
    # A cluster NFC cannot compose (q + U+0301) is still one character: one substitution.
    assert cer("q\u0301x", "ax") == Rate(1, 2)
    assert cer("cafe", composed) == Rate(1, 4)


def test_wer_and_bag_of_words():
    assert wer("the cat sat", "the cat sat") == Rate(0, 3)
    assert wer("the bat sat", "the cat sat") == Rate(1, 3)
    assert wer("sat the cat", "the cat sat") == Rate(2, 3)  # delete "sat" at the end, insert it first
    assert wer_unordered("sat the cat", "the cat sat") == Rate(0, 3)
    assert wer_unordered("the the cat", "the cat sat") == Rate(1, 3)  # one "the" stands for "sat"
    assert wer_unordered("the cat sat on it", "the cat sat") == Rate(2, 3)  # two insertions
    assert wer_unordered("cat", "the cat sat") == Rate(2, 3)  # two deletions
    assert wer("a  b\nc", "a b c") == Rate(0, 3)  # any whitespace separates words


def test_empty_pages():
    assert cer("", "") == Rate(0, 0) and Rate(0, 0).value == 0.0
    assert cer("abc", "").value is None  # undefined ratio, but the edits still count in totals
    assert cer("abc", "") + cer("abc", "abcd") == Rate(4, 4)
    assert cer("", "abc") == Rate(3, 3)
    score = score_lines([], [])
    assert score.chars.value == 0.0 and score.lines.f1 is None and score.lines.precision is None


def test_page_text_joins_stripped_lines_with_newlines():
    assert page_text(["  TOTAL 12.50 ", "", "Card"]) == "TOTAL 12.50\nCard"
    # The newline between lines is a character: a merged line costs one substitution.
    assert score_text(page_text(["ab cd"]), page_text(["ab", "cd"])).chars == Rate(1, 5)


def test_iou():
    a = BBox(0, 0, 10, 10)
    assert iou(a, a) == 1.0
    assert iou(a, BBox(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou(a, BBox(10, 0, 20, 10)) == 0.0


def test_line_pairing_is_optimal_and_counts_unpaired_lines():
    truth = [("Total 12", BBox(0, 0, 100, 20)), ("Card", BBox(0, 30, 100, 50)), ("Missed", BBox(0, 60, 100, 80))]
    predicted = [
        ("Card", BBox(0, 31, 100, 51)),  # pairs with truth 2 (IoU 19/21)
        ("Total 13", BBox(0, 0, 100, 20)),  # pairs with truth 1, one substitution
        ("Extra", BBox(200, 0, 300, 20)),  # no overlap: inserted
        ("No box", None),  # cannot be located: left out of the line metrics
    ]
    match = match_lines(predicted, truth)
    assert (match.predicted, match.truth, match.paired) == (3, 3, 2)
    assert match.precision == pytest.approx(2 / 3) and match.recall == pytest.approx(2 / 3)
    assert match.f1 == pytest.approx(2 * 2 / 6)
    assert match.mean_iou == pytest.approx((1 + 19 / 21) / 2)
    # edits: 1 (Total 13) + 6 (Missed deleted) + 5 (Extra inserted); truth length 8 + 4 + 6.
    assert match.text == Rate(1 + 6 + 5, 18)
    score = score_lines(predicted, truth + [("Unboxed truth", None)])
    assert (score.unboxed_predicted, score.unboxed_truth) == (1, 1) and score.lines == match


def test_pairing_maximises_total_iou_not_each_lines_best():
    # A's best truth is t1 (0.8 vs 0.75); taking it leaves b with t2 (0.6): total 1.4.
    # The optimal assignment pairs a-t2 and b-t1: total 1.75.
    truth = [("t1", BBox(0, 0, 100, 10)), ("t2", BBox(0, 0, 60, 10))]
    predicted = [("a", BBox(0, 0, 80, 10)), ("b", BBox(0, 0, 100, 10))]
    match = match_lines(predicted, truth, min_iou=0.5)
    assert match.paired == 2 and match.mean_iou == pytest.approx((1.0 + 0.75) / 2)


def test_iou_threshold_drops_weak_pairs():
    truth = [("x", BBox(0, 0, 10, 10))]
    predicted = [("x", BBox(5, 0, 15, 10))]  # IoU 1/3
    assert match_lines(predicted, truth, min_iou=0.5).paired == 0
    assert match_lines(predicted, truth, min_iou=0.3).paired == 1


def test_totals_add_counts_not_ratios():
    short = score_text("b", "a")  # CER 1/1
    long = score_text("abcdefghij", "abcdefghij")  # CER 0/10
    total = short + long
    assert total.chars == Rate(1, 11) and total.chars.value == pytest.approx(1 / 11)  # not (1 + 0) / 2
    with_lines = PageScore(lines=LineMatch(2, 2, 1, 0.8, Rate(3, 10)))
    assert (short + with_lines).lines == with_lines.lines
    summed = with_lines + with_lines
    assert summed.lines.mean_iou == pytest.approx(0.8) and summed.lines.text == Rate(6, 20)


def test_first_difference():
    assert first_difference(["a", "b"], ["a", "b"]) is None
    assert first_difference(["a", "x"], ["a", "b", "c"]) == (1, "x", "b")
    assert first_difference(["a"], ["a", "c"]) == (1, "", "c")
    assert first_difference(["cafe\u0301"], ["caf\u00e9"]) is None


def test_to_dict_has_line_keys_only_with_lines():
    assert "line_f1" not in score_text("a", "a").to_dict()
    keys = score_lines([("a", BBox(0, 0, 1, 1))], [("a", BBox(0, 0, 1, 1))]).to_dict()
    assert keys["line_f1"] == 1.0 and keys["mean_iou"] == 1.0 and keys["cer"] == 0.0
