"""Box encoding (page pixels -> the model's coordinates) is the exact inverse of `scale_box`."""

from __future__ import annotations

import random

import pytest

from kosmos_cli.parsing import encode_box, format_ocr_target, parse_ocr, resized_size, scale_box
from kosmos_cli.results import BBox


@pytest.mark.parametrize(("width", "height"), [(400, 200), (37, 1001), (1241, 1755), (17, 17)])
def test_resized_size_is_the_processors(width, height):
    from PIL import Image
    from transformers import Kosmos2_5ImageProcessor

    processor = Kosmos2_5ImageProcessor()
    for max_patches in (256, 4096):
        features = processor(images=[Image.new("RGB", (width, height))], max_patches=max_patches, return_tensors="pt")
        assert resized_size(width, height, max_patches) == (int(features["width"][0]), int(features["height"][0]))


@pytest.mark.parametrize(("width", "height"), [(401, 199), (37, 301), (999, 333), (1241, 1755), (1001, 97)])
def test_encode_then_scale_round_trips_within_one_model_pixel(width, height):
    resized = resized_size(width, height, 4096)
    per_x, per_y = width / resized[0], height / resized[1]
    rng = random.Random(width * height)
    for _ in range(200):
        x0, x1 = sorted(rng.sample(range(width + 1), 2))
        y0, y1 = sorted(rng.sample(range(height + 1), 2))
        box = BBox(x0, y0, x1, y1)
        coords = encode_box(box, resized, (width, height))
        back = scale_box(coords, resized, (width, height))
        assert back is not None, (box, coords)
        # Rounding to a model pixel moves an edge by at most half a model pixel, and scale_box's
        # rounding back to page pixels by at most half a page pixel: within one pixel of either.
        for a, b, per in zip(back.to_list(), box.to_list(), (per_x, per_y, per_x, per_y)):
            assert abs(a - b) <= per / 2 + 0.5 + 1e-9, (box, coords, back)
            assert abs(a - b) <= max(per, 1), (box, coords, back)
        # And model coordinates survive the trip exactly: encode(scale(c)) == c.
        assert encode_box(back, resized, (width, height)) == coords


def test_target_text_parses_back_to_the_same_lines():
    page, resized = (401, 199), resized_size(401, 199, 256)
    lines = [("TOTAL 12.50", BBox(18, 9, 200, 45)), ("no box", None), ("edge", BBox(390, 190, 401, 199))]
    target = format_ocr_target(lines, resized, page)
    assert target.startswith("<bbox><x_") and target.count("\n") == 3
    parsed = parse_ocr(target, resized, page)
    assert [line.text for line in parsed] == ["TOTAL 12.50", "no box", "edge"]
    assert parsed[1].bbox is None
    for (_, box), line in zip(lines, parsed):
        if box:
            assert all(abs(a - b) <= 2 for a, b in zip(line.bbox.to_list(), box.to_list()))


def test_coordinates_stay_within_the_models_tokens():
    # A long thin page resizes past 4096 pixels; the model has no <x_4096> or beyond.
    resized = resized_size(3001, 97, 4096)
    assert resized[0] > 4096
    assert encode_box(BBox(2990, 10, 3001, 90), resized, (3001, 97))[2] == 4095
