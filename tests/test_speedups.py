"""The vision encoder runs the requested attention kernel, not eager attention, with fused
element-wise steps, and gives the same result as transformers' own code."""

from __future__ import annotations

import pytest
import torch
from images import gradient_pages

from kosmos_cli.model.compat import cache_keyword
from kosmos_cli.model.runner import ModelRunner, RunnerSettings
from kosmos_cli.model.speedups import lookup_is_broken

pytestmark = pytest.mark.model


def test_lookup_detection():
    broken = "attention_interface: Callable = getattr(\n    ALL_ATTENTION_FUNCTIONS, self.config._attn_implementation, eager)"
    fixed = "attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)"
    assert lookup_is_broken(broken)
    assert not lookup_is_broken(fixed)


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
    inputs = runner.processor(text=["<ocr>"] * 2, images=gradient_pages(), max_patches=runner.max_patches, return_tensors="pt")
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
    inputs = runner.processor(text=["<ocr>"] * 2, images=gradient_pages(), max_patches=runner.max_patches, return_tensors="pt")
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

    images = gradient_pages()
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
    pages = [runner.prepare(image) for image in gradient_pages()]
    inputs = {key: value.repeat(2, 1) for key, value in runner._prompt("ocr").items()}
    inputs["flattened_patches"] = torch.stack([page.flattened_patches for page in pages])
    settings = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False)
    with torch.no_grad():
        dynamic = runner.model.generate(**inputs, **settings)
        cache = growing_cache(step=4)  # small step: the buffer grows several times
        growing = runner.model.generate(**inputs, **settings, **{cache_keyword(): cache})
    assert torch.equal(dynamic, growing)
    assert cache.get_seq_length() == dynamic.shape[1] - 1  # the last token is never fed back
