"""Runner tests with tiny checkpoints loaded through the real loading path."""

from __future__ import annotations

import pytest
from PIL import Image

import tiny_checkpoint
from kosmos_cli.model.runner import ModelRunner, RunnerSettings

pytestmark = pytest.mark.model


def _images():
    return [Image.new("RGB", (400, 200), "white"), Image.new("RGB", (123, 777), (10, 200, 30)),
            Image.effect_noise((300, 300), 60).convert("RGB")]  # fmt: skip


def test_trained_checkpoint_reads_fixed_answer_with_each_pages_size(trained_model):
    runner = ModelRunner(RunnerSettings(model=str(trained_model), dtype="float32", max_new_tokens=200))
    outputs = runner.generate(_images(), "ocr")
    assert [o.text for o in outputs] == [tiny_checkpoint.TRAINED_OCR] * 3
    assert [(o.resized_width, o.resized_height) for o in outputs] == [(352, 176), (96, 640), (256, 256)]
    assert not any(o.truncated for o in outputs)
    assert runner.generate(_images()[:1], "md")[0].text == tiny_checkpoint.TRAINED_MD


def test_truncation_flagged(trained_model):
    runner = ModelRunner(RunnerSettings(model=str(trained_model), dtype="float32", max_new_tokens=5))
    assert runner.generate(_images()[:1], "ocr")[0].truncated


def test_batching_does_not_change_greedy_tokens(random_model):
    runner = ModelRunner(RunnerSettings(model=str(random_model), dtype="float32", max_new_tokens=24))
    images = _images()
    batched = runner.generate(images, "ocr")
    alone = [runner.generate([image], "ocr")[0] for image in images]

    def tokens_and_flags(output):
        return output.text, output.resized_width, output.resized_height, output.truncated, output.looping

    assert list(map(tokens_and_flags, batched)) == list(map(tokens_and_flags, alone))


def test_batched_logits_match_single_page_logits(random_model):
    import torch

    # CPU: the processor's tensors are fed to the model as they are.
    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32"))
    images = _images()

    def next_token_logits(batch):
        inputs = runner.processor(text=["<ocr>"] * len(batch), images=batch, max_patches=runner.max_patches,
                                  return_tensors="pt")  # fmt: skip
        inputs.pop("width"), inputs.pop("height")
        with torch.no_grad():
            return runner.model(**inputs).logits[:, -1]

    batched = next_token_logits(images)
    alone = torch.cat([next_token_logits([image]) for image in images])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[0], alone[2])  # the pages do differ, so the check has teeth


def test_looping_generation_stopped_early_and_flagged(random_model, monkeypatch):
    # This random checkpoint starts with 12 copies of one coordinate token and drifts on
    # with runs of up to ~40; with the loop threshold lowered to 8 copies its first run is a loop.
    import kosmos_cli.model.repetition

    runner = ModelRunner(RunnerSettings(model=str(random_model), dtype="float32", max_new_tokens=200))
    assert runner.generate(_images()[:1], "ocr")[0].truncated  # default threshold: runs on to the limit
    monkeypatch.setattr(kosmos_cli.model.repetition, "MIN_SPAN", 8)
    output = runner.generate(_images()[:1], "ocr")[0]
    assert output.looping and not output.truncated
    assert output.text.count("<") == 1  # one token repeated; the repeats cut to one copy


def test_confidences_do_not_depend_on_batching(random_model):
    runner = ModelRunner(RunnerSettings(model=str(random_model), dtype="float32", max_new_tokens=24))
    images = _images()
    batched = runner.generate(images, "ocr")
    alone = [runner.generate([image], "ocr")[0] for image in images]
    for one, other in zip(batched, alone):
        assert one.confidence is not None and 0 < one.confidence <= 1
        assert one.confidence == pytest.approx(other.confidence, rel=1e-5)
        assert len(one.segment_confidences) == len(other.segment_confidences) == one.text.count("<bbox>") + 1
        assert one.segment_confidences == pytest.approx(other.segment_confidences, rel=1e-5)


def test_confidence_is_the_chosen_tokens_probability(trained_model):
    import math

    import torch

    runner = ModelRunner(RunnerSettings(model=str(trained_model), device="cpu", dtype="float32", max_new_tokens=200))
    image = _images()[0]
    output = runner.generate([image], "ocr")[0]
    # Reference: generate's own scores for the same greedy run.
    inputs = runner.processor(text=["<ocr>"], images=[image], max_patches=runner.max_patches, return_tensors="pt")
    inputs.pop("width"), inputs.pop("height")
    with torch.no_grad():
        result = runner.model.generate(**inputs, max_new_tokens=200, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True)  # fmt: skip
    chosen = [torch.log_softmax(step[0], -1).max().item() for step in result.scores]
    assert output.confidence == pytest.approx(math.exp(sum(chosen) / len(chosen)), rel=1e-5)
    # The trained checkpoint is sure of its answer.
    assert all(c > 0.9 for c in output.segment_confidences[1:])


def test_compile_setting_reaches_the_decoding_steps(trained_model):
    from kosmos_cli.errors import UsageError
    from kosmos_cli.model import decode_passes

    runner = ModelRunner(RunnerSettings(model=str(trained_model), device="cpu", dtype="float32", compile=True))
    pairs = [(index, runner.prepare(image)) for index, image in enumerate(_images())]
    outputs = {item.key: item.output for item in runner.decode_stream(pairs, "ocr", slots=2)}
    assert runner.last_decoder.passes.step_layers is decode_passes._compiled_layers()
    assert [outputs[index].text for index in range(3)] == [output.text for output in runner.generate(_images(), "ocr")]
    assert "TOTAL 12.50" in outputs[0].text
    with pytest.raises(UsageError, match="--compile applies to --batching continuous"):
        ModelRunner(RunnerSettings(model=str(trained_model), batching="static", compile=True))
