"""Where a page's time goes, against what this machine can do (`matmul.py`'s yardsticks).

Full-size KOSMOS-2.5 architecture, random weights (`bench.py`'s checkpoint), loaded
through kosmos25's own `ModelRunner` (its kernels and speed-ups), one A4-like page:

1. vision encoder and prefill (image projection + 2052-token prompt): achieved FLOP/s
   (FLOPs counted by `torch.utils.flop_counter`, time measured separately) as a share
   of the measured matrix-product peak, and their time split by kind of operation;
2. one decoding step with every slot busy (each slot a page 150 tokens in): its time
   split by kind of operation, against the bytes it must read (weights, the key/value
   cache) at the measured memory bandwidth;
3. `--compile`: the same step with the decoder layers under `torch.compile`
   (inductor on CPU; on CUDA mode "reduce-overhead", i.e. CUDA graphs), to decide
   whether compiling pays;
4. `--fusion N`: the vision encoder and the prefill with kosmos25's fused layers
   (`fused_layers.py`: post-ops on packed weights) against the layers' own forward on
   the same weights, N rounds interleaved, best of each.

Run: `python benchmarks/profile_model.py [--slots 4,8] [--compile] [--fusion 3]` (a few minutes on 2 cores).
`--device cuda` times the decoding step only (no CPU yardsticks, no per-operator split).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import matmul  # noqa: E402
from bench import build_checkpoint, synthetic_pages  # noqa: E402

# Top-level operator names -> the kind of work they are.
KINDS = {
    "aten::linear": "weight products (linear)",
    "aten::addmm": "weight products (linear)",
    "aten::mm": "weight products (linear)",
    "mkldnn::_linear_pointwise": "weight products (linear)",  # kosmos25's packed weights
    "mkldnn::_linear_pointwise.binary": "weight products (linear)",  # ... with a residual add or the gate
    "aten::matmul": "attention (kosmos25's products + softmax)",
    "aten::bmm": "attention (kosmos25's products + softmax)",
    "aten::softmax": "attention (kosmos25's products + softmax)",
    "aten::_softmax": "attention (kosmos25's products + softmax)",
    "aten::scaled_dot_product_attention": "attention (torch's SDPA kernel)",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (torch's SDPA kernel)",
    "aten::rms_norm": "norms",
    "aten::layer_norm": "norms",
    "aten::gelu": "activations",
    "aten::relu": "activations",
    "aten::contiguous": "copies",
    "aten::clone": "copies",
    "aten::copy_": "copies",
    "aten::to": "copies",
    "aten::_to_copy": "copies",
    "aten::index": "copies",
    "aten::index_put_": "cache writes",
    "aten::_index_put_impl_": "cache writes",
    "aten::masked_fill_": "masking",
    "aten::fill_": "masking",
}


def _synchronized(function):
    if not torch.cuda.is_available():
        return function

    def call():
        function()
        torch.cuda.synchronize()

    return call


def timed(function, repeats: int = 3) -> float:
    """Median seconds per call (after one warm-up call); waits for the GPU where there is one."""
    function = _synchronized(function)
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def _is_packed(module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.is_mkldnn


def counted_flops(function, model) -> dict[str, int]:
    """FLOPs of one call of `function`: "weights" (mm/addmm) and "attention".

    Weight products are counted by torch's FLOP counter; attention as 4 x heads x
    queries x keys x head size per call (half of it when causal), whichever kernel runs
    it (the counter does not see inside torch's fused CPU attention kernel).
    """
    from kosmos_cli.model import cpu_attention, fused_layers

    attention = 0
    original = cpu_attention.many_query_attention

    def counting(query, key, value, mask, scale, causal, kernel=None):
        nonlocal attention
        batch, heads, queries, dim = query.shape
        attention += 4 * batch * heads * queries * key.shape[2] * dim // (2 if causal else 1)
        return original(query, key, value, mask, scale, causal, kernel)

    packed = 0  # the counter has no formula for packed decoder weights' oneDNN products

    def count_packed(module, args, output):
        nonlocal packed
        widened = module.float32_from is not None and args[0].numel() >= module.float32_from * module.in_features
        if not widened:  # a float32 product is an aten product, which the counter counts itself
            packed += 2 * output.numel() * module.in_features

    def count_post_op(product):  # fused_layers' products with post-ops bypass the modules' forward
        def counted(rows, linear, *args):
            nonlocal packed
            output = product(rows, linear, *args)
            packed += 2 * output.numel() * linear.in_features
            return output

        return counted

    hooks = [m.register_forward_hook(count_packed) for m in model.modules() if _is_packed(m)]
    post_ops = {name: getattr(fused_layers, name) for name in ("product_gelu", "product_add", "product_mul")}
    counter = FlopCounterMode(display=False)
    cpu_attention.many_query_attention = counting
    for name, product in post_ops.items():
        setattr(fused_layers, name, count_post_op(product))
    try:
        with counter:
            function()
    finally:
        cpu_attention.many_query_attention = original
        for name, product in post_ops.items():
            setattr(fused_layers, name, product)
        for hook in hooks:
            hook.remove()
    ops = counter.get_flop_counts()["Global"]
    weights = sum(count for op, count in ops.items() if str(op).split(".")[-1] in ("mm", "addmm"))
    return {"weights": weights + packed, "attention": attention}


def time_by_kind(function, lm_head_columns: int | None = None) -> tuple[dict[str, float], float]:
    """Seconds of one call of `function` per kind of operation, and the call's wall time.

    Only top-level operators count (an operator's children are inside its time); what is
    left of the wall time is Python and dispatch between operators.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=lm_head_columns is not None) as prof:
        started = time.perf_counter()
        function()
        wall = time.perf_counter() - started
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.cpu_parent is not None or not event.name.startswith(("aten::", "mkldnn::")):
            continue
        kind = KINDS.get(event.name, "other element-wise")
        if lm_head_columns and kind.startswith("weight") and any(
            lm_head_columns in shape for shape in (event.input_shapes or []) if shape
        ):
            kind = "vocabulary projection (lm_head)"
        kinds[kind] += event.cpu_time_total / 1e6
    kinds["Python and dispatch between operators"] = max(0.0, wall - sum(kinds.values()))
    return dict(kinds), wall


def print_kinds(kinds: dict[str, float], wall: float, flops: dict[str, int] | None = None, peak: float = 0.0) -> None:
    flops = flops or {}
    for kind, seconds in sorted(kinds.items(), key=lambda item: -item[1]):
        note = ""
        kind_flops = flops.get(kind.split()[0].replace("weight", "weights"), 0)
        if kind_flops and seconds and peak:
            note = f"  {kind_flops / seconds / 1e12:.3f} TFLOP/s = {100 * kind_flops / seconds / peak:.0f}% of peak"
        print(f"    {kind:40s} {seconds:8.3f} s  {100 * seconds / wall:5.1f}%{note}")


def profile_prefill(runner, page, peak: float) -> None:
    """Vision encoder, then image projection + prompt, for one page."""
    from kosmos_cli.model.decode_loop import ContinuousDecoder

    patches = page.flattened_patches[None].to(runner.dtype)

    def vision():
        with torch.inference_mode():
            runner.model.vision_model(flattened_patches=patches)

    decoder = ContinuousDecoder(runner.model, runner._prompt("ocr"), runner.eos_token_id, 256, slots=1,
                                device=runner.device, dtype=runner.dtype)  # fmt: skip

    def whole_prefill():
        with torch.inference_mode():
            decoder._prefill(decoder.new_cache(), [("page", page)], 0, None)

    real_patches = int((page.flattened_patches[:, 0] > 0).sum())  # row and column ids start at 1
    print(f"\nvision encoder, 1 page ({real_patches} real patches of {patches.shape[1]}):", flush=True)
    vision_flops = counted_flops(vision, runner.model)
    vision_seconds = timed(vision, repeats=2)
    total_vision = sum(vision_flops.values())
    print(f"  {vision_seconds:.2f} s, {total_vision / 1e12:.2f} TFLOP ({vision_flops['attention'] / 1e12:.2f} in attention) "
          f"-> {total_vision / vision_seconds / 1e12:.3f} "
          f"TFLOP/s = {100 * total_vision / vision_seconds / peak:.0f}% of the matrix-product peak")  # fmt: skip
    kinds, wall = time_by_kind(vision)
    print_kinds(kinds, wall, vision_flops, peak)

    print("\nprefill (image projection + 2052-token prompt), 1 page:", flush=True)
    whole_flops = counted_flops(whole_prefill, runner.model)
    prefill_flops = {kind: count - vision_flops[kind] for kind, count in whole_flops.items()}
    total_prefill = sum(prefill_flops.values())
    with VisionLeftOut(runner.model) as vision_part:
        prefill_seconds = vision_part.timed_without(whole_prefill)
        print(f"  {prefill_seconds:.2f} s, {total_prefill / 1e12:.2f} TFLOP ({prefill_flops['attention'] / 1e12:.2f} "
              f"in attention) -> {total_prefill / prefill_seconds / 1e12:.3f} TFLOP/s = "
              f"{100 * total_prefill / prefill_seconds / peak:.0f}% of the matrix-product peak")  # fmt: skip
        vision_part.seconds = 0.0
        kinds, wall = time_by_kind(whole_prefill)  # the vision encoder's operators sit under its annotation
        rest = "Python and dispatch between operators"
        kinds[rest] = max(0.0, kinds[rest] - vision_part.seconds)
        print_kinds(kinds, wall - vision_part.seconds, prefill_flops, peak)


def compare_fusion(runner, page, rounds: int) -> None:
    """Vision encoder and prefill with the fused layers against the layers' own forward
    (same packed weights), `rounds` rounds interleaved; best time of each way."""
    from transformers.models.kosmos2_5.modeling_kosmos2_5 import Kosmos2_5VisionLayer

    from kosmos_cli.model import decode_passes
    from kosmos_cli.model.decode_loop import ContinuousDecoder
    from kosmos_cli.model.fused_layers import run_layers

    layers = runner.model.vision_model.encoder.layer
    fused_class, fused_prefill = type(layers[0]), decode_passes.run_decoder_layers
    if fused_class is Kosmos2_5VisionLayer:
        print("\nfused layers: not in use (nothing packed: not bf16 on CPU)")
        return
    patches = page.flattened_patches[None].to(runner.dtype)
    decoder = ContinuousDecoder(runner.model, runner._prompt("ocr"), runner.eos_token_id, 256, slots=1,
                                device=runner.device, dtype=runner.dtype)  # fmt: skip

    def unfused_prefill(layers, hidden, mask, cache_argument, last_position_only=False):
        hidden = run_layers(layers, hidden, mask, cache_argument)
        return hidden[:, -1:] if last_position_only else hidden

    def use(fused: bool) -> None:
        for layer in layers:
            layer.__class__ = fused_class if fused else Kosmos2_5VisionLayer
        decode_passes.run_decoder_layers = fused_prefill if fused else unfused_prefill

    def one_page() -> tuple[float, float]:
        with torch.inference_mode(), VisionLeftOut(runner.model) as vision_part:
            started = time.perf_counter()
            decoder._prefill(decoder.new_cache(), [("page", page)], 0, None)
            whole = time.perf_counter() - started
        return vision_part.seconds, whole - vision_part.seconds

    print(f"\nfused layers against the layers' own forward, 1 page ({patches.shape[1]} patches), {rounds} rounds:", flush=True)
    best = {True: [float("inf")] * 2, False: [float("inf")] * 2}
    try:
        for _round in range(rounds):
            for fused in (False, True):
                use(fused)
                best[fused] = [min(pair) for pair in zip(best[fused], one_page())]
    finally:
        use(True)
    for part, index in (("vision encoder", 0), ("prefill (projection + prompt)", 1)):
        plain, fused = best[False][index], best[True][index]
        print(f"  {part}: layers' forward {plain:.2f} s, fused {fused:.2f} s ({plain / fused:.2f}x)")


class VisionLeftOut:
    """Leaves the vision encoder out of a prefill's times: its operators go under a profiler
    annotation (so `time_by_kind` skips them) and its wall time is summed in `seconds`."""

    def __init__(self, model) -> None:
        self.model = model
        self.seconds = 0.0

    def __enter__(self):
        vision = self.model.vision_model
        self.handles = [vision.register_forward_pre_hook(self._begin), vision.register_forward_hook(self._end)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _begin(self, module, args):
        self._annotation = torch.profiler.record_function("vision encoder")
        self._annotation.__enter__()
        self._started = time.perf_counter()

    def _end(self, module, args, output):
        self.seconds += time.perf_counter() - self._started
        self._annotation.__exit__(None, None, None)

    def timed_without(self, function, repeats: int = 2) -> float:
        """Median seconds of `function` minus the vision encoder's part (after a warm-up call)."""
        function()
        times = []
        for _ in range(repeats):
            self.seconds = 0.0
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started - self.seconds)
        return sorted(times)[len(times) // 2]


def busy_decoder(runner, slots: int, generated: int = 150):
    """A decoder with every slot holding a page `generated` tokens in (random cache contents)."""
    from kosmos_cli.model.decode_loop import ContinuousDecoder, _Row

    decoder = ContinuousDecoder(runner.model, runner._prompt("ocr"), runner.eos_token_id, 4096, slots=slots,
                                device=runner.device, dtype=runner.dtype)  # fmt: skip
    cache = decoder.new_cache()
    length = decoder.prompt_length + generated
    cache.reserve(length + 1, 0)
    for buffer in (*cache.keys, *cache.values):
        buffer[:, :, :length].normal_()
    rows = [_Row(index, [5 + index], [0.0], length) for index in range(slots)]
    return decoder, cache, rows


def decode_step_bytes(runner, slots: int, capacity: int) -> tuple[int, int]:
    """Bytes a decoding step must read: (decoder weights incl. lm_head, key/value cache buffers)."""
    text = runner.model.text_model
    weights = sum(p.numel() * p.element_size() for p in text.parameters())  # shared (tied) tensors once
    # Packed weights (speedups.pack_linear_weights) are not parameters.
    weights += sum(m.weight.numel() * m.weight.element_size() for m in text.modules() if _is_packed(m))
    embed = text.model.embed_tokens.weight
    if text.lm_head.weight.data_ptr() != embed.data_ptr():  # untied: the lookup reads only a few rows
        weights -= embed.numel() * embed.element_size()
    config = runner.model.config.text_config
    element = torch.finfo(runner.dtype).bits // 8
    cache = 2 * config.layers * slots * capacity * config.embed_dim * element
    return weights, cache


def profile_decode(runner, slots: int, bandwidth: float, compile_step: bool, split: bool = True) -> None:
    decoder, cache, rows = busy_decoder(runner, slots)

    def step():
        with torch.inference_mode():
            decoder._step(cache, rows, None)

    seconds = timed(step, repeats=5)
    capacity = cache.capacity
    weights, kv = decode_step_bytes(runner, slots, capacity)
    floor = (weights + kv) / bandwidth
    print(f"\ndecoding step, {slots} slots busy (cache capacity {capacity} positions):", flush=True)
    print(f"  {1000 * seconds:.1f} ms per step = {1000 * seconds / slots:.1f} ms per token per page; must read "
          f"{weights / 1e9:.2f} GB of weights + {kv / 1e9:.2f} GB of key/value cache = {floor * 1000:.1f} ms "
          f"at {bandwidth / 1e9:.1f} GB/s ({100 * floor / seconds:.0f}% of the step)")  # fmt: skip
    if split:
        kinds, wall = time_by_kind(step, lm_head_columns=runner.model.config.text_config.vocab_size)
        print_kinds(kinds, wall)
    if compile_step:
        eager_layers = decoder.passes.step_layers
        started = time.perf_counter()
        on_gpu = str(runner.device).startswith("cuda")
        mode = "reduce-overhead" if on_gpu else None  # CUDA graphs: a step's many small kernels in one launch
        decoder.passes.step_layers = torch.compile(eager_layers, dynamic=False, mode=mode)
        try:
            for _ in range(3 if on_gpu else 1):  # CUDA graphs are recorded after warm-up calls
                _synchronized(step)()
        except Exception as exc:  # noqa: BLE001 - a trial: report whatever stops the compiler
            print(f"  torch.compile: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            decoder.passes.step_layers = eager_layers
            return
        print(f"  torch.compile ({mode or 'inductor'}) of the decoder layers: first steps (compiling) "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        compiled = timed(step, repeats=5)
        decoder.passes.step_layers = eager_layers
        eager = timed(step, repeats=5)
        print(f"  compiled {1000 * compiled:.1f} ms per step vs eager {1000 * eager:.1f} ms (same cache, "
              f"measured back to back): {eager / compiled:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", default="4,8", help="busy slots for the decoding step (default 4,8)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile on the decoding step")
    parser.add_argument("--skip-prefill", action="store_true", help="only the decoding step")
    parser.add_argument("--fusion", type=int, default=0, metavar="N",
                        help="also time vision and prefill fused against unfused, N rounds (CPU)")  # fmt: skip
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench-full-random")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: the decoding step only")
    args = parser.parse_args()
    from kosmos_cli.model.runner import ModelRunner, RunnerSettings

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU flags: {matmul.cpu_flags()}", flush=True)
    checkpoint = build_checkpoint(args.cache, 4096)
    runner = ModelRunner(RunnerSettings(model=str(checkpoint), device=args.device, max_patches=4096,
                                        stop_on_loops=False))  # fmt: skip
    runner.model.requires_grad_(False)
    if str(runner.device).startswith("cuda"):
        source = torch.empty(1 << 29, dtype=torch.bfloat16, device=runner.device)
        bandwidth = 2 * source.numel() * source.element_size() / timed(lambda: source.clone())
        print(f"{torch.cuda.get_device_name()}: dtype {runner.dtype}, attention {runner.attention}, "
              f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")  # fmt: skip
        for slots in (int(value) for value in args.slots.split(",") if value):
            profile_decode(runner, slots, bandwidth, args.compile, split=False)
        return  # the FLOP counter's module hooks trip over parameters that want grads
    print(f"kosmos25 runner: dtype {str(runner.dtype).replace('torch.', '')}, attention {runner.attention}, "
          f"CPU kernels {runner.cpu_kernels.describe()}, products of many rows in "
          f"{'float32' if runner.float32_products else 'the model dtype'}")  # fmt: skip
    peak, _rows = matmul.peak_flops(runner.dtype)
    peak_kind = str(runner.dtype).replace("torch.", "")
    if runner.float32_products:  # this CPU's products of many rows run in float32: that is its peak
        float32_peak = matmul.peak_flops(torch.float32)[0]
        peak, peak_kind = max(peak, float32_peak), f"best of {peak_kind} and float32"
    copy = matmul.copy_bandwidth()
    weight_read = max(matmul.weight_read_bandwidth(rows, runner.dtype) for rows in (1, 4, 8))
    bandwidth = max(copy, weight_read)
    print(f"yardsticks: matrix-product peak {peak / 1e12:.3f} TFLOP/s ({peak_kind}); memory bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s (copy {copy / 1e9:.1f}, weights read by a few rows {weight_read / 1e9:.1f})")  # fmt: skip
    page = runner.prepare(synthetic_pages(2)[1])
    if args.fusion:
        compare_fusion(runner, page, args.fusion)
    if not args.skip_prefill:
        profile_prefill(runner, page, peak)
    for slots in (int(value) for value in args.slots.split(",") if value):
        profile_decode(runner, slots, bandwidth, args.compile)


if __name__ == "__main__":
    main()
