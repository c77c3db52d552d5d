"""Learning-rate schedule: linear warm-up, then cosine decay to zero.

The schedule spans the planned run (`--epochs` x optimizer steps per epoch); `--max-steps`
stops a run without reshaping it, so a run stopped at step N and resumed follows the same
learning rates as one that never stopped.
"""

from __future__ import annotations

import math


def default_warmup(total_steps: int) -> int:
    """10% of the planned steps, rounded."""
    return round(0.1 * total_steps)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate for the optimizer step after `step` steps done."""
    if step < warmup:
        return (step + 1) / (warmup + 1)  # never 0: the first step already learns
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, warmup: int, total: int):
    """A torch LambdaLR following `lr_factor`; its state saves and loads with the run."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
