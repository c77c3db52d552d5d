"""fused_layers: the decoder's and the vision encoder's layers as plain calls (with post-ops on
packed weights) compute what the layers' forward computes."""

from __future__ import annotations

import pytest
import torch
from images import gradient_pages

from kosmos_cli.model.cpu_attention import CPU_ATTENTION, register_cpu_attention
from kosmos_cli.model.decode_loop import ContinuousDecoder
from kosmos_cli.model.fused_layers import fuse_vision_layers, run_decoder_layers, run_layers
from kosmos_cli.model.runner import ModelRunner, RunnerSettings

ROWS = 3


def _busy_step(runner: ModelRunner, attention: str):
    """A decoder whose ROWS slots hold pages of different lengths (random cache contents),
    set up for one decoding step: (layers, hidden, mask, cache argument)."""
    runner.model.config.text_config._attn_implementation = attention
    decoder = ContinuousDecoder(runner.model, runner._prompt("ocr"), runner.eos_token_id, 64, slots=ROWS,
                                device="cpu", dtype=runner.dtype)  # fmt: skip
    cache = decoder.new_cache()
    lengths = torch.tensor([decoder.prompt_length + extra for extra in (0, 5, 17)])
    width = int(lengths.max()) + 1
    cache.reserve(width, 0)
    generator = torch.Generator().manual_seed(0)
    for buffer in (*cache.keys, *cache.values):
        buffer.copy_(torch.randn(buffer.shape, generator=generator).to(buffer.dtype))
    cache.start_step(lengths, width)
    embed_dim = runner.model.config.text_config.embed_dim
    hidden = torch.randn(ROWS, 1, embed_dim, generator=generator).to(runner.dtype)
    layers = decoder.passes.transformer.layers
    return layers, hidden, decoder.passes.key_mask(lengths, width), {decoder.passes.cache_keyword: cache}


@pytest.fixture(scope="module")
def float32_runner(random_model):
    register_cpu_attention()
    return ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32"))


@pytest.mark.parametrize("attention", ["sdpa", "eager", CPU_ATTENTION])
def test_step_layers_equal_the_layers_forward_in_float32(float32_runner, attention):
    layers, hidden, mask, cache_argument = _busy_step(float32_runner, attention)
    with torch.inference_mode():
        ours = run_decoder_layers(layers, hidden, mask, cache_argument)
        theirs = run_layers(layers, hidden, mask, cache_argument)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, hidden)


def test_in_training_mode_the_modules_run_as_they_are(float32_runner):
    layers, hidden, mask, cache_argument = _busy_step(float32_runner, "sdpa")
    calls = []
    handle = layers[0].register_forward_hook(lambda *_: calls.append(1))
    layers.train()
    try:
        with torch.no_grad():
            run_decoder_layers(layers, hidden, mask, cache_argument)
    finally:
        layers.eval()
        handle.remove()
    assert calls == [1]


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_packed_bf16_step_runs_gelu_inside_the_product(random_model):
    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16"))
    layers, hidden, mask, cache_argument = _busy_step(runner, runner.attention)
    first_products = []
    handles = [layer.ffn.fc1.register_forward_hook(lambda *_: first_products.append(1)) for layer in layers]
    try:
        with torch.inference_mode():
            ours = run_decoder_layers(layers, hidden, mask, cache_argument)
    finally:
        for handle in handles:
            handle.remove()
    assert first_products == []  # the packed product with its GELU post-op ran instead of fc1's forward
    with torch.inference_mode():
        theirs = run_layers(layers, hidden, mask, cache_argument)
    torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=3e-2)  # bf16: GELU before or after rounding


def _prompt(runner: ModelRunner, attention: str):
    """A decoder set up to prefill ROWS prompts (random hidden states) into fresh caches:
    (layers, hidden, mask, a function giving a fresh cache argument)."""
    runner.model.config.text_config._attn_implementation = attention
    decoder = ContinuousDecoder(runner.model, runner._prompt("ocr"), runner.eos_token_id, 64, slots=ROWS,
                                device="cpu", dtype=runner.dtype)  # fmt: skip

    def fresh_cache():
        cache = decoder.new_cache()
        cache.start_prefill(slice(0, ROWS), decoder.prompt_length)
        return {decoder.passes.cache_keyword: cache}

    embed_dim = runner.model.config.text_config.embed_dim
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(ROWS, decoder.prompt_length, embed_dim, generator=generator).to(runner.dtype)
    mask = decoder.passes.causal_mask(decoder.prompt_length) if attention == "eager" else None
    return decoder.passes.transformer.layers, hidden, mask, fresh_cache


