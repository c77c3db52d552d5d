"""The slot buffers of continuous batching: growth in blocks, shrinking (positions, and rows once
no page will join), row moves, and what attention is handed in a prefill and in a decoding step."""

from __future__ import annotations

import torch

from kosmos_cli.model.slot_cache import CACHE_ALIGN, CACHE_BLOCK, SlotCache, round_up


def _cache(slots=3, layers=2, limit=4 * CACHE_BLOCK) -> SlotCache:
    return SlotCache(slots, layers, heads=2, head_dim=4, capacity_limit=limit, dtype=torch.float32, device="cpu")


def test_buffers_grow_in_blocks_up_to_the_limit_and_keep_live_rows():
    cache = _cache()
    assert cache.capacity == 0 and cache.keys == []
    cache.reserve(10, rows_in_use=0)
    assert cache.capacity == round_up(10 + CACHE_BLOCK, CACHE_ALIGN) and len(cache.keys) == len(cache.values) == 2
    assert cache.keys[0].shape == (3, 2, cache.capacity, 4) and not cache.keys[0].any()
    cache.keys[1][0, :, :5] = 7.0
    cache.keys[1][2, :, :5] = 9.0  # a row beyond rows_in_use: not kept when buffers are reallocated
    first = cache.capacity
    cache.reserve(first, rows_in_use=1)
    assert cache.capacity == first  # room enough: nothing reallocated
    cache.reserve(first + 1, rows_in_use=1)
    assert cache.capacity == round_up(first + 1 + CACHE_BLOCK, CACHE_ALIGN)
    cache.reserve(4 * CACHE_BLOCK - 10, rows_in_use=1)
    assert cache.capacity == 4 * CACHE_BLOCK  # a block more would pass the limit: capped there
    assert bool((cache.keys[1][0, :, :5] == 7.0).all()) and not cache.keys[1][2].any()
    assert cache.peak_capacity == 4 * CACHE_BLOCK


def test_capacity_no_row_needs_is_given_back():
    cache = _cache(limit=8 * CACHE_BLOCK)
    cache.reserve(6 * CACHE_BLOCK, rows_in_use=0)
    before = cache.capacity
    cache.fit(before - 2 * CACHE_BLOCK, rows_in_use=1)  # within two blocks: kept
    assert cache.capacity == before
    cache.fit(100, rows_in_use=1)
    assert cache.capacity == round_up(100 + CACHE_BLOCK, CACHE_ALIGN) and cache.peak_capacity == before


def test_prefill_writes_its_rows_and_a_step_writes_each_rows_own_position():
    cache = _cache()
    prompt = torch.randn(2, 2, 6, 4)
    cache.start_prefill(slice(1, 3), prompt_length=6)
    keys, values = cache.update(prompt, prompt + 1, layer_idx=0)
    assert keys is prompt  # prefill attention runs on the new states themselves
    assert torch.equal(cache.keys[0][1:3, :, :6], prompt) and not cache.keys[0][0].any()

    new = torch.randn(2, 2, 1, 4)
    cache.start_step(torch.tensor([6, 3]), width=7)
    keys, values = cache.update(new, new, layer_idx=0)
    assert keys.shape == (2, 2, 7, 4)  # rows 0..1, the first 7 positions
    assert torch.equal(cache.keys[0][0, :, 6], new[0, :, 0]) and torch.equal(cache.keys[0][1, :, 3], new[1, :, 0])


def test_a_row_moves_with_every_layer_and_clear_drops_the_buffers():
    cache = _cache()
    cache.reserve(8, rows_in_use=0)
    for buffer in (*cache.keys, *cache.values):
        buffer[2, :, :8] = torch.arange(8.0)[:, None]
    cache.move_row(2, 0, length=5)
    for buffer in (*cache.keys, *cache.values):
        assert torch.equal(buffer[0, :, :5], buffer[2, :, :5]) and not buffer[0, :, 5:].any()
    cache.clear()
    assert cache.capacity == 0 and cache.keys == [] and cache.values == []


def test_rows_are_given_back_only_when_no_page_will_join():
    cache = _cache(slots=8)
    cache.reserve(10, rows_in_use=0)
    assert cache.held_rows == 8
    for buffer in cache.keys:
        buffer[:, :, :5] = torch.arange(8.0)[:, None, None, None]
    cache.fit(10, rows_in_use=3)  # pages may still join: every slot's row stays
    assert cache.held_rows == 8
    cache.fit(10, rows_in_use=7, last_pages=True)  # one row free of eight: not worth a copy
    assert cache.held_rows == 8
    cache.fit(10, rows_in_use=3, last_pages=True)
    assert cache.held_rows == 3 and cache.keys[0].shape == (3, 2, cache.capacity, 4)
    assert all(torch.equal(buffer[:, 0, :5, 0], torch.arange(3.0)[:, None].expand(3, 5)) for buffer in cache.keys)
    assert cache.peak_cells == 8 * cache.capacity
    cache.fit(10, rows_in_use=0, last_pages=True)  # nothing live: nothing held
    assert cache.keys == [] and cache.held_rows == 0


def test_a_prefill_after_rows_were_given_back_gets_every_slot_again():
    cache = _cache(slots=4)
    cache.reserve(10, rows_in_use=0)
    cache.keys[0][0, :, :5] = 1.0
    cache.fit(10, rows_in_use=1, last_pages=True)
    assert cache.held_rows == 1
    cache.start_prefill(slice(1, 3), prompt_length=6)
    assert cache.held_rows == 4 and bool((cache.keys[0][0, :, :5] == 1.0).all())
