"""Continuous batching: a greedy decode loop over a fixed number of slots.

`generate` runs a batch until its longest page ends, so a receipt that needs 200
tokens waits, and holds a row, while an A4 page in its batch needs 3,000. Here each
page owns one row (a *slot*) of a key/value cache only while it decodes: when it emits
EOS, reaches `max_new_tokens` or is stopped for looping, its slot is freed and the
next page is prefilled (vision encoder, image projection, prompt) into it and joins
the running batch at the next step, with its own positions and its own cache length.

The model's forward passes (prefill, decoding step) are `decode_passes.DecoderPasses`;
this module decides which page owns which row, when pages join and when they end.

Each page's tokens equal those of its own single-page greedy `generate` run (up to the
rounding differences any change of batch shape brings; tests check equality in float32).
torch is imported inside functions so the CLI's `--help` stays instant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .decode_passes import DecoderPasses
from .repetition import find_loop
from .records import RawOutput, finish_row
from .slot_cache import CACHE_ALIGN, SlotCache, round_up

if TYPE_CHECKING:
    from .records import PreparedPage

# Same cadence as runner._stop_on_loop: `generate` checks for loops every 8 new tokens,
# so a page is stopped at the same step in both.
LOOP_CHECK_EVERY = 8
# Generation settings that would make `generate` change logits before its argmax; this
# loop applies none of them, so a model configured with one is refused.
_LOGITS_SETTINGS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "sequence_bias", "min_length", "min_new_tokens", "exponential_decay_length_penalty",
)  # fmt: skip


class FinishedPage(NamedTuple):
    """One page out of the loop: its key, tokens (EOS included), and how it ended.

    `logprobs[i]` is the log-probability of `tokens[i]` under the model's distribution
    at that step (raw logits, before min-length or hook adjustments).
    """

    key: Hashable
    tokens: list[int]
    logprobs: list[float]
    truncated: bool
    looping: bool


@dataclass
class StreamedOutput:
    """`ModelRunner.decode_stream`'s result for one page: its RawOutput and token details."""

    key: Hashable
    output: RawOutput
    tokens: list[int]
    logprobs: list[float]


@dataclass
class LoopStats:
    """What one `run` did: for benchmarks and for checking the slots are kept busy."""

    pages: int = 0
    prefills: int = 0
    prefill_rows: int = 0
    decode_steps: int = 0
    row_steps: int = 0  # sum of active rows over decoding steps
    tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_capacity: int = 0
    peak_cells: int = 0  # the most rows x positions the cache held at once
    group_sizes: list[int] = field(default_factory=list)


@dataclass
class _Row:
    key: Hashable
    tokens: list[int]
    logprobs: list[float]
    length: int  # positions in the cache; the last token is not in it yet


