"""The vision encoder runs SDPA when asked, not eager attention, and gives the same result."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from kosmos_cli.runner import ModelRunner, RunnerSettings
from kosmos_cli.speedups import lookup_is_broken

pytestmark = pytest.mark.model


def test_lookup_detection():
    broken = "attention_interface: Callable = getattr(\n    ALL_ATTENTION_FUNCTIONS, self.config._attn_implementation, eager)"
    fixed = "attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)"
    assert lookup_is_broken(broken)
    assert not lookup_is_broken(fixed)


def _images():
    """Two fixed pages of different shapes (deterministic, unlike effect_noise)."""
    return [Image.radial_gradient("L").resize((300, 200)).convert("RGB"), Image.linear_gradient("L").resize((100, 500)).convert("RGB")]


def _vision_run(runner, monkeypatch):
    """Run only the vision encoder and count which attention kernels it calls."""
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    calls = {"eager": 0, "sdpa": 0}
    eager = modeling_kosmos2_5.eager_attention_forward
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_eager(*args, **kwargs):
        calls["eager"] += 1
        return eager(*args, **kwargs)

    def counting_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(modeling_kosmos2_5, "eager_attention_forward", counting_eager)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
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


def test_vision_encoder_uses_sdpa_and_matches_eager(random_model, monkeypatch, upstream_registry):
    layers = 2  # tiny checkpoint's vision layers
    eager_runner = ModelRunner(RunnerSettings(model=str(random_model), dtype="float32", attn="eager"))
    eager_hidden, eager_calls = _vision_run(eager_runner, monkeypatch)
    assert eager_calls == {"eager": layers, "sdpa": 0}

    upstream_registry()
    sdpa_runner = ModelRunner(RunnerSettings(model=str(random_model), dtype="float32", attn="sdpa"))
    assert sdpa_runner.fast_vision_attention and not eager_runner.fast_vision_attention
    sdpa_hidden, sdpa_calls = _vision_run(sdpa_runner, monkeypatch)
    assert sdpa_calls == {"eager": 0, "sdpa": layers}
    torch.testing.assert_close(sdpa_hidden, eager_hidden, rtol=1e-4, atol=1e-5)


def test_greedy_tokens_identical_with_and_without_the_speedups(trained_model, random_model, upstream_registry):
    images = _images()
    results = {}
    for attn in ("eager", "sdpa"):  # sdpa on CPU: SDPA + the CPU decode kernel + the vision fix
        upstream_registry()
        for name, model in (("trained", trained_model), ("random", random_model)):
            runner = ModelRunner(RunnerSettings(model=str(model), dtype="float32", attn=attn, max_new_tokens=40))
            results[attn, name] = runner.generate(images, "ocr")
    assert results["eager", "trained"] == results["sdpa", "trained"]
    assert results["eager", "random"] == results["sdpa", "random"]


def test_growing_cache_gives_the_same_tokens_as_dynamic_cache(random_model):
    from kosmos_cli.speedups import growing_cache

    runner = ModelRunner(RunnerSettings(model=str(random_model), dtype="float32"))
    pages = [runner.prepare(image) for image in _images()]
    inputs = {key: value.repeat(2, 1) for key, value in runner._prompt("ocr").items()}
    inputs["flattened_patches"] = torch.stack([page.flattened_patches for page in pages])
    settings = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False)
    with torch.no_grad():
        dynamic = runner.model.generate(**inputs, **settings)
        cache = growing_cache(step=4)  # small step: the buffer grows several times
        growing = runner.model.generate(**inputs, **settings, past_key_values=cache)
    assert torch.equal(dynamic, growing)
    assert cache.get_seq_length() == dynamic.shape[1] - 1  # the last token is never fed back


def test_cpu_decode_kernel_matches_sdpa_on_a_growing_cache_view():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from kosmos_cli.speedups import _whole_buffer, growing_cache, register_cpu_attention

    torch.manual_seed(0)
    cache = growing_cache(step=16)
    keys, values = torch.randn(2, 4, 37, 8), torch.randn(2, 4, 37, 8)
    cache.update(keys, values, 0)
    key_view, value_view = cache.update(torch.randn(2, 4, 1, 8), torch.randn(2, 4, 1, 8), 0)
    assert key_view.shape == (2, 4, 38, 8) and _whole_buffer(key_view).shape == (2, 4, 53, 8)
    assert _whole_buffer(keys) is keys or _whole_buffer(keys).data_ptr() == keys.data_ptr()  # contiguous: itself
    assert _whole_buffer(torch.randn(4, 2, 38, 8).transpose(0, 1)) is None  # other layouts: not taken

    class Attention(torch.nn.Module):
        is_causal = True

    query = torch.randn(2, 4, 1, 8)
    mask = torch.zeros(2, 1, 1, 38)
    mask[1, ..., :5] = torch.finfo(torch.float32).min  # a padded start on the second row
    fast, _ = ALL_ATTENTION_FUNCTIONS[register_cpu_attention()](Attention(), query, key_view, value_view, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(Attention(), query, key_view.contiguous(), value_view.contiguous(), mask, scaling=0.3)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
