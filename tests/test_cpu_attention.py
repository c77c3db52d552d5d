"""kosmos25's CPU attention kernels give SDPA's results for every shape and mask KOSMOS-2.5 uses."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from kosmos_cli.model import cpu_attention
from kosmos_cli.model.cpu_attention import (
    MEASURE_FROM_KEYS,
    CpuKernels,
    _fastest,
    _kept_keys,
    _runs_of_similar_ends,
    _whole_buffer,
    measure_cpu_kernels,
    register_cpu_attention,
)
from kosmos_cli.model.speedups import growing_cache

MIN = torch.finfo(torch.float32).min


class Attention(torch.nn.Module):
    """Stands in for a transformers attention module: the kernels read only `is_causal`."""

    def __init__(self, is_causal: bool) -> None:
        super().__init__()
        self.is_causal = is_causal


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 query rows and 1 to 4 heads, so the test shapes span several blocks."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ROWS", 5)
    monkeypatch.setattr(cpu_attention, "BLOCK_BYTES", 5 * 2 * 31 * 4)


def _key_padding_mask(batch: int, queries: int, keys: int) -> torch.Tensor:
    """The vision encoder's mask: the last keys of each page padded, every query row the same."""
    mask = torch.zeros(batch, 1, queries, keys)
    for row in range(batch):
        mask[row, ..., keys - 3 - row :] = MIN
    if batch > 1:
        mask[1, ..., 2] = MIN  # a hole as well as padding at the end
    return mask


CASES = {
    # name: (queries, keys, module is_causal, mask)
    "vision, key padding": (23, 23, False, _key_padding_mask(2, 23, 23)),
    "vision, no padding": (23, 23, False, torch.zeros(2, 1, 23, 23)),
    "image projection, no mask": (12, 31, False, None),
    "prefill, causal": (23, 23, True, None),
    "causal, keys beyond the queries": (11, 19, True, None),
    "additive mask per head": (9, 14, False, torch.randn(2, 4, 9, 14)),
    "boolean mask": (9, 14, True, torch.rand(1, 1, 9, 14) > 0.3),
}


@pytest.mark.parametrize("kernel", ["blocked", "sdpa"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scaling", [0.125, 0.3])
def test_many_query_tokens_match_sdpa(name, scaling, kernel, small_blocks):
    queries, keys, is_causal, mask = CASES[name]
    torch.manual_seed(0)
    if mask is not None and mask.dtype == torch.bool:
        mask[..., 0] = True  # every query sees at least one key, as in real masks
    query, key, value = torch.randn(2, 4, queries, 8), torch.randn(2, 4, keys, 8), torch.randn(2, 4, keys, 8)
    module = Attention(is_causal)
    kernels = CpuKernels(many_queries=kernel)
    ours, _ = ALL_ATTENTION_FUNCTIONS[register_cpu_attention(kernels)](module, query, key, value, mask, scaling=scaling)
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=scaling)
    assert ours.shape == reference.shape == (2, queries, 4, 8)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_is_causal_argument_overrides_the_module(small_blocks):
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 13, 8), torch.randn(1, 2, 13, 8)
    ours, _ = cpu_attention.cpu_attention(Attention(True), query, key, value, None, is_causal=False)
    reference = torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_kept_keys_recognises_only_key_padding():
    padding = _key_padding_mask(1, 6, 10)[0]
    assert _kept_keys(padding) == slice(0, 7)  # padding at the end: a view, no copy
    assert _kept_keys(torch.zeros(1, 6, 10)) == slice(0, 10)
    padding[..., 1] = MIN
    assert _kept_keys(padding).tolist() == [0, 2, 3, 4, 5, 6]
    varying = _key_padding_mask(1, 6, 10)[0]
    varying[0, 2, 1] = MIN  # one query row differs: not a key-padding mask
    assert _kept_keys(varying) is None
    soft = torch.zeros(1, 6, 10)
    soft[..., 3] = -2.0  # a bias, not padding: must be added, not dropped
    assert _kept_keys(soft) is None
    assert _kept_keys(torch.full((1, 6, 10), MIN)) is None  # nothing left to attend to
    assert _kept_keys(torch.ones(1, 6, 10, dtype=torch.bool)) is None


