"""LoRA targets and wrapping for `kosmos25 train --method lora`.

peft matches `target_modules` silently: a pattern that names nothing trains nothing. So
`with_lora` counts the modules that matched and fails when there are none.
"""

from __future__ import annotations

import re

from ..errors import UsageError

# The text decoder's attention and feed-forward projections.
TEXT_TARGETS = r".*text_model\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
# The vision encoder's (Pix2Struct-style) attention and gated-MLP projections.
VISION_TARGETS = r".*vision_model\.encoder\..*\.(attention\.(query|key|value|output)|mlp\.(wi_0|wi_1|wo))"


def lora_targets(vision: bool) -> str:
    """The regular expression peft matches module names against (whole name)."""
    return f"(?:{TEXT_TARGETS})|(?:{VISION_TARGETS})" if vision else TEXT_TARGETS


def matching_modules(model, pattern: str) -> list[str]:
    """Names of the linear modules `pattern` selects, as peft would (a full match of the name)."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and re.fullmatch(pattern, name)]  # fmt: skip


def with_lora(model, rank: int, alpha: float, dropout: float, vision: bool):
    """(peft model, number of modules adapted); raises UsageError when peft is missing or nothing matched."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UsageError("--method lora needs peft: pip install 'kosmos25[train]' (or use --method full)") from None
    if not 0 <= dropout < 1:
        raise UsageError(f"--lora-dropout {dropout}: expected a fraction from 0 up to (not including) 1")
    pattern = lora_targets(vision)
    matched = matching_modules(model, pattern)
    if not matched:
        raise UsageError("LoRA matched no module of this model: is it a KOSMOS-2.5 checkpoint?")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    return get_peft_model(model, config), len(matched)
