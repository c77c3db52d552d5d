"""Runner: pages (RGB images) -> raw model text, with KOSMOS-2.5 through transformers.

`prepare` turns one image into model inputs (it can run in a background thread while
the model works); `generate_prepared` reads a batch of prepared pages in one greedy
`generate` call. torch is imported inside functions so the CLI's `--help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .batch_size import CPU_BATCH_LIMIT, auto_batch_size
from .compat import cache_keyword
from .cpu_attention import CPU_ATTENTION, CpuKernels, measure_cpu_kernels, register_cpu_attention
from ..errors import GenerationFailed, UsageError
from .loading import ATTENTION_KINDS, DEFAULT_MODEL, load_model, resolve_device, resolve_dtype
from .records import PreparedPage, RawOutput, finish_row, mean_probability, segment_confidences
from .repetition import find_loop
from .fused_layers import fuse_vision_layers
from .packed import MANY_ROWS, float32_products_faster, pack_linear_weights
from .speedups import (
    enable_vision_attention_kernel,
    fuse_vision_elementwise,
    growing_cache,
    vision_attention_lookup_is_broken,
)

if TYPE_CHECKING:
    from PIL import Image

TASK_PROMPTS = {"ocr": "<ocr>", "md": "<md>"}
BOX_TOKEN = "<bbox>"


@dataclass(frozen=True)
class RunnerSettings:
    """How to load and run the model (the CLI's model options)."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "sdpa"
    max_new_tokens: int = 4096
    max_patches: int | None = None
    # "continuous": a finished page's slot takes the next page at once (model/decode_loop.py);
    # "static": pages share `generate` calls that run until their longest page ends.
    batching: str = "continuous"
    # Benchmarks force a fixed length per page: min_new_tokens = max_new_tokens, no loop stop.
    min_new_tokens: int = 0
    stop_on_loops: bool = True
    # Continuous batching's decoding steps under torch.compile (--compile; README, Speed).
    compile: bool = False


class ModelRunner:
    """Loads KOSMOS-2.5 once and reads batches of pages with greedy decoding."""

    def __init__(self, settings: RunnerSettings) -> None:
        if settings.attn not in ATTENTION_KINDS:
            raise UsageError(f"--attn {settings.attn}: expected one of {', '.join(ATTENTION_KINDS)}")
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        if settings.attn == "flash_attention_2" and not self.device.startswith("cuda"):
            raise UsageError("--attn flash_attention_2 needs a CUDA device")
        if settings.compile and settings.batching != "continuous":
            raise UsageError("--compile applies to --batching continuous")
        # On CPU, "sdpa" means kosmos25's CPU attention kernels, chosen per machine (see cpu_attention).
        self.attention = register_cpu_attention() if self.device == "cpu" and settings.attn == "sdpa" else settings.attn
        self.processor, self.model = load_model(settings.model, settings.revision, self.device, self.dtype, self.attention)
        self.max_patches = settings.max_patches or self.processor.image_processor.max_patches
        self.cpu_kernels = self._choose_cpu_kernels() if self.attention == CPU_ATTENTION else None
        # "eager" keeps transformers' own code paths, for comparison; every other kind gets the speed-ups.
        # True when the vision encoder runs the requested kernel rather than eager attention.
        self.fast_vision_attention = settings.attn != "eager" and (
            enable_vision_attention_kernel(self.attention) or not vision_attention_lookup_is_broken()
        )
        # Whether products of many rows run in float32 on this CPU (measured; see speedups).
        self.float32_products = False
        if settings.attn != "eager":
            fuse_vision_elementwise(self.model)
            self.float32_products = self._float32_products_faster()
            float32_from = MANY_ROWS if self.float32_products else None
            if pack_linear_weights(self.model, decoder=not settings.compile, float32_from=float32_from):
                fuse_vision_layers(self.model)
        self.eos_token_id = self.processor.tokenizer.eos_token_id
        self.box_token_id = self.processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN)
        self._prompts: dict[str, dict] = {}

    def _choose_cpu_kernels(self) -> CpuKernels:
        """Time the CPU attention candidates at this model's shapes and register the faster ones."""
        import torch

        config = self.model.config
        vision, text = config.vision_config, config.text_config
        kernels = measure_cpu_kernels(
            vision.num_attention_heads,
            vision.hidden_size // vision.num_attention_heads,
            self.max_patches,
            text.attention_heads,
            text.embed_dim // text.attention_heads,
            # A decoding step's whole buffers: the prompt plus a block of new tokens.
            config.latent_query_num + 4 + min(256, self.settings.max_new_tokens),
            CPU_BATCH_LIMIT,
            str(self.dtype).removeprefix("torch."),
            torch.get_num_threads(),
        )
        register_cpu_attention(kernels)
        return kernels

    def _float32_products_faster(self) -> bool:
        import torch

        if self.device != "cpu" or self.dtype != torch.bfloat16:
            return False
        return float32_products_faster(torch.get_num_threads())

    @property
    def supports_continuous_batching(self) -> bool:
        """Whether `decode_stream` can run this model: it needs per-row key masks (not
        flash attention) and applies no logits processors (none configured)."""
        from .decode_loop import configured_logits_settings
        from .decode_passes import SUPPORTED_ATTENTION

        return self.attention in SUPPORTED_ATTENTION and not configured_logits_settings(self.model)

    def prepare(self, image: Image.Image) -> PreparedPage:
        """Resize and patch one page (CPU work, safe to run beside `generate_prepared`)."""
        features = self.processor.image_processor(images=[image], max_patches=self.max_patches, return_tensors="pt")
        return PreparedPage(features["flattened_patches"][0], int(features["width"][0]), int(features["height"][0]))

    def _prompt(self, task: str) -> dict:
        """The text side of the inputs for one page; identical for every page of a task."""
        if task not in self._prompts:
            from PIL import Image

            probe = self.processor(
                text=[TASK_PROMPTS[task]], images=[Image.new("RGB", (16, 16))], max_patches=16, return_tensors="pt"
            )
            keys = ("input_ids", "attention_mask", "image_embeds_position_mask")
            self._prompts[task] = {key: probe[key] for key in keys}
        return self._prompts[task]

    def generate(self, images: list[Image.Image], task: str) -> list[RawOutput]:
        """Read a batch of pages; one RawOutput per image, in order."""
        return self.generate_prepared([self.prepare(image) for image in images], task)

    def generate_prepared(self, pages: list[PreparedPage], task: str) -> list[RawOutput]:
        """Read prepared pages with one `generate` call; one RawOutput per page, in order.

        Every page shares the prompt and patch count, so no padding is involved and
        each page's result does not depend on the others in the batch.
        """
        import torch

        inputs = {key: value.repeat(len(pages), 1).to(self.device) for key, value in self._prompt(task).items()}
        patches = torch.stack([page.flattened_patches for page in pages])
        inputs["flattened_patches"] = patches.to(self.device, self.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        recorder = _chosen_token_logprobs()
        try:
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=self.settings.max_new_tokens,
                    min_new_tokens=self.settings.min_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    **{cache_keyword(): growing_cache()},
                    stopping_criteria=[_stop_on_loop(prompt_length)] if self.settings.stop_on_loops else None,
                    logits_processor=[recorder],
                )
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GenerationFailed(f"model failed: {first_line}") from exc
        step_logprobs = torch.stack(recorder.steps, dim=1).tolist()
        outputs = []
        for row, logprobs, page in zip(generated[:, prompt_length:].tolist(), step_logprobs, pages):
            tokens, truncated, looping = finish_row(row, self.eos_token_id, self.settings.stop_on_loops)
            outputs.append(self.raw_output(page, tokens, logprobs[: len(tokens)], truncated, looping))
        return outputs

    def raw_output(
        self, page: PreparedPage, tokens: list[int], logprobs: list[float], truncated: bool, looping: bool
    ) -> RawOutput:
        """One page's finished tokens (and their log-probabilities) -> its RawOutput."""
        text = self.processor.decode(tokens, skip_special_tokens=True)
        segments = segment_confidences(tokens, logprobs, self.box_token_id, self.eos_token_id)
        return RawOutput(
            text, page.resized_width, page.resized_height, truncated, looping, segments, mean_probability(logprobs)
        )


    def decode_stream(self, pairs, task: str, slots: int | None = None, logits_hook=None):
        """Read (key, PreparedPage) pairs with continuous batching; yield results as pages finish.

        Yields `decode_loop.StreamedOutput(key, output, tokens, logprobs)` in order of
        completion, not of input. `slots` (default: `auto_batch_size`) pages decode at a
        time; a finished page's slot takes the next page at once. Keys must be unique.
        See `decode_loop.ContinuousDecoder` (and its `run` for `logits_hook`).
        """
        import torch

        from .decode_loop import ContinuousDecoder, StreamedOutput

        decoder = ContinuousDecoder(
            self.model,
            self._prompt(task),
            self.eos_token_id,
            self.settings.max_new_tokens,
            slots=slots or auto_batch_size(self),
            stop_on_loops=self.settings.stop_on_loops,
            min_new_tokens=self.settings.min_new_tokens,
            device=self.device,
            dtype=self.dtype,
            # On CPU the vision encoder gets slower per page as more pages share a call (measured,
            # full-size, bf16, 2 cores: 6.9 s per page alone, 8.2 in fours, 8.4 in eights), so pages
            # are prefilled one at a time there; GPUs gain from groups.
            max_prefill=1 if self.device == "cpu" else None,
            compile_steps=self.settings.compile,
        )
        self.last_decoder = decoder  # its `stats` tell benchmarks how the slots were used
        sizes: dict = {}

        def remembered():
            # Only the sizes stay here; the decoder lets go of a page's patches once it is prefilled.
            for key, page in pairs:
                if key in sizes:
                    raise UsageError(f"decode_stream: key {key!r} given twice")
                sizes[key] = (page.resized_width, page.resized_height)
                yield key, page

        try:
            for finished in decoder.run(remembered(), logits_hook):
                page = PreparedPage(None, *sizes.pop(finished.key))
                output = self.raw_output(page, finished.tokens, finished.logprobs, finished.truncated, finished.looping)
                yield StreamedOutput(finished.key, output, finished.tokens, finished.logprobs)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GenerationFailed(f"model failed: {first_line}") from exc


def _chosen_token_logprobs():
    """A logits processor that records, per step, the log-probability of the greedy choice.

    Added last, it sees the scores greedy search takes the maximum of; it keeps one
    number per row and step, never the whole vocabulary.
    """
    import torch
    from transformers import LogitsProcessor

    class ChosenTokenLogprobs(LogitsProcessor):
        def __init__(self) -> None:
            self.steps: list = []

        def __call__(self, input_ids, scores):
            self.steps.append(torch.log_softmax(scores.float(), dim=-1).amax(dim=-1))
            return scores

    return ChosenTokenLogprobs()


def _stop_on_loop(prompt_length: int, every: int = 8):
    """A stopping criterion that ends each sequence caught repeating itself."""
    import torch
    from transformers import StoppingCriteria

    class StopOnLoop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if (input_ids.shape[1] - prompt_length) % every == 0:
                for index, row in enumerate(input_ids[:, prompt_length:].tolist()):
                    done[index] = find_loop(row) is not None
            return done

    return StopOnLoop()