@pytest.mark.parametrize("kernel", ["products", "sdpa"])
def test_decode_step_matches_sdpa_on_a_growing_cache_view(kernel):
    torch.manual_seed(0)
    cache = growing_cache(step=16)
    keys, values = torch.randn(2, 4, 37, 8), torch.randn(2, 4, 37, 8)
    cache.update(keys, values, 0)
    key_view, value_view = cache.update(torch.randn(2, 4, 1, 8), torch.randn(2, 4, 1, 8), 0)
    assert key_view.shape == (2, 4, 38, 8) and _whole_buffer(key_view).shape == (2, 4, 53, 8)
    assert _whole_buffer(keys) is keys or _whole_buffer(keys).data_ptr() == keys.data_ptr()  # contiguous: itself
    assert _whole_buffer(torch.randn(4, 2, 38, 8).transpose(0, 1)) is None  # other layouts: not taken

    query = torch.randn(2, 4, 1, 8)
    mask = torch.zeros(2, 1, 1, 38)
    mask[1, ..., :5] = MIN  # a padded start on the second row
    attention = ALL_ATTENTION_FUNCTIONS[register_cpu_attention(CpuKernels(one_query=kernel))]
    fast, _ = attention(Attention(True), query, key_view, value_view, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(Attention(True), query, key_view.contiguous(), value_view.contiguous(), mask, scaling=0.3)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("short_row_keys", [4, 1000])
def test_one_query_rows_of_different_lengths_match_sdpa(monkeypatch, short_row_keys):
    # A decoding step's boolean key mask: rows end at different positions (one also starts
    # late, as a left-padded row would); 4: rows in calls of their own; 1000: one call.
    monkeypatch.setattr(cpu_attention, "SHORT_ROW_KEYS", short_row_keys)
    torch.manual_seed(0)
    query, keys, values = torch.randn(4, 3, 1, 8), torch.randn(4, 3, 40, 8), torch.randn(4, 3, 40, 8)
    mask = torch.zeros(4, 1, 1, 40, dtype=torch.bool)
    for row, end in enumerate([40, 12, 31, 5]):
        mask[row, ..., :end] = True
    mask[2, ..., :3] = False
    attention = ALL_ATTENTION_FUNCTIONS[register_cpu_attention(CpuKernels(one_query="sdpa"))]
    fast, _ = attention(Attention(True), query, keys, values, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(Attention(True), query, keys, values, mask, scaling=0.3)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


def test_rows_are_grouped_in_neighbouring_runs_of_similar_length(monkeypatch):
    monkeypatch.setattr(cpu_attention, "SHORT_ROW_KEYS", 256)
    assert _runs_of_similar_ends([3000, 2200, 2300, 2250]) == [(0, 1, 3000), (1, 4, 2300)]
    assert _runs_of_similar_ends([2200, 3000, 2300]) == [(0, 1, 2200), (1, 2, 3000), (2, 3, 2300)]
    assert _runs_of_similar_ends([2200, 2400, 2100]) == [(0, 2, 2400), (2, 3, 2100)]  # 300 apart over the run
    assert _runs_of_similar_ends([2200, 2300]) == [(0, 2, 2300)]


def test_unusual_calls_go_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_attention, "many_query_attention", lambda *args: calls.append("blocked"))
    query = torch.randn(1, 2, 5, 8)
    module = Attention(False)
    module.num_key_value_groups = 2  # grouped key/value heads
    output, _ = cpu_attention.cpu_attention(module, query, torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8), None)
    assert output.shape == (1, 5, 2, 8) and calls == []
    cpu_attention.cpu_attention(Attention(False), query, query, query, None, dropout=0.1)
    assert calls == []
    cpu_attention.cpu_attention(Attention(False), query, query, query, None)
    assert calls == ["blocked"]


def test_the_faster_candidate_wins():
    import time

    slow = lambda: time.sleep(0.02)  # noqa: E731
    fast = lambda: None  # noqa: E731
    assert _fastest({"slow": slow, "fast": fast}) == "fast"
    assert _fastest({"fast": fast, "slow": slow}) == "fast"


def test_kernels_are_measured_only_at_shapes_where_timing_means_something():
    small = measure_cpu_kernels(2, 8, MEASURE_FROM_KEYS - 1, 2, 8, 64, 2, "float32", 1)
    assert small == CpuKernels() and not small.measured
    measured = measure_cpu_kernels(2, 8, MEASURE_FROM_KEYS, 2, 8, 300, 2, "float32", 1)
    assert measured.measured
    assert measured.many_queries in ("blocked", "sdpa") and measured.one_query in ("products", "sdpa")
    assert "measured" in measured.describe()
