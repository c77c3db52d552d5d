"""The decoder's forward passes for continuous batching: a prefill of a group of pages into
cache rows, and a decoding step of every busy row; each gives the rows' next-token logits.

They call the model's modules directly, in the order `Kosmos2_5TextTransformer` does,
rather than `generate`:

- positions are explicit per row; the sinusoidal table starts at `padding_idx + 1`
  (transformers' own `create_position_ids_from_input_ids` builds them, so a generated
  padding token gets the same zero position as in `generate`);
- the segment embedding marks image positions from `image_embeds_position_mask`
  in the prefill; later steps take no image inputs (segment 0), as in `generate`;
- rows have different cache lengths, so decoding steps pass an explicit mask over the
  keys (boolean for SDPA and the CPU kernel, additive for eager attention);
- the position table is extended up front: it only grows inside eager forward calls.

The layers run through `fused_layers.run_decoder_layers` (the same computation without the
modules' per-call plumbing, with post-ops on packed weights); a prefill computes the last
layer's output for the prompt's last position only, the one whose logits are read.
torch is imported inside functions so the CLI's `--help` stays instant.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .compat import cache_keyword
from .cpu_attention import CPU_ATTENTION
from .fused_layers import run_decoder_layers, run_layers

if TYPE_CHECKING:
    from .records import PreparedPage
    from .slot_cache import SlotCache

# Attention implementations a decoding step can give a per-row key mask to.
SUPPORTED_ATTENTION = ("sdpa", "eager", CPU_ATTENTION)


class DecoderPasses:
    """Prefills and decoding steps of `model` for pages that all share `prompt`.

    `prompt` holds the task's `input_ids`, `attention_mask` and `image_embeds_position_mask`
    for one page ([1, P] each, as `ModelRunner._prompt` builds them). `max_positions` is the
    most positions a row may reach (prompt plus new tokens). `compile_steps` runs the
    decoding steps' layers under `torch.compile` (see README, Speed).
    """

    def __init__(self, model, prompt: dict, max_positions: int, *, device, dtype, compile_steps: bool = False) -> None:
        import torch

        text_config = model.config.text_config
        attention = getattr(text_config, "_attn_implementation", None) or "eager"
        if attention not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"continuous batching needs per-row key masks; attention '{attention}' is not supported "
                f"(use one of {', '.join(SUPPORTED_ATTENTION)})"
            )
        self.model = model
        self.transformer = model.text_model.model
        self.device, self.dtype, self.attention = torch.device(device), dtype, attention
        self.input_ids = prompt["input_ids"].to(self.device)
        self.image_mask = prompt["image_embeds_position_mask"].to(self.device)
        if self.input_ids.dim() != 2 or self.input_ids.shape[0] != 1:
            raise ValueError(f"prompt input_ids must be [1, length], got {tuple(self.input_ids.shape)}")
        attention_mask = prompt.get("attention_mask")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("the prompt must not be padded")
        self.prompt_length = self.input_ids.shape[1]
        self.padding_idx = self.transformer.embed_positions.padding_idx
        self._extend_position_table(self.padding_idx + 1 + max_positions + 1)
        self.cache_keyword = cache_keyword()
        self.step_layers = _compiled_layers() if compile_steps else run_decoder_layers
        self.read_used_width = self.device.type == "cpu"  # see SlotCache

    def _extend_position_table(self, needed: int) -> None:
        # The table grows only when an eager forward computes a longer length than it has;
        # with explicit positions that never happens, so make it long enough now.
        positions = self.transformer.embed_positions
        if positions.weights.size(0) < needed:
            positions.make_weights(needed + positions.offset, positions.embedding_dim, positions.padding_idx)

    def prefill(self, cache: SlotCache, pages: list[PreparedPage], first_row: int):
        """Vision encoder, image projection and prompt for `pages`, into cache rows first_row..;
        returns their first tokens' logits [pages, vocab]."""
        import torch

        model, transformer = self.model, self.transformer
        count = len(pages)
        patches = torch.stack([page.flattened_patches for page in pages]).to(self.device, self.dtype)
        features = model.vision_model(flattened_patches=patches).last_hidden_state
        image_embeds = torch.nn.functional.normalize(features, dim=-1)
        image_embeds = model.image_to_text_projection(image_embeds)[0]
        del features, patches

        input_ids = self.input_ids.expand(count, -1)
        image_mask = self.image_mask.expand(count, -1)
        embeds = transformer.embed_tokens(input_ids).clone()
        embeds[image_mask == 1] = image_embeds.to(embeds.device, embeds.dtype).view(-1, image_embeds.shape[-1])
        embeds = embeds * transformer.embed_scale
        position_ids = transformer.embed_positions.create_position_ids_from_input_ids(input_ids, self.padding_idx, 0)
        positions = transformer.embed_positions(input_ids=input_ids, position_ids=position_ids).to(embeds.device)
        positions += transformer.segment_emb(image_mask.ne(0).long()).to(positions.device)
        hidden = embeds + positions
        del embeds, positions, image_embeds

        cache.start_prefill(slice(first_row, first_row + count), self.prompt_length)
        mask = None if self.attention != "eager" else self.causal_mask(self.prompt_length)
        cache_argument = {self.cache_keyword: cache}
        last = run_decoder_layers(transformer.layers, hidden, mask, cache_argument, last_position_only=True)
        return model.text_model.lm_head(transformer.layer_norm(last))[:, -1]

    def step(self, cache: SlotCache, last_tokens: list[int], lengths: list[int]):
        """One decoding step: row i takes `last_tokens[i]` at position `lengths[i]` (its cache
        length); returns the next tokens' logits [rows, vocab]. On CPU attention reads only the
        positions the longest row uses, not the buffers' whole capacity (see SlotCache)."""
        import torch

        transformer = self.transformer
        count = len(lengths)
        cache.reserve(max(lengths) + 1, count)
        width = max(lengths) + 1 if self.read_used_width else cache.capacity
        input_ids = torch.tensor([[token] for token in last_tokens], device=self.device)
        positions_now = torch.tensor(lengths, device=self.device)
        embeds = transformer.embed_tokens(input_ids) * transformer.embed_scale
        # `generate` passes the cache length; the same function turns it into positions.
        position_ids = transformer.embed_positions.create_position_ids_from_input_ids(
            input_ids, self.padding_idx, positions_now[:, None]
        )
        positions = transformer.embed_positions(input_ids=input_ids, position_ids=position_ids).to(embeds.device)
        zero_segment = torch.zeros((count, 1), dtype=torch.long, device=transformer.segment_emb.weight.device)
        positions += transformer.segment_emb(zero_segment).to(positions.device)
        hidden = embeds + positions

        cache.start_step(positions_now, width)
        mask = self.key_mask(positions_now, width)
        hidden = self.step_layers(transformer.layers, hidden, mask, {self.cache_keyword: cache})
        return self.model.text_model.lm_head(transformer.layer_norm(hidden))[:, -1]

    def key_mask(self, lengths, width: int):
        """[rows, 1, 1, width]: row r attends to its positions 0..lengths[r] (the new token's too)."""
        import torch

        allowed = torch.arange(width, device=lengths.device)[None, :] <= lengths[:, None]
        allowed = allowed[:, None, None, :]
        if self.attention == "eager":
            return _additive(allowed, self.dtype)
        return allowed

    def causal_mask(self, length: int):
        """[1, 1, length, length], additive: a prompt's mask for eager attention."""
        import torch

        allowed = torch.ones(length, length, dtype=torch.bool, device=self.device).tril_()
        return _additive(allowed[None, None], self.dtype)


@functools.cache
def _compiled_layers():
    """`run_layers` under inductor, compiled once per process and shared by every decoder.

    Decoding steps' many small operations are fused into fewer kernels. Shapes are dynamic
    (rows and cache capacity change as pages come and go), so it compiles a few times per
    process, not once per shape. Prefills stay eager: one call per page.
    """
    import torch

    return torch.compile(run_layers, dynamic=True)


def _additive(allowed, dtype):
    """A boolean mask as eager attention takes it: 0 where allowed, the dtype's minimum elsewhere."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )
