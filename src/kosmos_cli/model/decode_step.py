"""A decoding step's pass through the text decoder's layers, as plain function calls.

A decoding step computes one new token per busy slot: it multiplies a few rows by every
matrix of the decoder's 24 layers, so its products are bound by reading the weights, and
what surrounds them is paid per step, not per row: `Kosmos2_5TextBlock.forward` makes
about 30 tensor operations and 8 module calls per layer (views, dropouts that do nothing
in inference, the attention registry's lookup, keyword plumbing). `run_step_layers`
computes what the layers compute, in the same order with the same torch functions and
the same modules' weights, without that plumbing. Where the weights are packed for
oneDNN (`speedups.pack_linear_weights`: CPU, bf16) the FFN's GELU also runs inside its
first product as a oneDNN post-op, on the float32 accumulator, saving a pass over
[rows, ffn_dim].

Measured (full-size model, bf16, 2 cores with AMX, both ways on the same cache, best of
8 interleaved): 1 busy slot 161.5 -> 150.4 ms per step, 4 slots 245.4 -> 202.6, 8 slots
348.1 -> 303.3. Fusing q, k and v into one product gained little more (and would hold
a second copy of those matrices), so it is not done.

In float32, and wherever nothing is packed, the results equal the layers' own (tested);
with the post-op, bf16 results differ by rounding (GELU of the unrounded product).
Prefills keep the modules' own forward: one call per page, bound by arithmetic.
torch is imported inside functions so the CLI's `--help` stays instant.
"""

from __future__ import annotations


def run_step_layers(layers, hidden, mask, cache_argument: dict):
    """`hidden` [rows, 1, embed_dim] through every layer of `layers` (Kosmos2_5TextBlock),
    as their forward would: `mask` is the keys' attention mask, `cache_argument` the
    single keyword that hands the layers their key/value cache."""
    import torch.nn.functional as F
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not layers:
        return hidden
    if any(layer.training for layer in layers):  # dropout would apply: the modules know how
        return run_layers(layers, hidden, mask, cache_argument)
    (cache,) = cache_argument.values()
    config = layers[0].self_attn.config
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, _eager_attention())
    gelu_post_op = config.activation_function == "gelu"  # exact GELU: oneDNN's "gelu" with algorithm "none"
    rows = hidden.shape[0]
    for layer in layers:
        block = layer.self_attn
        norm = layer.self_attn_layer_norm
        normed = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        heads = (rows, 1, -1, block.head_dim)
        keys = block.k_proj(normed).view(heads).transpose(1, 2)
        values = block.v_proj(normed).view(heads).transpose(1, 2)
        queries = block.scaling * block.q_proj(normed).view(heads).transpose(1, 2)
        keys, values = cache.update(keys, values, block.layer_idx)
        attended, _weights = attention(block, queries, keys, values, mask, dropout=0.0, scaling=1.0)
        hidden = hidden + block.out_proj(attended.reshape(rows, 1, -1))

        ffn, norm = layer.ffn, layer.final_layer_norm
        normed = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        if gelu_post_op and _packed_for(ffn.fc1, rows):
            widened = _packed_product_gelu(normed, ffn.fc1)
        else:
            widened = ffn.activation_fn(ffn.fc1(normed))
        norm = ffn.ffn_layernorm
        widened = F.layer_norm(widened, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        hidden = hidden + ffn.fc2(widened)
    return hidden


def run_layers(layers, hidden, mask, cache_argument: dict):
    """`hidden` through every layer of `layers` by the modules' own forward (prefills, `torch.compile`)."""
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, **cache_argument)
    return hidden


def _packed_for(linear, rows: int) -> bool:
    """Whether `linear` multiplies `rows` rows by its matrix in oneDNN's layout (`speedups.pack_linear_weights`;
    products of many rows may widen to float32 there instead)."""
    if not getattr(linear.weight, "is_mkldnn", False):
        return False
    float32_from = getattr(linear, "float32_from", None)
    return float32_from is None or rows < float32_from


def _packed_product_gelu(rows, linear):
    """GELU(rows @ weight^T + bias), exact GELU applied by oneDNN before rounding to the rows' dtype."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(rows, linear.weight, linear.bias, "gelu", [], "none")


def _eager_attention():
    from transformers.models.kosmos2_5.modeling_kosmos2_5 import eager_attention_forward

    return eager_attention_forward
