"""decode_step: a decoding step's layers as plain calls compute what the layers' forward computes."""

from __future__ import annotations

import pytest
import torch

from kosmos_cli.model.cpu_attention import CPU_ATTENTION, register_cpu_attention
from kosmos_cli.model.decode_loop import ContinuousDecoder
from kosmos_cli.model.decode_step import run_layers, run_step_layers
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
    layers = decoder.transformer.layers
    return layers, hidden, decoder._key_mask(lengths, width), {decoder._cache_keyword: cache}


@pytest.fixture(scope="module")
def float32_runner(random_model):
    register_cpu_attention()
    return ModelRunner(RunnerSettings(model=str(random_model), device="cpu", dtype="float32"))


@pytest.mark.parametrize("attention", ["sdpa", "eager", CPU_ATTENTION])
def test_step_layers_equal_the_layers_forward_in_float32(float32_runner, attention):
    layers, hidden, mask, cache_argument = _busy_step(float32_runner, attention)
    with torch.inference_mode():
        ours = run_step_layers(layers, hidden, mask, cache_argument)
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
            run_step_layers(layers, hidden, mask, cache_argument)
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
            ours = run_step_layers(layers, hidden, mask, cache_argument)
    finally:
        for handle in handles:
            handle.remove()
    assert first_products == []  # the packed product with its GELU post-op ran instead of fc1's forward
    with torch.inference_mode():
        theirs = run_layers(layers, hidden, mask, cache_argument)
    torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=3e-2)  # bf16: GELU before or after rounding
