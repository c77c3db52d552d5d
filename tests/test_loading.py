"""Loading tests: device and dtype choice, and every way a model can fail to load."""

from __future__ import annotations

import pytest

from kosmos_cli.errors import ModelUnavailable, UsageError
from kosmos_cli.model.loading import resolve_device, resolve_dtype
from kosmos_cli.model.runner import ModelRunner, RunnerSettings

pytestmark = pytest.mark.model


def test_device_resolution_on_this_machine():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="expected auto, cpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailable, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_dtype_resolution():
    import torch

    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    with pytest.raises(UsageError):
        resolve_dtype("int8", "cpu")


def test_missing_folder_is_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable) as caught:
        ModelRunner(RunnerSettings(model=str(tmp_path / "nowhere")))
    assert "no such folder" in caught.value.message
    assert "pass the folder that holds the model's config.json" in caught.value.message
    assert "hf download microsoft/kosmos-2.5" in caught.value.message and "HF_HUB_OFFLINE" not in caught.value.message


def test_wrong_architecture_is_model_unavailable(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match="it is a 'gpt2' model, not KOSMOS-2.5"):
        ModelRunner(RunnerSettings(model=str(tmp_path)))


def test_uncached_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as caught:
        ModelRunner(RunnerSettings(model="someone/not-cached-kosmos"))
    assert "not in the local cache and HF_HUB_OFFLINE is set (and there is no folder someone/not-cached-kosmos here)" in (
        caught.value.message
    )
    assert caught.value.message.endswith("(or set KOSMOS25_MODEL); or unset HF_HUB_OFFLINE to download it.")
