"""Attention kernels for CPUs, registered with transformers as "kosmos25_cpu".

Which attention kernel is fastest depends on the CPU: on a 2-core machine with
`avx512_bf16` but no AMX, torch's SDPA kernel ran KOSMOS-2.5's vision attention at a
quarter of that CPU's matrix-product speed (0.63 s per layer of 24 heads x 4096 patches,
against 0.25 s for the blocked kernel below); on a 2-core machine with AMX, SDPA took
0.135 s and the blocked kernel 0.253 s. So each kind of call has candidates, and
`measure_cpu_kernels` times them at the model's own shapes when the model loads:

- many query tokens (vision encoder, image projection, prefill): torch's SDPA, or
  blocks of 256 query rows at a time with torch's matrix products and softmax, so each
  block's scores stay in cache. Scores are held in the input dtype before the softmax,
  as transformers' eager attention holds them; the softmax accumulates in float32.
  Either way padded patches are dropped instead of masked.
- one query token (decoding steps): torch's SDPA, or two matrix products over the
  whole key/value buffer of `speedups.growing_cache` (reading it once).

Both candidates compute exactly softmax(Q K^T * scale + mask) V. Anything else (dropout,
grouped key/value heads, extra arguments such as position bias, broadcast batches) goes
to transformers' SDPA function unchanged.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

CPU_ATTENTION = "kosmos25_cpu"
BLOCK_ROWS = 256
# Scores per block (heads x rows x keys) kept near the size of a core's L2 cache.
BLOCK_BYTES = 4 << 20
# Below this many keys a kernel takes microseconds and a timing is noise: the defaults
# run (and results stay the same from run to run).
MEASURE_FROM_KEYS = 1024
# Query rows the many-query candidates are timed on (their cost grows linearly with rows).
MEASURED_ROWS = 512
# In a decoding step, rows whose keys end this many positions apart are attended in
# separate calls, each reading only its own keys (see one_query_sdpa).
SHORT_ROW_KEYS = 256


@dataclass(frozen=True)
class CpuKernels:
    """The kernel each kind of attention call runs: "sdpa" (torch's) or kosmos25's own."""

    many_queries: str = "blocked"  # or "sdpa"
    one_query: str = "products"  # or "sdpa"
    measured: bool = False  # False: the defaults, not a measurement

    def describe(self) -> str:
        how = "measured" if self.measured else "default"
        return f"many queries: {self.many_queries}, one query: {self.one_query} ({how})"


def register_cpu_attention(kernels: CpuKernels = CpuKernels()) -> str:
    """Register the CPU kernels with transformers and return the name for `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_ATTENTION, functools.partial(cpu_attention, kernels=kernels))
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
    return CPU_ATTENTION


@functools.lru_cache(maxsize=None)
def measure_cpu_kernels(
    vision_heads: int, vision_head_dim: int, patches: int, text_heads: int, text_head_dim: int,
    cache_positions: int, slots: int, dtype_name: str, threads: int,
) -> CpuKernels:  # fmt: skip
    """Time each candidate kernel at these shapes on this machine; the faster of each kind wins.

    Many queries: `MEASURED_ROWS` vision query rows against `patches` keys. One query:
    `slots` rows against whole key/value buffers of `cache_positions`, with a key mask.
    Under a second at KOSMOS-2.5's shapes on 2 cores (0.9 s measured); once per process and
    shape (`threads` is part of the key: it changes which kernel wins).
    """
    import torch

    if patches < MEASURE_FROM_KEYS:
        return CpuKernels()
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)

    def random(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    query = random(1, vision_heads, min(MEASURED_ROWS, patches), vision_head_dim)
    key, value = random(1, vision_heads, patches, vision_head_dim), random(1, vision_heads, patches, vision_head_dim)
    scale = vision_head_dim**-0.5
    many = {
        "sdpa": lambda: _sdpa(query, key, value, None, scale, False),
        "blocked": lambda: _blocked(query[0], key[0], value[0], None, scale, False),
    }
    step_query = random(slots, text_heads, 1, text_head_dim)
    buffer_shape = (slots, text_heads, cache_positions, text_head_dim)
    keys, values = random(*buffer_shape), random(*buffer_shape)
    mask = torch.ones(slots, 1, 1, cache_positions, dtype=torch.bool)
    mask[..., cache_positions - cache_positions // 8 :] = False  # unused capacity, as in a decoding step
    one = {
        "sdpa": lambda: _sdpa(step_query, keys, values, mask, text_head_dim**-0.5, False),
        "products": lambda: decode_step_attention(step_query, keys, values, cache_positions, mask, text_head_dim**-0.5),
    }
    with torch.inference_mode():
        return CpuKernels(_fastest(many), _fastest(one), measured=True)


def _fastest(candidates: dict) -> str:
    """The name of the candidate whose best of three timed calls (after a warm-up) is shortest."""
    best = {name: best_seconds(run) for name, run in candidates.items()}
    return min(best, key=best.get)


def best_seconds(run, repeats: int = 3) -> float:
    """The shortest of `repeats` timed calls of `run`, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def cpu_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
    kernels: CpuKernels = CpuKernels(), **kwargs,
):  # fmt: skip
    """transformers' attention-function signature; returns (output [batch, tokens, heads, dim], None)."""
    unusual = (
        dropout
        or getattr(module, "num_key_value_groups", 1) != 1
        or any(kwargs.get(name) is not None for name in ("position_bias", "softcap", "cache"))
        or query.shape[0] != key.shape[0]
        or query.shape[1] != key.shape[1]
    )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if not unusual and query.shape[2] == 1:
        if kernels.one_query == "sdpa":
            mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
            return one_query_sdpa(query, key, value, mask, scale).contiguous(), None
        whole_keys, whole_values = _whole_buffer(key), _whole_buffer(value)
        if whole_keys is not None and whole_values is not None:
            return decode_step_attention(query, whole_keys, whole_values, key.shape[-2], attention_mask, scale), None
    if not unusual and query.shape[2] > 1:
        causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
        kernel = _sdpa if kernels.many_queries == "sdpa" else _blocked
        return many_query_attention(query, key, value, attention_mask, scale, causal, kernel), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


def _whole_buffer(states):
    """The contiguous [batch, heads, capacity, dim] tensor that `states` is a prefix view of.

    Matrix products on the whole contiguous buffer are fast; on the prefix view BLAS
    copies it first (measured: 6.4 ms against 0.7 ms). Returns None for other layouts.
    """
    batch, heads, length, dim = states.shape
    s_batch, s_heads, s_tokens, s_dim = states.stride()
    if s_dim != 1 or s_tokens != dim or s_heads % dim or s_batch != heads * s_heads or s_heads // dim < length:
        return None
    return states.as_strided((batch, heads, s_heads // dim, dim), states.stride())


def decode_step_attention(query, whole_keys, whole_values, length: int, attention_mask, scale: float):
    """One query token against the first `length` positions of whole key/value buffers."""
    import torch

    scores = torch.matmul(query, whole_keys.transpose(-1, -2)).float()
    scores.mul_(scale)
    scores[..., length:] = float("-inf")  # unused capacity
    if attention_mask is not None:
        _apply_mask(scores[..., :length], attention_mask[..., :length])
    probs = scores.softmax(dim=-1).to(whole_values.dtype)
    return torch.matmul(probs, whole_values).transpose(1, 2).contiguous()


def one_query_sdpa(query, key, value, mask, scale: float):
    """torch's SDPA for one query token per row, each run of rows reading only the keys it uses.

    In a decoding step rows hold pages of different lengths, and the step is bound by the
    bytes it reads; one batched call would read every row up to the longest. So rows are
    taken in runs (neighbours, so nothing is copied) whose keys end within SHORT_ROW_KEYS
    of each other, one call per run over its own keys. The mask must be a boolean
    [rows, 1, 1, keys]; anything else is one batched call.
    """
    import torch

    rows, keys = query.shape[0], key.shape[-2]
    if mask is None or mask.dtype != torch.bool or rows == 1 or tuple(mask.shape) != (rows, 1, 1, keys):
        return _sdpa(query, key, value, mask, scale, False)
    ends = (keys - mask[:, 0, 0, :].flip(-1).to(torch.uint8).argmax(-1)).tolist()
    runs = _runs_of_similar_ends(ends)
    if len(runs) == 1:
        return _sdpa(query, key, value, mask, scale, False)
    output = query.new_empty(rows, 1, query.shape[1], value.shape[-1])
    for first, last, end in runs:
        own = slice(first, last)
        output[own] = _sdpa(query[own], key[own, :, :end], value[own, :, :end], mask[own, ..., :end], scale, False)
    return output


def _runs_of_similar_ends(ends: list[int]) -> list[tuple[int, int, int]]:
    """(first row, last row + 1, longest end) of neighbouring rows whose ends differ by < SHORT_ROW_KEYS."""
    runs = []
    first, low, high = 0, ends[0], ends[0]
    for row, end in enumerate(ends[1:], start=1):
        if max(high, end) - min(low, end) >= SHORT_ROW_KEYS:
            runs.append((first, row, high))
            first, low, high = row, end, end
        else:
            low, high = min(low, end), max(high, end)
    runs.append((first, len(ends), high))
    return runs


def many_query_attention(query, key, value, attention_mask, scale: float, causal: bool, kernel=None):
    """Attention for many query tokens, one batch row at a time, with `kernel` (default: blocked).

    `causal` follows SDPA's is_causal (query i sees keys 0..i, with keys beyond the
    query length dropped, as transformers does). `attention_mask` is a boolean
    (True = attend) or additive mask broadcastable to [batch, heads, queries, keys].
    A pure key-padding mask (the vision encoder's) is applied by dropping the padded keys.
    `kernel(queries, keys, values, mask, scale, causal)` takes [heads, tokens, dim] tensors
    and returns [tokens, heads, dim].
    """
    kernel = kernel or _blocked
    batch, heads, q_len, _ = query.shape
    if causal:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    k_len = key.shape[2]
    masks = None if attention_mask is None else attention_mask.expand(batch, heads, q_len, k_len)
    output = query.new_empty(batch, q_len, heads, value.shape[-1])
    for row in range(batch):
        keys, values, mask = key[row], value[row], None if masks is None else masks[row]
        kept = _kept_keys(attention_mask[row % attention_mask.shape[0]]) if attention_mask is not None else None
        if kept is not None:  # a key-padding mask: drop the padded keys instead of masking them
            keys, values, mask = keys[:, kept], values[:, kept], None
        output[row] = kernel(query[row], keys, values, mask, scale, causal)
    return output


def _sdpa(queries, keys, values, mask, scale: float, causal: bool):
    """torch's SDPA kernel on [batch,] heads, tokens, dim tensors; returns [batch,] tokens, heads, dim."""
    import torch

    if queries.dim() == 3:  # one batch row: the fused CPU kernels take 4D tensors only
        mask = None if mask is None else mask[None]
        return _sdpa(queries[None], keys[None], values[None], mask, scale, causal)[0]
    output = torch.nn.functional.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask, is_causal=causal, scale=scale
    )
    return output.transpose(1, 2)


def _blocked(queries, keys, values, mask, scale: float, causal: bool):
    """One batch row, [heads, tokens, dim], a block of query rows (and a few heads) at a time."""
    import torch

    heads, q_len, _ = queries.shape
    if scale != 1.0 and math.frexp(scale)[0] == 0.5:  # a power of two: scaling the queries is exact
        queries, scale = queries * scale, 1.0
    future = torch.ones(BLOCK_ROWS, BLOCK_ROWS, dtype=torch.bool).triu_(1) if causal else None
    group = max(1, min(heads, BLOCK_BYTES // (BLOCK_ROWS * keys.shape[1] * queries.element_size())))
    # Projections hand over [heads, tokens, dim] views with tokens strided; matrix products
    # on them copy each block first, so copy once (measured: about 12 s -> 10 s per vision pass).
    queries, keys, values = queries.contiguous(), keys.contiguous(), values.contiguous()
    output = queries.new_empty(q_len, heads, values.shape[-1])
    for first_head in range(0, heads, group):
        head = slice(first_head, first_head + group)
        for first in range(0, q_len, BLOCK_ROWS):
            last = min(first + BLOCK_ROWS, q_len)
            end = last if causal else keys.shape[1]
            scores = torch.matmul(queries[head, first:last], keys[head, :end].transpose(-1, -2))
            if scale != 1.0:
                scores.mul_(scale)
            if mask is not None:
                _apply_mask(scores, mask[head, first:last, :end])
            if causal:
                block = last - first
                scores[..., first:last].masked_fill_(future[:block, :block], torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1)
            output[first:last, head] = torch.matmul(probs, values[head, :end]).transpose(0, 1)
    return output


def _apply_mask(scores, mask) -> None:
    """Add an additive mask to `scores` in place, or give a boolean mask's False places no weight."""
    import torch

    if mask.dtype == torch.bool:
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    else:
        scores.add_(mask)


def _kept_keys(mask) -> Any:
    """The keys a pure key-padding mask [heads or 1, queries, keys] keeps (a slice or indices), else None.

    A key-padding mask (the vision encoder's) is the same row for every head and
    query, 0 for real patches and the dtype's minimum for padding: dropping padded
    keys gives the same softmax (their weight is exactly 0) and skips adding the mask.
    Padding is usually at the end, where a slice drops it without copying.
    """
    import torch

    if mask.dim() != 3 or mask.dtype == torch.bool or mask.shape[-2] < 2:
        return None
    first_row = mask[:1, :1]
    if not torch.equal(mask, first_row.expand_as(mask)):
        return None
    first_row = first_row.reshape(-1)
    padded = first_row <= torch.finfo(mask.dtype).min
    if not bool((padded | (first_row == 0)).all()) or bool(padded.all()):
        return None
    kept = (~padded).nonzero().reshape(-1)
    return slice(0, len(kept)) if int(kept[-1]) == len(kept) - 1 else kept
