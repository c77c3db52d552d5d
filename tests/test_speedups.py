"""The vision encoder runs the requested attention kernel, not eager attention, with fused
element-wise steps, and gives the same result as transformers' own code."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from kosmos_cli.model.compat import cache_keyword
from kosmos_cli.model.runner import ModelRunner, RunnerSettings
from kosmos_cli.model.speedups import lookup_is_broken

pytestmark = pytest.mark.model


def test_lookup_detection():
    broken = "attention_interface: Callable = getattr(\n    ALL_ATTENTION_FUNCTIONS, self.config._attn_implementation, eager)"
    fixed = "attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)"
    assert lookup_is_broken(broken)
    assert not lookup_is_broken(fixed)


def _images():
    """Two fixed pages of different shapes (deterministic, unlike effect_noise)."""
    return [Image.radial_gradient("L").resize((300, 200)).convert("RGB"), Image.linear_gradient("L").resize((100, 500)).convert("RGB")]


def _counting(calls: dict, name: str, function):
    def counted(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)

    return counted


def _vision_run(runner, monkeypatch):
    """Run only the vision encoder and count which attention kernels it calls."""
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    from kosmos_cli.model import cpu_attention

    calls = {"eager": 0, "sdpa": 0, "kosmos25_cpu": 0}
    for module, name, key in (
        (modeling_kosmos2_5, "eager_attention_forward", "eager"),
        (torch.nn.functional, "scaled_dot_product_attention", "sdpa"),
        (cpu_attention, "many_query_attention", "kosmos25_cpu"),
    ):
        monkeypatch.setattr(module, name, _counting(calls, key, getattr(module, name)))
    inputs = runner.processor(text=["<ocr>"] * 2, images=_images(), max_patches=runner.max_patches, return_tensors="pt")
    with torch.no_grad():
        hidden = runner.model.vision_model(flattened_patches=inputs["flattened_patches"]).last_hidden_state
    monkeypatch.undo()
    return hidden, calls


@pytest.fixture
def upstream_registry():
    """Take back the attribute-lookup fix before and after a test: upstream's state."""
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    registry = modeling_kosmos2_5.ALL_ATTENTION_FUNCTIONS

    def reset():
        for name in list(vars(registry)):
            if name in registry:
                delattr(registry, name)

    reset()
    yield reset
    reset()


def test_vision_encoder_uses_the_cpu_kernel_and_matches_eager(random_model, monkeypatch, upstream_registry):
    layers = 2  # tiny checkpoint's vision layers
    eager_runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32", attn="eager"))
    eager_hidden, eager_calls = _vision_run(eager_runner, monkeypatch)
    assert eager_calls == {"eager": layers, "sdpa": 0, "kosmos25_cpu": 0}

    upstream_registry()
    fast_runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32", attn="sdpa"))
    assert fast_runner.fast_vision_attention and not eager_runner.fast_vision_attention
    fast_hidden, fast_calls = _vision_run(fast_runner, monkeypatch)
    assert fast_calls == {"eager": 0, "sdpa": 0, "kosmos25_cpu": layers}
    torch.testing.assert_close(fast_hidden, eager_hidden, rtol=1e-4, atol=1e-5)


def test_vision_elementwise_steps_are_fused_and_equal(random_model):
    from transformers.activations import GELUTanh, NewGELUActivation
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    from kosmos_cli.model.speedups import fuse_vision_elementwise

    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32", attn="eager"))
    vision = runner.model.vision_model
    norms = [m for m in vision.modules() if type(m) is modeling_kosmos2_5.Kosmos2_5LayerNorm]
    assert len(norms) == 2 * 2 + 1 and sum(isinstance(m, NewGELUActivation) for m in vision.modules()) == 2
    parameter_names = [name for name, _ in vision.named_parameters()]
    inputs = runner.processor(text=["<ocr>"] * 2, images=_images(), max_patches=runner.max_patches, return_tensors="pt")
    with torch.no_grad():
        before = vision(flattened_patches=inputs["flattened_patches"]).last_hidden_state
        assert fuse_vision_elementwise(runner.model) == 5 + 2
        after = vision(flattened_patches=inputs["flattened_patches"]).last_hidden_state
    assert not any(type(m) is modeling_kosmos2_5.Kosmos2_5LayerNorm for m in vision.modules())
    assert sum(isinstance(m, GELUTanh) for m in vision.modules()) == 2
    assert [name for name, _ in vision.named_parameters()] == parameter_names  # same weights, same names
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_greedy_tokens_identical_with_and_without_the_speedups(
    trained_model, random_model, upstream_registry, monkeypatch
):
    from kosmos_cli.model import runner as runner_module
    from kosmos_cli.model.cpu_attention import CpuKernels

    images = _images()
    results = {}
    # sdpa on CPU: kosmos25's CPU kernels (the defaults at the tiny model's shapes, or
    # torch's SDPA for both kinds, as a machine that measures it faster picks) + the vision fix.
    ways = {"eager": None, "sdpa": None, "sdpa kernels": CpuKernels("sdpa", "sdpa", measured=True)}
    for way, kernels in ways.items():
        upstream_registry()
        if kernels is not None:
            monkeypatch.setattr(runner_module, "measure_cpu_kernels", lambda *shape: kernels)
        for name, model in (("trained", trained_model), ("random", random_model)):
            settings = RunnerSettings(model=str(model), device="cpu", dtype="float32", attn=way.split()[0], max_new_tokens=40)
            runner = ModelRunner(settings)
            assert runner.cpu_kernels == (None if way == "eager" else kernels or CpuKernels())
            results[way, name] = runner.generate(images, "ocr")
    for name in ("trained", "random"):
        eager = results["eager", name]
        for way in ("sdpa", "sdpa kernels"):
            fast = results[way, name]
            assert [(o.text, o.truncated, o.looping) for o in eager] == [(o.text, o.truncated, o.looping) for o in fast]
            # Confidences agree to float32 rounding (the kernels sum in another order).
            assert [o.confidence for o in eager] == pytest.approx([o.confidence for o in fast], rel=1e-5)


