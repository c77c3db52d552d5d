"""Loop detection on token sequences, including shapes of real OCR output."""

from kosmos_cli.model.repetition import find_loop, required_repeats, trim_loop


def test_single_token_loop_needs_a_long_run():
    assert find_loop([5] * 95) is None
    assert find_loop([1, 2] + [5] * 96) == (2, 1)


def test_line_repeated_four_times_is_a_loop():
    line = list(range(100, 130))  # 30 tokens: box + text + newline
    head = [1, 2, 3]
    assert find_loop(head + line * 3) is None
    assert find_loop(head + line * 4) == (3, 30)
    assert trim_loop(head + line * 5) == (head + line, True)


def test_loop_cut_mid_block_is_found():
    line = list(range(10, 40))
    tokens = [7] + line * 4 + line[:11]
    assert find_loop(tokens) == (1, 30)
    assert trim_loop(tokens) == ([7] + line, True)


def test_repeated_text_with_different_boxes_is_not_a_loop():
    # The same text on several lines of a receipt: coordinates differ, so no loop.
    lines = []
    for y in range(10):
        lines += [900, 1000 + y, 2000 + y, 1100 + y, 2100 + y, 901, 50, 51, 52, 13]
    assert find_loop(lines) is None
    assert trim_loop(lines) == (lines, False)


def test_required_repeats():
    assert required_repeats(1) == 96
    assert required_repeats(30) == 4
    assert required_repeats(256) == 4
