"""Runner: pages (RGB images) -> raw model text, with KOSMOS-2.5 through transformers.

torch and transformers are imported here only, inside functions, so that the CLI's
`--help` stays instant.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from .errors import GenerationFailed, ModelUnavailable, UsageError
from .repetition import find_loop, trim_loop

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MODEL = "microsoft/kosmos-2.5"
MODEL_ENV_VAR = "KOSMOS25_MODEL"
TASK_PROMPTS = {"ocr": "<ocr>", "md": "<md>"}
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_KINDS = ("sdpa", "eager", "flash_attention_2")


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


@dataclass(frozen=True)
class RawOutput:
    """The model's text for one page and the size of the image it actually saw."""

    text: str
    resized_width: int
    resized_height: int
    truncated: bool
    looping: bool = False


def default_model() -> str:
    """The model to load when `--model` is not given."""
    return os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL


def resolve_device(spec: str) -> str:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a concrete device, checking it exists."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if spec == "cpu":
        return spec
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelUnavailable("--device mps: Apple MPS is not available in this torch build or machine")
        return spec
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise UsageError(f"--device {spec}: expected cuda or cuda:N")
        if not torch.cuda.is_available():
            raise ModelUnavailable(
                f"--device {spec}: CUDA is not available (torch {torch.__version__}); "
                "install a CUDA build of torch (make install TORCH=...) or use --device cpu"
            )
        if int(index_text) >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return spec
    raise UsageError(f"--device {spec}: expected auto, cpu, cuda, cuda:N or mps")


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(spec: str, device: str):
    """Pick the torch dtype: bf16 on CUDA (fp16 if unsupported), fp16 on MPS,
    bf16 on CPUs with native bf16 instructions (faster there), else float32."""
    import torch

    if spec != "auto":
        if spec not in DTYPES:
            raise UsageError(f"--dtype {spec}: expected one of {', '.join(DTYPES)}")
        return getattr(torch, spec)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a folder.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _hub_reachable() -> bool:
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=5):
            return True
    except OSError:
        return False


def _unavailable(model: str, tried: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"Cannot load the KOSMOS-2.5 model '{model}': {reason} (tried: {tried}). "
        "To fix: on a machine with internet access run "
        "'huggingface-cli download microsoft/kosmos-2.5 --local-dir kosmos-2.5', copy that folder here and pass "
        "--model ./kosmos-2.5 (or set KOSMOS25_MODEL); if the model is already in the Hugging Face cache, "
        "set HF_HUB_OFFLINE=1."
    )


class ModelRunner:
    """Loads KOSMOS-2.5 once and reads batches of pages with greedy decoding."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ModelUnavailable(f"cannot import {exc.name}: run 'make install' to install the dependencies") from None
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        if settings.attn not in ATTENTION_KINDS:
            raise UsageError(f"--attn {settings.attn}: expected one of {', '.join(ATTENTION_KINDS)}")
        if settings.attn == "flash_attention_2" and not self.device.startswith("cuda"):
            raise UsageError("--attn flash_attention_2 needs a CUDA device")
        self.processor, self.model = self._load()
        self.max_patches = settings.max_patches or self.processor.image_processor.max_patches
        tokenizer = self.processor.tokenizer
        self.eos_token_id = tokenizer.eos_token_id

    def _load(self):
        from transformers import AutoConfig, AutoProcessor, Kosmos2_5ForConditionalGeneration
        from transformers.utils import logging as transformers_logging

        # Our own messages say what is loading; transformers' bars and notices would clutter stderr.
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()

        model = self.settings.model
        local = Path(model).expanduser()
        kwargs = {"revision": self.settings.revision}
        if local.is_dir():
            source, tried = str(local), f"local folder {local}"
        elif _looks_like_path(model) or local.exists():
            raise _unavailable(model, f"local folder {local}", "no such folder")
        else:
            source, tried = model, f"Hugging Face cache for {model}"
            try:
                AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
                kwargs["local_files_only"] = True
            except OSError:
                if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
                    raise _unavailable(model, tried, "not in the local cache and HF_HUB_OFFLINE is set") from None
                tried += " and the Hugging Face hub"
                if not _hub_reachable():
                    raise _unavailable(model, tried, "not cached, and the Hugging Face hub is unreachable") from None
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
            if config.model_type != "kosmos-2.5":
                raise _unavailable(model, tried, f"it is a '{config.model_type}' model, not KOSMOS-2.5")
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            loaded = Kosmos2_5ForConditionalGeneration.from_pretrained(
                source, dtype=self.dtype, attn_implementation=self.settings.attn, **kwargs
            )
        except (OSError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _unavailable(model, tried, reason) from None
        return processor, loaded.to(self.device).eval()

    def generate(self, images: list[Image.Image], task: str) -> list[RawOutput]:
        """Read a batch of pages with one `generate` call; one RawOutput per image, in order.

        Every page shares the prompt and patch count, so no padding is involved and
        each page's result does not depend on the others in the batch.
        """
        import torch

        prompt = TASK_PROMPTS[task]
        inputs = self.processor(
            text=[prompt] * len(images), images=images, max_patches=self.max_patches, return_tensors="pt"
        )
        widths = inputs.pop("width").view(-1).tolist()
        heights = inputs.pop("height").view(-1).tolist()
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        inputs["flattened_patches"] = inputs["flattened_patches"].to(self.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        try:
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=self.settings.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    stopping_criteria=[_stop_on_loop(prompt_length)],
                )
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GenerationFailed(f"model failed: {first_line}") from exc
        outputs = []
        for row, width, height in zip(generated[:, prompt_length:].tolist(), widths, heights):
            finished = self.eos_token_id in row
            tokens, looping = trim_loop(row)
            text = self.processor.decode(tokens, skip_special_tokens=True)
            outputs.append(RawOutput(text, int(width), int(height), truncated=not (finished or looping), looping=looping))
        return outputs


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


def _available_memory_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def auto_batch_size(runner: ModelRunner, limit: int = 8) -> int:
    """Pages per `generate` call that fit in half of the free memory of the device.

    Per page: the decoder's key/value cache for prompt + max_new_tokens, plus the
    vision encoder's attention scores for one layer (its largest transient).
    """
    import torch

    config = runner.model.config
    text, vision = config.text_config, config.vision_config
    element = torch.finfo(runner.dtype).bits // 8
    tokens = 4 + config.latent_query_num + runner.settings.max_new_tokens
    kv_cache = 2 * text.layers * text.embed_dim * tokens * element
    attention_scores = vision.num_attention_heads * runner.max_patches**2 * (element + 4)
    per_page = kv_cache + attention_scores
    budget = _available_memory_bytes(runner.device) // 2
    return max(1, min(limit, budget // per_page))
