"""Training examples: a page and its ground truth -> model inputs with labels, as the model
was trained: the `<ocr>`/`<md>` prompt after the image, then the target (the ground truth
in the model's own output grammar, see `evaluation.targets`) and the end token.

Only the target and the end token carry loss. Labels are masked by *position*: every
position of the prompt (`<s><image>`, the image positions, `</image>`, the task token)
and every padding position gets -100, whatever token it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100  # the label value torch's cross-entropy skips


@dataclass(frozen=True)
class Example:
    """One page ready to batch: its patches, the prompt, and the target's token ids (end token included)."""

    flattened_patches: Any
    prompt_ids: tuple[int, ...]
    image_mask: tuple[int, ...]
    target_ids: tuple[int, ...]


def target_ids(tokenizer, text: str) -> tuple[int, ...]:
    """The target's tokens as the model writes them, then the end-of-text token."""
    return (*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id)


def sequence_and_labels(prompt_ids: tuple[int, ...], target: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example: labels are -100 at every prompt position."""
    return [*prompt_ids, *target], [IGNORE] * len(prompt_ids) + list(target)


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """A right-padded batch; padding positions get attention 0 and label -100.

    Right padding leaves every real token's position unchanged (the text model numbers
    positions by counting non-padding tokens from the left).
    """
    import torch

    rows = [sequence_and_labels(example.prompt_ids, example.target_ids) for example in examples]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    image_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, ((ids, row_labels), example) in enumerate(zip(rows, examples)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention[row, : len(ids)] = 1
        image_mask[row, : len(example.image_mask)] = torch.tensor(example.image_mask)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "image_embeds_position_mask": image_mask,
        "flattened_patches": torch.stack([example.flattened_patches for example in examples]),
        "labels": labels,
    }
