"""The decoder's and the vision encoder's layers as plain calls, with fewer passes over memory.

Decoder (`run_decoder_layers`, decoding steps and prompts): a decoding step multiplies a
few rows by every matrix of the decoder's 24 layers, so its products are bound by reading
the weights, and what surrounds them is paid per step, not per row:
`Kosmos2_5TextBlock.forward` makes about 30 tensor operations and 8 module calls per layer
(views, dropouts that do nothing in inference, the attention registry's lookup, keyword
plumbing). `run_decoder_layers` computes what the layers compute, in the same order with
the same torch functions and the same modules' weights, without that plumbing.

Vision encoder (`fuse_vision_layers`): each of its 18 layers at 4096 patches passes over
[patches, 3968] three times after its MLP's products (GELU, the gate's multiply, the
residual add) and once more after the attention's output product (its residual add).

Where the weights are packed for oneDNN (`packed.pack_linear_weights`: CPU, bf16) those
steps run inside the products as oneDNN post-ops, on the float32 accumulator: the
decoder's GELU and residual adds, the vision MLP's GELU, gate and residual adds.

Measured (full-size model, bf16, 2 cores with AMX): decoding steps as plain calls, both
ways on the same cache, best of 8 interleaved: 1 busy slot 161.5 -> 150.4 ms per step,
4 slots 245.4 -> 202.6, 8 slots 348.1 -> 303.3. Fusing q, k and v into one product
gained little more (and would hold a second copy of those matrices), so it is not done.
Vision encoder with post-ops: see the README (Speed).

In float32, and wherever nothing is packed, the results equal the layers' own (tested);
with post-ops, bf16 results differ by rounding (each step on the unrounded product).
In training mode the modules' own forward runs (dropout). torch is imported inside
functions so the CLI's `--help` stays instant.
"""

from __future__ import annotations

import functools

from .packed import packed_for, product_add, product_gelu, product_mul

# The activations oneDNN's "gelu" post-op computes, by transformers' names: exact, tanh approximation.
_GELU_POST_OPS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def run_decoder_layers(layers, hidden, mask, cache_argument: dict, last_position_only: bool = False):
    """`hidden` [rows, positions, embed_dim] through every layer of `layers` (Kosmos2_5TextBlock),
    as their forward would: a decoding step's one position per row, or a prompt's (`mask`
    None: causal). `mask` is the keys' attention mask, `cache_argument` the single keyword
    that hands the layers their key/value cache.

    With `last_position_only` the result is [rows, 1, embed_dim], the last position's: the last
    layer then computes only that position's output (a prompt's other outputs are never read;
    the keys and values the cache keeps come from every position's input, and are all stored).
    """
    import torch.nn.functional as F
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not layers:
        return hidden[:, -1:] if last_position_only else hidden
    if any(layer.training for layer in layers):  # dropout would apply: the modules know how
        hidden = run_layers(layers, hidden, mask, cache_argument)
        return hidden[:, -1:] if last_position_only else hidden
    (cache,) = cache_argument.values()
    config = layers[0].self_attn.config
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, _eager_attention())
    gelu = _GELU_POST_OPS.get(config.activation_function)
    shape = hidden.shape[:-1]
    rows = shape.numel()
    last_layer = layers[-1]
    for layer in layers:
        block = layer.self_attn
        norm = layer.self_attn_layer_norm
        normed = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        heads = (*shape, -1, block.head_dim)
        keys = block.k_proj(normed).view(heads).transpose(1, 2)
        values = block.v_proj(normed).view(heads).transpose(1, 2)
        if last_position_only and layer is last_layer and shape[-1] > 1:
            # A single query sees every key: no causal mask (an explicit one keeps its last row).
            hidden, normed = hidden[:, -1:], normed[:, -1:]
            mask = None if mask is None else mask[..., -1:, :]
            shape = hidden.shape[:-1]
            rows, heads = shape.numel(), (*shape, -1, block.head_dim)
        queries = block.scaling * block.q_proj(normed).view(heads).transpose(1, 2)
        keys, values = cache.update(keys, values, block.layer_idx)
        attended, _weights = attention(block, queries, keys, values, mask, dropout=0.0, scaling=1.0)
        hidden = _plus_product(hidden, attended.reshape(*shape, -1), block.out_proj, rows)

        ffn, norm = layer.ffn, layer.final_layer_norm
        normed = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        if gelu is not None and packed_for(ffn.fc1, rows):
            widened = product_gelu(normed, ffn.fc1, gelu)
        else:
            widened = ffn.activation_fn(ffn.fc1(normed))
        norm = ffn.ffn_layernorm
        widened = F.layer_norm(widened, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        hidden = _plus_product(hidden, widened, ffn.fc2, rows)
    return hidden


def run_layers(layers, hidden, mask, cache_argument: dict):
    """`hidden` through every layer of `layers` by the modules' own forward (`torch.compile`, training)."""
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, **cache_argument)
    return hidden


def fuse_vision_layers(model) -> int:
    """Make the vision encoder's layers run their MLP's GELU and gate and both residual adds
    inside the products where the weights are packed; returns how many layers.

    The layers keep their modules and weights (the same state dict); only their forward
    changes, and it falls back to the original wherever a product is not packed, in
    training mode, or for an activation oneDNN's post-op does not compute.
    """
    layer_class = _fused_vision_layer_class()
    layers = model.vision_model.encoder.layer
    for layer in layers:
        layer.__class__ = layer_class
    return len(layers)


@functools.cache
def _fused_vision_layer_class():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.kosmos2_5.modeling_kosmos2_5 import Kosmos2_5VisionLayer, eager_attention_forward

    class FusedVisionLayer(Kosmos2_5VisionLayer):
        """`Kosmos2_5VisionLayer` whose element-wise steps after products run as oneDNN post-ops."""

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            attention, mlp = self.attention, self.mlp
            rows = hidden_states.shape[:-1].numel()
            gelu = _GELU_POST_OPS.get(mlp.config.dense_act_fn)
            products = (attention.output, mlp.wi_0, mlp.wi_1, mlp.wo)
            if self.training or gelu is None or not all(packed_for(linear, rows) for linear in products):
                return super().forward(hidden_states, attention_mask, **kwargs)
            normed = self.pre_attention_layer_norm(hidden_states)
            heads = (*normed.shape[:-1], -1, attention.head_dim)
            queries = attention.query(normed).view(heads).transpose(1, 2)
            keys = attention.key(normed).view(heads).transpose(1, 2)
            values = attention.value(normed).view(heads).transpose(1, 2)
            # The lookup transformers means to make (see speedups.enable_vision_attention_kernel).
            kernel = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
            attended, _weights = kernel(attention, queries, keys, values, attention_mask, dropout=0.0,
                                        scaling=attention.scaling, **kwargs)  # fmt: skip
            hidden = product_add(attended.reshape(*normed.shape[:-1], -1), attention.output, hidden_states)
            normed = self.pre_mlp_layer_norm(hidden)
            gated = product_mul(normed, mlp.wi_1, product_gelu(normed, mlp.wi_0, gelu))
            return product_add(gated, mlp.wo, hidden)

    return FusedVisionLayer


def _plus_product(residual, inputs, linear, rows: int):
    """residual + linear(inputs) for `rows` rows; the sum inside the product where `linear` is packed."""
    if packed_for(linear, rows):
        return product_add(inputs, linear, residual)
    return residual + linear(inputs)


def _eager_attention():
    from transformers.models.kosmos2_5.modeling_kosmos2_5 import eager_attention_forward

    return eager_attention_forward