def test_cpu_kernels_are_measured_and_registered_at_real_patch_counts(random_model):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32", max_patches=1024))
    assert runner.cpu_kernels.measured
    assert ALL_ATTENTION_FUNCTIONS[runner.attention].keywords["kernels"] == runner.cpu_kernels


def test_growing_cache_gives_the_same_tokens_as_dynamic_cache(random_model):
    from kosmos_cli.model.speedups import growing_cache

    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32"))
    pages = [runner.prepare(image) for image in _images()]
    inputs = {key: value.repeat(2, 1) for key, value in runner._prompt("ocr").items()}
    inputs["flattened_patches"] = torch.stack([page.flattened_patches for page in pages])
    settings = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False)
    with torch.no_grad():
        dynamic = runner.model.generate(**inputs, **settings)
        cache = growing_cache(step=4)  # small step: the buffer grows several times
        growing = runner.model.generate(**inputs, **settings, **{cache_keyword(): cache})
    assert torch.equal(dynamic, growing)
    assert cache.get_seq_length() == dynamic.shape[1] - 1  # the last token is never fed back


def _runner_without_packing(monkeypatch, settings):
    from kosmos_cli.model import runner as runner_module

    with monkeypatch.context() as patched:
        patched.setattr(runner_module, "pack_linear_weights", lambda model, **options: 0)
        return ModelRunner(settings)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_weights_are_packed_in_bf16_and_give_the_same_products(random_model, monkeypatch):
    from kosmos_cli.model.speedups import pack_linear_weights

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
    inputs = plain.processor(text=["<ocr>"] * 2, images=_images(), max_patches=plain.max_patches, return_tensors="pt")
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
        pages = [runner.prepare(image) for image in _images()]
        streamed = {s.key: s.output for s in runner.decode_stream(enumerate(pages), "ocr", slots=2)}
        outputs[way, "continuous"] = [(streamed[k].text, streamed[k].truncated, streamed[k].looping) for k in range(2)]
        outputs[way, "static"] = [(o.text, o.truncated, o.looping) for o in runner.generate_prepared(pages, "ocr")]
    assert outputs["packed", "continuous"] == outputs["plain", "continuous"] == outputs["packed", "static"]
    assert outputs["packed", "static"] == outputs["plain", "static"]
    assert all(text for text, _, _ in outputs["packed", "continuous"])


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_products_of_many_rows_in_float32_and_a_decoding_steps_rows_packed(random_model, monkeypatch):
    from kosmos_cli.model import speedups
    from kosmos_cli.model.speedups import pack_linear_weights

    settings = RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16")
    widened, reference = _runner_without_packing(monkeypatch, settings), _runner_without_packing(monkeypatch, settings)
    pack_linear_weights(widened.model, float32_from=4)
    packed = ModelRunner(settings)  # packed, products in bf16 (this machine's choice is not asserted here)
    packed_fc1 = packed.model.text_model.model.layers[0].ffn.fc1
    packed_fc1.float32_from = None
    ours, plain = widened.model.text_model.model.layers[0].ffn.fc1, reference.model.text_model.model.layers[0].ffn.fc1
    calls = {"float32": 0}
    monkeypatch.setattr(speedups, "_float32_product", _counting(calls, "float32", speedups._float32_product))
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
    from kosmos_cli.model.speedups import MANY_ROWS

    settings = RunnerSettings(model=str(trained_model), device="cpu", dtype="bfloat16")
    plain = _runner_without_packing(monkeypatch, settings)
    monkeypatch.setattr(runner_module, "float32_products_faster", lambda threads: True)
    widened = ModelRunner(settings)
    assert widened.float32_products
    for part in (widened.model.text_model.model.layers, widened.model.vision_model.encoder):
        assert {getattr(m, "float32_from", None) for m in part.modules() if hasattr(m, "float32_from")} == {MANY_ROWS}
    outputs = {}
    for way, runner in (("widened", widened), ("plain", plain)):
        pages = [runner.prepare(image) for image in _images()]
        streamed = {s.key: s.output for s in runner.decode_stream(enumerate(pages), "ocr", slots=2)}
        outputs[way] = [(streamed[k].text, streamed[k].truncated, streamed[k].looping) for k in range(2)]
    assert outputs["widened"] == outputs["plain"]
    assert all(text for text, _, _ in outputs["widened"])
    described = Reader(str(trained_model), device="cpu", dtype="bfloat16").describe()
    assert "products of many rows in float32" in described


@pytest.mark.skipif("amx_bf16" not in open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else True,
                    reason="the answer is known only for CPUs with AMX")  # fmt: skip
def test_float32_products_are_not_chosen_on_a_cpu_with_amx():
    from kosmos_cli.model.speedups import float32_products_faster

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
    from kosmos_cli.model.speedups import release_mapped_pages

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
