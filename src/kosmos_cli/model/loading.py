"""Loading KOSMOS-2.5: choosing the device and dtype, finding the model (folder, cache,
hub), and turning every way that can fail into one clear ModelUnavailable paragraph.

torch and transformers are imported inside functions so that `--help` stays instant.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelUnavailable, UsageError

DEFAULT_MODEL = "microsoft/kosmos-2.5"
# A LoRA adapter folder (kosmos25 train --method lora) holds this file naming its base model.
ADAPTER_CONFIG = "adapter_config.json"
MODEL_ENV_VAR = "KOSMOS25_MODEL"
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_KINDS = ("sdpa", "eager", "flash_attention_2")


def default_model() -> str:
    """The model to load when `--model` is not given."""
    return os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL


def resolve_device(spec: str) -> str:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a concrete device, checking it exists."""
    import torch

    spec = spec.strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_available = mps is not None and mps.is_available()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu"
    if spec == "cpu":
        return spec
    if spec == "mps":
        if not mps_available:
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


_GET_THE_MODEL = (
    "on a machine with internet access run 'hf download microsoft/kosmos-2.5 --local-dir kosmos-2.5', "
    "copy that folder here and pass --model ./kosmos-2.5 (or set KOSMOS25_MODEL)"
)


def _unavailable(model: str, tried: str, reason: str, fix: str = _GET_THE_MODEL) -> ModelUnavailable:
    return ModelUnavailable(f"Cannot load the KOSMOS-2.5 model '{model}': {reason} (tried: {tried}). To fix: {fix}.")


def _locate(model: str, revision: str | None) -> tuple[str, dict, str]:
    """Where to load `model` from: (source, from_pretrained keyword arguments, what was tried).

    The hub is only tried when the model is not cached and the hub answers, so an
    offline machine gets the error at once instead of after minutes of retries.
    """
    from transformers import AutoConfig

    local = Path(model).expanduser()
    kwargs: dict = {"revision": revision}
    if local.is_dir():
        return str(local), kwargs, f"local folder {local}"
    if _looks_like_path(model) or local.exists():
        fix = f"pass the folder that holds the model's config.json and weights; to get one, {_GET_THE_MODEL}"
        raise _unavailable(model, f"local folder {local}", "no such folder", fix)
    source, tried = model, f"Hugging Face cache for {model}"
    try:
        AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
        kwargs["local_files_only"] = True
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            reason = "not in the local cache and HF_HUB_OFFLINE is set"
            if "/" in model:  # an id, or a relative folder that is not there
                reason += f" (and there is no folder {local} here)"
            fix = f"{_GET_THE_MODEL}; or unset HF_HUB_OFFLINE to download it"
            raise _unavailable(model, tried, reason, fix) from None
        tried += " and the Hugging Face hub"
        if not _hub_reachable():
            raise _unavailable(model, tried, "not cached, and the Hugging Face hub is unreachable") from None
    return source, kwargs, tried


def _import_transformers():
    try:
        import torch  # noqa: F401
        import transformers
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        raise ModelUnavailable(f"cannot import {exc.name}: run 'make install' to install the dependencies") from None

    # Our own messages say what is loading; transformers' bars and notices would clutter stderr.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    return transformers


def adapter_base(model: str) -> str | None:
    """The base model a LoRA adapter folder names, or None when `model` is not an adapter."""
    path = Path(model).expanduser() / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise _unavailable(model, f"adapter {path}", f"cannot read it ({exc})") from None
    if not base:
        raise _unavailable(model, f"adapter {path}", "it names no base_model_name_or_path")
    return base


def load_processor(model: str, revision: str | None = None):
    """Load (processor, config) without the weights: enough to count a target's tokens and
    know the text model's limits before the model itself is loaded.

    For a LoRA adapter folder: its own processor (saved with it) and its base model's config.
    """
    transformers = _import_transformers()
    base = adapter_base(model)
    if base is not None:
        _processor, config = load_processor(base)
        return _load_processor(transformers, model, (str(Path(model).expanduser()), {}, f"adapter {model}"), config)
    return _load_processor(transformers, model, _locate(model, revision))


def _load_processor(transformers, model: str, located: tuple[str, dict, str], config=None):
    source, kwargs, tried = located
    try:
        config = config or transformers.AutoConfig.from_pretrained(source, **kwargs)
        if config.model_type != "kosmos-2.5":
            raise _unavailable(model, tried, f"it is a '{config.model_type}' model, not KOSMOS-2.5")
        processor = transformers.AutoProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unavailable(model, tried, reason) from None
    return processor, config


def load_model(model: str, revision: str | None, device: str, dtype, attn: str):
    """Load (processor, model) from a local folder, the cache, or the hub, in that order.

    A LoRA adapter folder loads its base model the same way, then the adapter, merged
    into the weights (inference then runs at the base model's speed).
    """
    transformers = _import_transformers()
    base = adapter_base(model)
    if base is not None:
        return _load_adapter(model, base, device, dtype, attn)
    located = _locate(model, revision)
    processor, _config = _load_processor(transformers, model, located)
    source, kwargs, tried = located
    try:
        loaded = transformers.Kosmos2_5ForConditionalGeneration.from_pretrained(
            source, dtype=dtype, attn_implementation=attn, **kwargs
        )
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unavailable(model, tried, reason) from None
    return processor, loaded.to(device).eval()


def _load_adapter(model: str, base: str, device: str, dtype, attn: str):
    try:
        from peft import PeftModel
    except ImportError:
        raise _unavailable(model, f"adapter {model}", "it is a LoRA adapter and peft is not installed "
                           "(pip install 'kosmos25[train]')") from None  # fmt: skip
    processor, _config = load_processor(model)
    _base_processor, loaded = load_model(base, None, "cpu", dtype, attn)
    try:
        merged = PeftModel.from_pretrained(loaded, str(Path(model).expanduser())).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise _unavailable(model, f"adapter {model} on {base}", str(exc).strip().splitlines()[0]) from None
    return processor, merged.to(device).eval()
