"""Work-arounds for upstream slow paths in transformers' KOSMOS-2.5 code.

The vision attention lookup (transformers 5.23): KOSMOS-2.5's vision self-attention
picks its kernel with `getattr(ALL_ATTENTION_FUNCTIONS, name, eager_attention_forward)`.
The registry is a mapping, not an object with attributes, so that lookup always falls
back to eager attention, whatever `attn_implementation` says (the text decoder uses
`get_interface` and is fine). At 4096 patches eager attention is most of a page's
prefill on CPU.
Giving the registry an attribute of the requested name makes the existing lookup
find the same function the decoder gets. The fix switches itself off once upstream
looks kernels up correctly.

The decoder's key/value cache and the vision encoder's element-wise steps are the other
slow paths; see `growing_cache` and `fuse_vision_elementwise`. Weight products on CPU are
`packed.py`'s; layers as plain calls with fused steps, `fused_layers.py`'s.
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


def fuse_vision_elementwise(model) -> int:
    """Swap the vision encoder's element-wise steps for torch's fused kernels; returns how many.

    Its T5-style RMS norms and its GELU (tanh approximation) are written as chains of
    tensor operations, each a pass over [patches, width] in memory: at 4096 patches in
    bf16 on CPU, 28 ms per norm against 5 ms for `F.rms_norm`, and 60 ms against 13 ms
    for the gated GELU. The formulas are the same; in float32 the results are equal to
    rounding, in bf16 the fused kernels round once instead of after every step.
    """
    import torch
    from transformers.activations import GELUTanh, NewGELUActivation
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    class FusedRMSNorm(modeling_kosmos2_5.Kosmos2_5LayerNorm):
        def forward(self, hidden_states):
            if hidden_states.dtype != self.weight.dtype:
                return super().forward(hidden_states)
            return torch.nn.functional.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)

    swapped = 0
    for parent in list(model.vision_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is modeling_kosmos2_5.Kosmos2_5LayerNorm:
                fused = FusedRMSNorm(child.weight.shape[0], eps=child.variance_epsilon)
                fused.weight = child.weight
                setattr(parent, name, fused)
                swapped += 1
            elif isinstance(child, NewGELUActivation):
                setattr(parent, name, GELUTanh())
                swapped += 1
    return swapped
