"""batch_size: slots from free memory, capped per device."""

from __future__ import annotations

import pytest

from kosmos_cli.model import batch_size
from kosmos_cli.model.batch_size import CPU_BATCH_LIMIT, CUDA_BATCH_LIMIT, auto_batch_size
from kosmos_cli.model.runner import ModelRunner, RunnerSettings

pytestmark = pytest.mark.model


def test_auto_batch_size_is_bounded(trained_model):
    runner = ModelRunner(RunnerSettings(model=str(trained_model)))
    limit = CUDA_BATCH_LIMIT if runner.device.startswith("cuda") else CPU_BATCH_LIMIT
    assert 1 <= auto_batch_size(runner) <= limit


def test_auto_batch_size_follows_free_memory(trained_model, monkeypatch):
    runner = ModelRunner(RunnerSettings(model=str(trained_model), device="cpu", max_new_tokens=1000))
    unbounded = auto_batch_size(runner)
    monkeypatch.setattr(batch_size, "_available_memory_bytes", lambda _device: 0)
    assert auto_batch_size(runner) == 1  # no memory to spare: still one page at a time
    monkeypatch.setattr(batch_size, "_available_memory_bytes", lambda _device: 1 << 50)
    assert auto_batch_size(runner) == CPU_BATCH_LIMIT >= unbounded