class ContinuousDecoder:
    """Greedy decoding of a stream of pages over `slots` rows that are refilled as pages end.

    `prompt` holds the task's `input_ids`, `attention_mask` and
    `image_embeds_position_mask` for one page ([1, P] each, as `ModelRunner._prompt`
    builds them); every page shares it. `max_prefill` caps how many pages are
    prefilled together (default: `slots`), which bounds the prefill's activations.
    Memory held: the slots' caches (at most [slots, heads, P + max_new_tokens, dim] per
    layer, grown and shrunk in blocks of `slot_cache.CACHE_BLOCK`) plus one prefill group.
    `compile_steps` runs the decoding steps' layers under `torch.compile` (see README, Speed).
    """

    def __init__(
        self,
        model,
        prompt: dict,
        eos_token_id: int,
        max_new_tokens: int,
        *,
        slots: int,
        stop_on_loops: bool = True,
        min_new_tokens: int = 0,
        device=None,
        dtype=None,
        max_prefill: int | None = None,
        compile_steps: bool = False,
    ) -> None:
        import torch

        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        unsupported = configured_logits_settings(model)
        if unsupported:
            raise ValueError(f"continuous batching applies no logits processors; the model sets {unsupported}")
        self.model = model
        self.device = torch.device(device) if device is not None else model.device
        self.dtype = dtype if dtype is not None else model.dtype
        self.eos_token_id = int(eos_token_id)
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = int(min_new_tokens)
        self.stop_on_loops = stop_on_loops
        self.slots = int(slots)
        self.max_prefill = max(1, min(self.slots, max_prefill or self.slots))
        prompt_length = prompt["input_ids"].shape[-1]
        self.capacity_limit = round_up(prompt_length + self.max_new_tokens, CACHE_ALIGN)
        self.passes = DecoderPasses(model, prompt, self.capacity_limit, device=self.device, dtype=self.dtype,
                                    compile_steps=compile_steps)  # fmt: skip
        self.prompt_length = self.passes.prompt_length
        self.stats = LoopStats()

    def run(
        self,
        pages: Iterable[tuple[Hashable, PreparedPage]],
        logits_hook: Callable[[list[Hashable], list[int], Any], None] | None = None,
    ) -> Iterator[FinishedPage]:
        """Decode every page of `pages`; yield each as it finishes (in order of completion).

        `pages` is read lazily, one prefill group at a time. `logits_hook(keys,
        generated, logits)` may change a step's float32 logits [rows, vocab] in place
        before the argmax (`generated[i]`: tokens row i has so far); benchmarks use it
        to end pages at scheduled lengths.
        """
        import torch

        self.stats = LoopStats()
        source = iter(pages)
        rows: list[_Row] = []
        cache = self.new_cache()
        exhausted = False
        # Inference mode around each piece of work, never across a `yield`: it is thread state,
        # and the caller's code between two pages must not run in it.
        try:
            while True:
                while not exhausted and len(rows) < self.slots:
                    group = []
                    for key, page in source:
                        group.append((key, page))
                        if len(group) >= min(self.max_prefill, self.slots - len(rows)):
                            break
                    if not group:
                        exhausted = True
                        with torch.inference_mode():
                            self._fit(cache, rows, last_pages=True)
                        break
                    started = time.perf_counter()
                    with torch.inference_mode():
                        tokens, logprobs = self._prefill(cache, group, len(rows), logits_hook)
                    self.stats.prefill_seconds += time.perf_counter() - started
                    self.stats.prefills += 1
                    self.stats.prefill_rows += len(group)
                    self.stats.group_sizes.append(len(group))
                    for (key, _page), token, logprob in zip(group, tokens, logprobs):
                        rows.append(_Row(key, [token], [logprob], self.prompt_length))
                    del group
                    with torch.inference_mode():
                        finished = self._retire(cache, rows, exhausted)
                    yield from finished
                if not rows:
                    break
                started = time.perf_counter()
                with torch.inference_mode():
                    self._step(cache, rows, logits_hook)
                    finished = self._retire(cache, rows, exhausted)
                self.stats.decode_seconds += time.perf_counter() - started
                yield from finished
        finally:
            self.stats.peak_capacity, self.stats.peak_cells = cache.peak_capacity, cache.peak_cells
            cache.clear()

    def new_cache(self) -> SlotCache:
        """Empty key/value buffers for this decoder's slots (allocated on first use)."""
        config = self.model.config.text_config
        heads, head_dim = config.attention_heads, config.embed_dim // config.attention_heads
        return SlotCache(self.slots, config.layers, heads, head_dim, self.capacity_limit, self.dtype, self.device)

    def _prefill(self, cache: SlotCache, group, first_row: int, logits_hook):
        """Prefill a group of (key, page) into rows first_row..; their first tokens and log-probabilities."""
        logits = self.passes.prefill(cache, [page for _key, page in group], first_row)
        keys = [key for key, _page in group]
        return self._choose(logits, keys, [0] * len(group), logits_hook)

    def _step(self, cache: SlotCache, rows: list[_Row], logits_hook) -> None:
        """One decoding step for every active row: one new token each."""
        last_tokens, lengths = [row.tokens[-1] for row in rows], [row.length for row in rows]
        logits = self.passes.step(cache, last_tokens, lengths)
        keys = [row.key for row in rows]
        tokens, logprobs = self._choose(logits, keys, [len(row.tokens) for row in rows], logits_hook)
        for row, token, logprob in zip(rows, tokens, logprobs):
            row.tokens.append(token)
            row.logprobs.append(logprob)
            row.length += 1
        self.stats.decode_steps += 1
        self.stats.row_steps += len(rows)

    def _choose(self, logits, keys, generated: list[int], logits_hook):
        """Greedy choice per row and its log-probability; nothing vocabulary-sized is kept."""
        import torch

        scores = logits.float()
        chosen_from = scores
        if self.min_new_tokens or logits_hook is not None:
            chosen_from = scores.clone()
            if self.min_new_tokens:
                early = torch.tensor([count < self.min_new_tokens for count in generated], device=scores.device)
                chosen_from[early, self.eos_token_id] = float("-inf")
            if logits_hook is not None:
                logits_hook(keys, generated, chosen_from)
        tokens = chosen_from.argmax(dim=-1)
        logprobs = scores.gather(-1, tokens[:, None])[:, 0] - torch.logsumexp(scores, dim=-1)
        # One transfer for both: the host needs the tokens to decide which rows end.
        both = torch.stack([tokens.to(torch.float64), logprobs.to(torch.float64)]).tolist()
        return [int(token) for token in both[0]], both[1]

    # -- slot bookkeeping --

    def _retire(self, cache: SlotCache, rows: list[_Row], last_pages: bool) -> list[FinishedPage]:
        """Take the rows that are done out of `rows`, free their slots and pack the others to the
        front; `last_pages`: no page will join (the cache may give back rows)."""
        done = [index for index, row in enumerate(rows) if self._finished(row)]
        if not done:
            return []
        finished = [rows[index] for index in done]
        keep = [index for index in range(len(rows)) if index not in done]
        # Move the last live rows into the holes so rows 0..n-1 stay the live ones: a
        # decoding step then runs on a prefix of the buffers with no idle rows in it.
        holes = [index for index in done if index < len(keep)]
        movers = [index for index in keep if index >= len(keep)]
        for hole, mover in zip(holes, movers):
            cache.move_row(mover, hole, rows[mover].length)
            rows[hole] = rows[mover]
        del rows[len(keep) :]
        self._fit(cache, rows, last_pages)
        pages = []
        for row in finished:
            tokens, truncated, looping = finish_row(row.tokens, self.eos_token_id, self.stop_on_loops)
            self.stats.pages += 1
            self.stats.tokens += len(row.tokens)
            pages.append(FinishedPage(row.key, tokens, row.logprobs[: len(tokens)], truncated, looping))
        return pages

    def _fit(self, cache: SlotCache, rows: list[_Row], last_pages: bool) -> None:
        cache.fit(max((row.length + 1 for row in rows), default=self.prompt_length), len(rows), last_pages)

    def _finished(self, row: _Row) -> bool:
        count = len(row.tokens)
        if row.tokens[-1] == self.eos_token_id or count >= self.max_new_tokens:
            return True
        return self.stop_on_loops and count % LOOP_CHECK_EVERY == 0 and find_loop(row.tokens) is not None


def configured_logits_settings(model) -> list[str]:
    """The model's generation settings that would change `generate`'s logits (vs. defaults)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return []
    from transformers import GenerationConfig

    defaults = GenerationConfig()
    return [name for name in _LOGITS_SETTINGS if getattr(config, name, None) != getattr(defaults, name, None)]
