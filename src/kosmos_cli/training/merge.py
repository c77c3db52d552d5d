"""`kosmos25 merge`: a LoRA adapter + its base model -> one ordinary model folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputFailed, UsageError
from ..outputs.files import check_folder_writable


def merge_adapter(adapter: str, output: Path, dtype: str = "float32") -> Path:
    """Merge `adapter` into its base model's weights and save the result (and the processor) to `output`."""
    from ..model.loading import adapter_base, load_model, resolve_dtype

    if adapter_base(adapter) is None:
        raise UsageError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    check_folder_writable(output)
    processor, model = load_model(adapter, None, "cpu", resolve_dtype(dtype, "cpu"), "sdpa")
    try:
        model.save_pretrained(output)
        processor.save_pretrained(output)
    except OSError as exc:
        raise OutputFailed(f"cannot save the merged model to {output}: {exc.strerror or exc}") from None
    return output