@pytest.mark.parametrize("attention", ["sdpa", "eager", CPU_ATTENTION])
def test_prompt_layers_equal_the_layers_forward_in_float32(float32_runner, attention):
    layers, hidden, mask, fresh_cache = _prompt(float32_runner, attention)
    ours_cache, theirs_cache = fresh_cache(), fresh_cache()
    with torch.inference_mode():
        ours = run_decoder_layers(layers, hidden, mask, ours_cache)
        theirs = run_layers(layers, hidden, mask, theirs_cache)
    assert torch.equal(ours, theirs)
    (ours_cache,), (theirs_cache,) = ours_cache.values(), theirs_cache.values()
    assert all(torch.equal(a, b) for a, b in zip(ours_cache.keys + ours_cache.values, theirs_cache.keys + theirs_cache.values))


@pytest.mark.parametrize("attention", ["sdpa", "eager", CPU_ATTENTION])
def test_prompt_to_its_last_position_only_gives_that_position_and_every_cache_entry(float32_runner, attention):
    layers, hidden, mask, fresh_cache = _prompt(float32_runner, attention)
    ours_cache, theirs_cache = fresh_cache(), fresh_cache()
    final_ffn_rows = []
    handle = layers[-1].ffn.fc1.register_forward_hook(lambda _m, inputs, _o: final_ffn_rows.append(inputs[0].shape[:-1].numel()))
    try:
        with torch.inference_mode():
            ours = run_decoder_layers(layers, hidden, mask, ours_cache, last_position_only=True)
            theirs = run_layers(layers, hidden, mask, theirs_cache)
    finally:
        handle.remove()
    assert final_ffn_rows == [ROWS, ROWS * hidden.shape[1]]  # ours: one position per row; theirs: all
    assert ours.shape == (ROWS, 1, hidden.shape[-1])
    # One query over every key, against the causal kernel's last row: the same sums, other kernels.
    torch.testing.assert_close(ours, theirs[:, -1:], rtol=1e-5, atol=1e-5)
    (ours_cache,), (theirs_cache,) = ours_cache.values(), theirs_cache.values()
    assert all(torch.equal(a, b) for a, b in zip(ours_cache.keys + ours_cache.values, theirs_cache.keys + theirs_cache.values))


def _hooked(modules, calls: list):
    return [module.register_forward_hook(lambda *_: calls.append(1)) for module in modules]


def _vision_output(runner: ModelRunner):
    inputs = runner.processor(text=["<ocr>"] * 2, images=gradient_pages(), max_patches=runner.max_patches, return_tensors="pt")
    with torch.inference_mode():
        patches = inputs["flattened_patches"].to(runner.dtype)
        return runner.model.vision_model(flattened_patches=patches).last_hidden_state


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_packed_bf16_vision_layers_run_gelu_gate_and_residuals_inside_the_products(random_model, monkeypatch):
    from transformers.models.kosmos2_5.modeling_kosmos2_5 import Kosmos2_5VisionLayer

    from kosmos_cli.model import runner as runner_module

    settings = RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16")
    runner = ModelRunner(settings)
    layers = runner.model.vision_model.encoder.layer
    assert all(isinstance(layer, Kosmos2_5VisionLayer) and type(layer).__name__ == "FusedVisionLayer" for layer in layers)
    with monkeypatch.context() as patched:  # the same weights as plain nn.Linear products, layers unfused
        patched.setattr(runner_module, "pack_linear_weights", lambda model, **options: 0)
        plain = ModelRunner(settings)
    assert not any(type(layer).__name__ == "FusedVisionLayer" for layer in plain.model.vision_model.encoder.layer)
    gelu_products, multiplications = [], []
    handles = _hooked([layer.mlp.wi_0 for layer in layers], gelu_products)
    handles += _hooked([layer.mlp for layer in layers], multiplications)
    try:
        ours = _vision_output(runner)
    finally:
        for handle in handles:
            handle.remove()
    assert gelu_products == [] and multiplications == []  # the packed products with post-ops ran instead
    theirs = _vision_output(plain)
    torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=2e-2)  # bf16: each step before or after rounding


def test_unpacked_vision_layers_fall_back_to_their_own_forward(float32_runner):
    before = _vision_output(float32_runner)
    classes = [type(layer) for layer in float32_runner.model.vision_model.encoder.layer]
    keys = float32_runner.model.state_dict().keys()
    assert fuse_vision_layers(float32_runner.model) == len(classes)
    try:
        assert float32_runner.model.state_dict().keys() == keys  # the same modules and weights
        assert torch.equal(_vision_output(float32_runner), before)
    finally:
        for layer, original in zip(float32_runner.model.vision_model.encoder.layer, classes):
            layer.__class__ = original


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU's oneDNN has no bf16 kernels")
def test_packed_bf16_prompt_adds_residuals_inside_the_products(random_model):
    runner = ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="bfloat16"))
    layers, hidden, mask, fresh_cache = _prompt(runner, runner.attention)
    calls = []
    handles = _hooked([module for layer in layers for module in (layer.ffn.fc1, layer.ffn.fc2, layer.self_attn.out_proj)], calls)
    try:
        with torch.inference_mode():
            ours = run_decoder_layers(layers, hidden, mask, fresh_cache())
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    with torch.inference_mode():
        theirs = run_layers(layers, hidden, mask, fresh_cache())
    torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=3e-2)
