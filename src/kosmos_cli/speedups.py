"""Work-arounds for upstream slow paths, each switched on only while the upstream code needs it.

transformers 5.23: KOSMOS-2.5's vision self-attention picks its kernel with
`getattr(ALL_ATTENTION_FUNCTIONS, name, eager_attention_forward)`. The registry is a
mapping, not an object with attributes, so that lookup always falls back to eager
attention, whatever `attn_implementation` says (the text decoder uses `get_interface`
and is fine). At 4096 patches eager attention is most of a page's prefill on CPU.
Giving the registry an attribute of the requested name makes the existing lookup
find the same function the decoder gets.
"""

from __future__ import annotations

import inspect
import re

_BROKEN_LOOKUP = re.compile(r"getattr\(\s*ALL_ATTENTION_FUNCTIONS\s*,")


def lookup_is_broken(forward_source: str) -> bool:
    """True if this source picks its attention kernel with the broken `getattr` lookup."""
    return bool(_BROKEN_LOOKUP.search(forward_source))


def vision_attention_lookup_is_broken() -> bool:
    """Whether the installed transformers has the broken lookup in the vision encoder."""
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    try:
        source = inspect.getsource(modeling_kosmos2_5.Kosmos2_5VisionAttention.forward)
    except (OSError, TypeError):
        return False
    return lookup_is_broken(source)


def enable_vision_attention_kernel(implementation: str) -> bool:
    """Make the vision encoder use `implementation` (e.g. "sdpa") instead of eager attention.

    Does nothing, and returns False, when the installed transformers looks kernels up
    correctly, when eager is wanted, or when the kernel is not registered.
    """
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    registry = modeling_kosmos2_5.ALL_ATTENTION_FUNCTIONS
    if implementation == "eager" or implementation not in registry or not vision_attention_lookup_is_broken():
        return False
    setattr(registry, implementation, registry[implementation])
    return True


def growing_cache(step: int = 256):
    """A key/value cache for `generate` that grows in blocks instead of token by token.

    transformers' DynamicCache concatenates every layer's whole cache with each new
    token: at a 2052-token prompt and batch 4 that copies ~1.2 GB per decoding step
    on CPU, a large part of each step. This cache keeps a zero-filled buffer
    [batch, heads, capacity, dim] with room for `step` more tokens, writes new states
    in place, and hands attention a view of the filled part.
    """
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self._key_buffer = self._value_buffer = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            needed = length + key_states.shape[-2]
            if self._key_buffer is None or needed > self._key_buffer.shape[-2]:
                self._key_buffer = self._grow(self._key_buffer, key_states, length, needed)
                self._value_buffer = self._grow(self._value_buffer, value_states, length, needed)
            self._key_buffer[..., length:needed, :] = key_states
            self._value_buffer[..., length:needed, :] = value_states
            self.keys = self._key_buffer[..., :needed, :]
            self.values = self._value_buffer[..., :needed, :]
            return self.keys, self.values

        @staticmethod
        def _grow(buffer, states, length: int, needed: int):
            batch, heads, _, dim = states.shape
            # Zeros, not garbage: the CPU decode kernel reads the whole buffer and masks the tail.
            grown = states.new_zeros((batch, heads, needed + step, dim))
            if length:
                grown[..., :length, :] = buffer[..., :length, :]
            return grown

    class GrowingCache(DynamicCache):
        def __init__(self) -> None:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingCache()


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


CPU_ATTENTION = "kosmos25_cpu"


def register_cpu_attention() -> str:
    """Register an attention kernel for CPUs and return its name for `attn_implementation`.

    Decoding steps (one query token) use two matrix products over the cache buffer,
    reading it once: on this project's CPU about 1.6 ms per layer at batch 4 and a
    2100-token cache, against 8.8 ms for torch's CPU flash-attention kernel. Every
    other call (prefill, vision encoder) goes to transformers' SDPA.
    """
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        whole_keys, whole_values = _whole_buffer(key), _whole_buffer(value)
        simple = query.shape[2] == 1 and not dropout and getattr(module, "num_key_value_groups", 1) == 1
        if not simple or whole_keys is None or whole_values is None:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        length = key.shape[-2]
        scores = torch.matmul(query, whole_keys.transpose(-1, -2)).float()
        scores.mul_(scaling if scaling is not None else query.shape[-1] ** -0.5)
        scores[..., length:] = float("-inf")  # unused capacity
        if attention_mask is not None:
            mask = attention_mask[..., :length]
            if mask.dtype == torch.bool:
                scores[..., :length].masked_fill_(~mask, float("-inf"))
            else:
                scores[..., :length].add_(mask)
        probs = scores.softmax(dim=-1).to(value.dtype)
        return torch.matmul(probs, whole_values).transpose(1, 2).contiguous(), None

    AttentionInterface.register(CPU_ATTENTION, attention)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
    return CPU_ATTENTION
