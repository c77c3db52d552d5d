"""packed: weight matrices in oneDNN's layout, products on them (float32 widening, post-ops),
and the release of the plain matrices' mapped pages."""

from __future__ import annotations

import sys

import pytest
import torch

from kosmos_cli.model.runner import ModelRunner, RunnerSettings
from images import gradient_pages

pytestmark = pytest.mark.model

def _runner_without_packing(monkeypatch, settings):
    from kosmos_cli.model import runner as runner_module

    with monkeypatch.context() as patched:
        patched.setattr(runner_module, "pack_linear_weights", lambda model, **options: 0)
        return ModelRunner(settings)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_weights_are_packed_in_bf16_and_give_the_same_products(random_model, monkeypatch):
    from kosmos_cli.model.packed import pack_linear_weights

    settings = RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16")
    packed, plain = ModelRunner(settings), _runner_without_packing(monkeypatch, settings)
    config = packed.model.config
    parts = (packed.model.text_model.model.layers, packed.model.vision_model.encoder, packed.model.image_to_text_projection)
    for part in parts:
        assert not any(type(m) is torch.nn.Linear for m in part.modules())
    # q, k, v, out, fc1, fc2 per decoder layer; query, key, value, output, wi_0, wi_1, wo per vision
    # layer; the image projection's dense, q, k, v, out
    expected = 6 * config.text_config.layers + 7 * config.vision_config.num_hidden_layers + 5
    assert pack_linear_weights(plain.model) == expected
    # The plain matrices are gone (no second copy); the tied vocabulary projection is left as it was.
    for part in (packed.model.text_model.model.layers, packed.model.vision_model.encoder):
        assert [p.dim() for p in part.parameters()] == [1] * len(list(part.parameters()))  # norms and biases
    assert packed.model.text_model.lm_head.weight is packed.model.text_model.model.embed_tokens.weight

    reference = _runner_without_packing(monkeypatch, settings)
    hidden = torch.randn(3, 5, config.text_config.embed_dim, dtype=torch.bfloat16)
    for rows in (hidden[:1, :1], hidden[:, :1], hidden):  # a decoding step's rows and a prompt's
        ours = plain.model.text_model.model.layers[0].ffn(rows)
        theirs = reference.model.text_model.model.layers[0].ffn(rows)
        torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=1e-2)  # bf16 rounding
    inputs = plain.processor(text=["<ocr>"] * 2, images=gradient_pages(), max_patches=plain.max_patches, return_tensors="pt")
    with torch.inference_mode():
        patches = inputs["flattened_patches"].to(torch.bfloat16)
        ours = plain.model.vision_model(flattened_patches=patches).last_hidden_state
        theirs = reference.model.vision_model(flattened_patches=patches).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=2e-2)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_bf16_tokens_with_packed_decoder_weights_match_plain_ones(trained_model, monkeypatch):
    settings = RunnerSettings(model=str(trained_model), device="cpu", dtype="bfloat16")
    outputs = {}
    for way, runner in (("packed", ModelRunner(settings)), ("plain", _runner_without_packing(monkeypatch, settings))):
        pages = [runner.prepare(image) for image in gradient_pages()]
        streamed = {s.key: s.output for s in runner.decode_stream(enumerate(pages), "ocr", slots=2)}
        outputs[way, "continuous"] = [(streamed[k].text, streamed[k].truncated, streamed[k].looping) for k in range(2)]
        outputs[way, "static"] = [(o.text, o.truncated, o.looping) for o in runner.generate_prepared(pages, "ocr")]
    assert outputs["packed", "continuous"] == outputs["plain", "continuous"] == outputs["packed", "static"]
    assert outputs["packed", "static"] == outputs["plain", "static"]
    assert all(text for text, _, _ in outputs["packed", "continuous"])


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_products_of_many_rows_in_float32_and_a_decoding_steps_rows_packed(random_model, monkeypatch):
    from kosmos_cli.model import packed as packed_module
    from kosmos_cli.model.packed import pack_linear_weights

    settings = RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16")
    widened, reference = _runner_without_packing(monkeypatch, settings), _runner_without_packing(monkeypatch, settings)
    pack_linear_weights(widened.model, float32_from=4)
    packed = ModelRunner(settings)  # packed, products in bf16 (this machine's choice is not asserted here)
    packed_fc1 = packed.model.text_model.model.layers[0].ffn.fc1
    packed_fc1.float32_from = None
    ours, plain = widened.model.text_model.model.layers[0].ffn.fc1, reference.model.text_model.model.layers[0].ffn.fc1
    calls = {"float32": 0}
    float32_product = packed_module._float32_product

    def counted(*args):
        calls["float32"] += 1
        return float32_product(*args)

    monkeypatch.setattr(packed_module, "_float32_product", counted)
    rows = torch.randn(2, 3, plain.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        # 6 rows >= 4: widened; the float32 product of the same bf16 numbers, rounded once to bf16.
        expected = torch.nn.functional.linear(rows.float(), plain.weight.float(), plain.bias.float())
        widened_rows = ours(rows)
        assert calls["float32"] == 1 and widened_rows.dtype == torch.bfloat16
        torch.testing.assert_close(widened_rows, expected.to(torch.bfloat16), rtol=8e-3, atol=1e-5)
        # 3 rows < 4: the packed bf16 product, exactly as without widening.
        assert torch.equal(ours(rows[:1]), packed_fc1(rows[:1]))
        assert calls["float32"] == 1


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_runner_widens_products_of_many_rows_where_float32_is_faster(trained_model, monkeypatch):
    from kosmos_cli.api import Reader
    from kosmos_cli.model import runner as runner_module
    from kosmos_cli.model.packed import MANY_ROWS

    settings = RunnerSettings(model=str(trained_model), device="cpu", dtype="bfloat16")
    plain = _runner_without_packing(monkeypatch, settings)
    monkeypatch.setattr(runner_module, "float32_products_faster", lambda threads: True)
    widened = ModelRunner(settings)
    assert widened.float32_products
    for part in (widened.model.text_model.model.layers, widened.model.vision_model.encoder):
        assert {getattr(m, "float32_from", None) for m in part.modules() if hasattr(m, "float32_from")} == {MANY_ROWS}
    outputs = {}
    for way, runner in (("widened", widened), ("plain", plain)):
        pages = [runner.prepare(image) for image in gradient_pages()]
        streamed = {s.key: s.output for s in runner.decode_stream(enumerate(pages), "ocr", slots=2)}
        outputs[way] = [(streamed[k].text, streamed[k].truncated, streamed[k].looping) for k in range(2)]
    assert outputs["widened"] == outputs["plain"]
    assert all(text for text, _, _ in outputs["widened"])
    described = Reader(str(trained_model), device="cpu", dtype="bfloat16").describe()
    assert "products of many rows in float32" in described


@pytest.mark.skipif("amx_bf16" not in open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else True,
                    reason="the answer is known only for CPUs with AMX")  # fmt: skip
def test_float32_products_are_not_chosen_on_a_cpu_with_amx():
    from kosmos_cli.model.packed import float32_products_faster

    # AMX multiplies bf16 about 7x as fast as float32 (this project's machine): never widened there.
    assert float32_products_faster(torch.get_num_threads()) is False


def test_no_packing_in_float32(random_model):
    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32"))
    assert any(type(m) is torch.nn.Linear for m in runner.model.text_model.model.layers.modules())


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_compiled_decoding_keeps_the_decoder_weights_plain(random_model):
    # inductor cannot lower products of packed matrices: --compile packs the vision encoder only.
    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16", compile=True))
    assert any(type(m) is torch.nn.Linear for m in runner.model.text_model.model.layers.modules())
    assert not any(type(m) is torch.nn.Linear for m in runner.model.vision_model.encoder.modules())


def _resident_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_released_pages_of_a_mapped_tensor_leave_memory_and_read_back_from_the_file(tmp_path):
    from kosmos_cli.model.packed import release_mapped_pages

    values = torch.arange(16 * 2**20, dtype=torch.float32)  # 64 MiB
    path = tmp_path / "weights.bin"
    values.numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=values.numel(), dtype=torch.float32)
    assert torch.equal(mapped, values)  # every page read: resident
    before = _resident_file_kib()
    assert release_mapped_pages(mapped)
    assert before - _resident_file_kib() > 60 * 1024
    assert torch.equal(mapped, values)  # read again, from the file

    anonymous = values.clone()
    assert not release_mapped_pages(anonymous)  # never anonymous memory
    assert torch.equal(anonymous, values)
