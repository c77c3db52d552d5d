"""How many pages decode together (slots, or a static batch) when `--batch-size` is not given:
what fits in the device's free memory, capped per kind of device.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import ModelRunner

# Slots (pages decoding together) at most on CPU and on CUDA; see auto_batch_size.
CPU_BATCH_LIMIT = 12
CUDA_BATCH_LIMIT = 16


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


def auto_batch_size(runner: ModelRunner) -> int:
    """Pages per `generate` call that fit in half of the free memory of the device.

    Per page: the decoder's key/value cache for prompt + max_new_tokens, plus, with
    eager vision attention, its attention scores for one layer (its largest transient).
    Capped at 12 on CPU, where a decoding step is bound by reading the weights and the
    cache from memory, so more busy slots share each read of the weights (measured,
    full-size model, bf16, 2 cores with AMX: 45.5 ms per token per page with 4 busy slots,
    31.8 with 8; runs of 24 ragged pages (`bench.py --ragged --pages 24`): 8 slots 1.20x
    as fast as 4; later 12 slots 1.14x as fast as 8 and 16 no faster than 12 (peak RSS
    8.1, 10.3, 12.4 GB)), and at 16 on GPUs.
    """
    import torch

    limit = CUDA_BATCH_LIMIT if runner.device.startswith("cuda") else CPU_BATCH_LIMIT
    config = runner.model.config
    text, vision = config.text_config, config.vision_config
    element = torch.finfo(runner.dtype).bits // 8
    tokens = 4 + config.latent_query_num + runner.settings.max_new_tokens
    kv_cache = 2 * text.layers * text.embed_dim * tokens * element
    attention_scores = (
        0 if runner.fast_vision_attention else vision.num_attention_heads * runner.max_patches**2 * (element + 4)
    )
    budget = _available_memory_bytes(runner.device) // 2
    return max(1, min(limit, budget // (kv_cache + attention_scores)))
