"""Continuous batching gives every page the tokens of its own single-page greedy `generate`.

The pages come from a tiny random checkpoint whose weights are drawn wide enough
(std 0.3) that its output depends on the image and does not settle into one repeated
token at once. Pages end at different steps by declaring one token "EOS" for the run
(`generate(eos_token_id=...)` and the decoder take the same id): the token page 0 starts
with, so page 0 ends at step 1, some pages meet it later and some never (they run to
max_new_tokens).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_checkpoint
from kosmos_cli.model import decode_loop, decode_passes, runner as runner_module
from kosmos_cli.model.cpu_attention import CPU_ATTENTION, CpuKernels, register_cpu_attention
from kosmos_cli.model.decode_loop import ContinuousDecoder
from kosmos_cli.model.records import finish_row
from kosmos_cli.model.runner import ModelRunner, RunnerSettings

pytestmark = pytest.mark.model

NEW_TOKENS = 30
WIDE_STD = 0.3


@pytest.fixture(scope="session")
def varied_model(tmp_path_factory):
    """Tiny checkpoint whose greedy output varies with the image (a second or two to build)."""
    tokenizer = tiny_checkpoint.build_tokenizer()
    model = tiny_checkpoint._build_model(len(tokenizer), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and ("layers" in name or "image_to_text" in name or "vision" in name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * WIDE_STD)
    folder = tmp_path_factory.mktemp("varied-checkpoint")
    model.save_pretrained(folder)
    tiny_checkpoint.build_processor(tokenizer).save_pretrained(folder)
    return folder


def _images(count: int = 8):
    rng = np.random.default_rng(0)
    fixed = [Image.new("RGB", (400, 200), "white"), Image.new("RGB", (123, 777), (10, 200, 30)),
             Image.linear_gradient("L").resize((100, 500)).convert("RGB")]  # fmt: skip
    noise = [Image.fromarray(rng.integers(0, 255, (100 + 40 * k, 300, 3), dtype=np.uint8)) for k in range(count)]
    return (fixed + noise)[:count]


def _runner(checkpoint, **settings) -> ModelRunner:
    return ModelRunner(RunnerSettings(model=str(checkpoint), dtype="float32", **settings))


def _reference(runner: ModelRunner, page, eos: int, max_new_tokens: int, stop_on_loops: bool = False):
    """One page alone through `generate`: (tokens, logprobs, truncated, looping)."""
    inputs = {key: value.to(runner.device) for key, value in runner._prompt("ocr").items()}
    inputs["flattened_patches"] = page.flattened_patches[None].to(runner.device, runner.dtype)
    prompt_length = inputs["input_ids"].shape[1]
    stopping = [runner_module._stop_on_loop(prompt_length)] if stop_on_loops else None
    with torch.inference_mode():
        generated = runner.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                          eos_token_id=eos, pad_token_id=eos, output_scores=True,
                                          return_dict_in_generate=True, stopping_criteria=stopping)  # fmt: skip
    row = generated.sequences[0, prompt_length:].tolist()
    tokens, truncated, looping = finish_row(row, eos, stop_on_loops)
    logprobs = [torch.log_softmax(generated.scores[step][0].float(), -1)[token].item() for step, token in enumerate(tokens)]
    return tokens, logprobs, truncated, looping


def _decoder(runner: ModelRunner, eos: int, max_new_tokens: int, slots: int, **options) -> ContinuousDecoder:
    return ContinuousDecoder(runner.model, runner._prompt("ocr"), eos, max_new_tokens, slots=slots,
                             device=runner.device, dtype=runner.dtype, **options)  # fmt: skip


@pytest.fixture(scope="module")
def case(varied_model):
    """The runner, the prepared pages, the run's EOS and every page's single-page reference."""
    runner = _runner(varied_model)
    pages = [runner.prepare(image) for image in _images()]
    eos = _reference(runner, pages[0], runner.eos_token_id, max_new_tokens=1)[0][0]
    references = [_reference(runner, page, eos, NEW_TOKENS) for page in pages]
    lengths = [len(tokens) for tokens, *_ in references]
    # The test has teeth only if pages end at different steps, at step 1 and at the limit among them.
    assert lengths[0] == 1 and NEW_TOKENS in lengths and len(set(lengths)) >= 4, lengths
    assert any(truncated for *_, truncated, _looping in references)
    return runner, pages, eos, references


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
def test_each_page_gets_its_single_page_tokens_and_logprobs(case, slots):
    runner, pages, eos, references = case
    decoder = _decoder(runner, eos, NEW_TOKENS, slots, stop_on_loops=False)
    finished = list(decoder.run(enumerate(pages)))
    assert sorted(page.key for page in finished) == list(range(len(pages)))
    for page in finished:
        tokens, logprobs, truncated, looping = references[page.key]
        assert page.tokens == tokens, page.key
        assert (page.truncated, page.looping) == (truncated, looping)
        np.testing.assert_allclose(page.logprobs, logprobs, rtol=1e-4, atol=1e-4)
    stats = decoder.stats
    assert stats.pages == len(pages) and stats.tokens == sum(len(r[0]) for r in references)
    # Rows freed at step 1 are refilled before any decoding step; no step runs more rows than slots.
    assert stats.group_sizes[0] == min(slots, len(pages)) and max(stats.group_sizes) <= slots
    assert stats.row_steps <= stats.decode_steps * slots
    assert stats.peak_capacity <= decoder.capacity_limit < decoder.prompt_length + NEW_TOKENS + 64


def test_rows_no_page_will_use_are_given_back_as_the_last_pages_end(case):
    runner, pages, eos, references = case
    slots = 4
    decoder = _decoder(runner, eos, NEW_TOKENS, slots=slots, stop_on_loops=False)
    held = []  # (live rows, rows the cache holds) at each decoding step
    step = decoder._step

    def recording(cache, rows, logits_hook):
        held.append((len(rows), cache.held_rows))
        step(cache, rows, logits_hook)

    decoder._step = recording
    tokens = {page.key: page.tokens for page in decoder.run(enumerate(pages))}
    assert tokens == {key: reference[0] for key, reference in enumerate(references)}
    assert held[0] == (slots, slots)  # a row per slot while pages may join
    given_back = [index for index, (_live, rows) in enumerate(held) if rows < slots]
    assert given_back and held[-1][0] == held[-1][1]  # in the end, only the live rows
    rows_held = [rows for _live, rows in held[given_back[0] :]]
    assert rows_held == sorted(rows_held, reverse=True)  # none taken again once no page will join
    assert decoder.stats.peak_cells == slots * decoder.stats.peak_capacity


def test_pages_come_out_in_order_of_completion(case):
    runner, pages, eos, references = case
    finished = list(_decoder(runner, eos, NEW_TOKENS, slots=len(pages), stop_on_loops=False).run(enumerate(pages)))
    lengths = [len(page.tokens) for page in finished]
    assert lengths == sorted(lengths)  # all start together, so shorter pages finish first


def _expected_steps(lengths: list[int], slots: int) -> int:
    """Decoding steps of an ideal slot schedule: a page's first token comes from its prefill,
    and a freed slot takes the next page before the next step."""
    waiting, running, steps = list(lengths), [], 0
    while waiting or running:
        while waiting and len(running) < slots:
            remaining = waiting.pop(0) - 1
            if remaining:
                running.append(remaining)
        if running:
            steps += 1
            running = [left - 1 for left in running if left > 1]
    return steps


@pytest.mark.parametrize("slots", [2, 3])
def test_a_freed_slot_is_refilled_at_once(case, slots):
    runner, pages, eos, references = case
    decoder = _decoder(runner, eos, NEW_TOKENS, slots=slots, stop_on_loops=False)
    list(decoder.run(enumerate(pages)))
    lengths = [len(tokens) for tokens, *_ in references]
    assert decoder.stats.row_steps == sum(lengths) - len(pages)
    assert decoder.stats.decode_steps == _expected_steps(lengths, slots)
    assert decoder.stats.decode_steps < _expected_static_steps(lengths, slots)


def _expected_static_steps(lengths: list[int], batch: int) -> int:
    """Steps of `generate` over fixed batches: each batch runs until its longest page ends."""
    return sum(max(lengths[start : start + batch]) - 1 for start in range(0, len(lengths), batch))


def test_prefill_groups_are_capped(case):
    runner, pages, eos, _references = case
    decoder = _decoder(runner, eos, NEW_TOKENS, slots=4, stop_on_loops=False, max_prefill=2)
    list(decoder.run(enumerate(pages)))
    assert max(decoder.stats.group_sizes) == 2 and sum(decoder.stats.group_sizes) == len(pages)


def test_logits_hook_ends_pages_at_scheduled_lengths(case):
    runner, pages, _eos, _references = case
    eos = runner.eos_token_id  # this checkpoint never chooses it within NEW_TOKENS steps
    references = [_reference(runner, page, eos, NEW_TOKENS)[0] for page in pages]
    assert all(len(tokens) == NEW_TOKENS for tokens in references)
    targets = {key: 3 + 4 * key for key in range(len(pages))}  # EOS as the n-th token; the last never

    def force(keys, generated, logits):
        for row, (key, count) in enumerate(zip(keys, generated)):
            if count + 1 == targets[key]:
                logits[row] = float("-inf")
                logits[row, eos] = 0.0

    decoder = _decoder(runner, eos, NEW_TOKENS, slots=3, stop_on_loops=False)
    for page in decoder.run(enumerate(pages), logits_hook=force):
        target = targets[page.key]
        if target <= NEW_TOKENS:
            assert page.tokens == references[page.key][: target - 1] + [eos] and not page.truncated
        else:
            assert page.tokens == references[page.key] and page.truncated


def test_min_new_tokens_as_generate(case):
    runner, pages, eos, _references = case
    expected = []
    for page in pages:
        inputs = {key: value.to(runner.device) for key, value in runner._prompt("ocr").items()}
        inputs["flattened_patches"] = page.flattened_patches[None].to(runner.device, runner.dtype)
        with torch.inference_mode():
            row = runner.model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=12, do_sample=False,
                                        eos_token_id=eos, pad_token_id=eos)[0, inputs["input_ids"].shape[1] :]  # fmt: skip
        expected.append(finish_row(row.tolist(), eos, False)[0])
    lengths = [len(tokens) for tokens in expected]
    assert min(lengths) > 12 and min(lengths) < NEW_TOKENS, lengths  # EOS kept out of the first 12 tokens only
    decoder = _decoder(runner, eos, NEW_TOKENS, slots=3, stop_on_loops=False, min_new_tokens=12)
    assert {page.key: page.tokens for page in decoder.run(enumerate(pages))} == dict(enumerate(expected))


def test_looping_and_runner_glue_match_generate_prepared(varied_model, monkeypatch):
    # With the loop threshold lowered, some pages of this checkpoint are caught looping.
    import kosmos_cli.model.repetition

    monkeypatch.setattr(kosmos_cli.model.repetition, "MIN_SPAN", 8)
    runner = _runner(varied_model, max_new_tokens=NEW_TOKENS)
    pages = [runner.prepare(image) for image in _images()]
    alone = [runner.generate_prepared([page], "ocr")[0] for page in pages]
    assert any(output.looping for output in alone) and any(not output.looping for output in alone)
    streamed = {item.key: item for item in runner.decode_stream(enumerate(pages), "ocr", slots=3)}
    outputs = [streamed[key].output for key in range(len(pages))]

    def text_and_flags(output):
        return output.text, output.resized_width, output.resized_height, output.truncated, output.looping

    assert list(map(text_and_flags, outputs)) == list(map(text_and_flags, alone))
    # Confidences as the static path computes them, to float32 rounding.
    assert [o.confidence for o in outputs] == pytest.approx([o.confidence for o in alone], rel=1e-4)
    assert [len(o.segment_confidences) for o in outputs] == [len(o.segment_confidences) for o in alone]
    for key, page in enumerate(pages):
        tokens, logprobs, *_ = _reference(runner, page, runner.eos_token_id, NEW_TOKENS, stop_on_loops=True)
        assert streamed[key].tokens == tokens
        np.testing.assert_allclose(streamed[key].logprobs, logprobs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention", ["eager", "sdpa", "kosmos25_cpu with sdpa"])
def test_other_attention_kernels(case, attention):
    """Eager attention takes additive masks; torch's SDPA (as on CUDA) takes boolean ones;
    kosmos25's CPU attention with torch's SDPA for both kinds, as machines with AMX measure it."""
    runner, pages, eos, references = case
    if attention.startswith(CPU_ATTENTION):
        if runner.device != "cpu":
            pytest.skip("CPU kernels")
        register_cpu_attention(CpuKernels("sdpa", "sdpa", measured=True))
    runner.model.set_attn_implementation(attention.split()[0])
    try:
        finished = list(_decoder(runner, eos, NEW_TOKENS, slots=3, stop_on_loops=False).run(enumerate(pages)))
    finally:
        if runner.cpu_kernels is not None:
            register_cpu_attention(runner.cpu_kernels)
        runner.model.set_attn_implementation(runner.attention)
    for page in finished:
        assert page.tokens == references[page.key][0], page.key


def test_position_table_is_extended_before_decoding(case):
    runner, pages, eos, references = case
    table = runner.model.text_model.model.embed_positions
    table.make_weights(12, table.embedding_dim, table.padding_idx)  # shorter than prompt + new tokens
    decoder = _decoder(runner, eos, NEW_TOKENS, slots=2, stop_on_loops=False)
    assert table.weights.size(0) >= table.padding_idx + 1 + decoder.prompt_length + NEW_TOKENS
    finished = list(decoder.run(enumerate(pages[:3])))
    assert {page.key: page.tokens for page in finished} == {k: references[k][0] for k in range(3)}


def test_refuses_what_it_cannot_reproduce(case, monkeypatch):
    runner, _pages, eos, _references = case
    with pytest.raises(ValueError, match="slots"):
        _decoder(runner, eos, NEW_TOKENS, slots=0)
    monkeypatch.setattr(runner.model.generation_config, "repetition_penalty", 1.3)
    with pytest.raises(ValueError, match="repetition_penalty"):
        _decoder(runner, eos, NEW_TOKENS, slots=2)
    monkeypatch.undo()
    monkeypatch.setattr(runner.model.config.text_config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ValueError, match="flash_attention_2"):
        _decoder(runner, eos, NEW_TOKENS, slots=2)


def test_loop_check_cadence_matches_generate():
    every = inspect.signature(runner_module._stop_on_loop).parameters["every"].default
    assert decode_loop.LOOP_CHECK_EVERY == every


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_cuda_float32_sdpa_gives_single_page_tokens(varied_model):
    runner = ModelRunner(RunnerSettings(model=str(varied_model), device="cuda", dtype="float32"))
    assert runner.attention == "sdpa"
    pages = [runner.prepare(image) for image in _images()]
    eos = _reference(runner, pages[0], runner.eos_token_id, max_new_tokens=1)[0][0]
    references = [_reference(runner, page, eos, NEW_TOKENS) for page in pages]
    assert len({len(tokens) for tokens, *_ in references}) >= 3
    finished = list(_decoder(runner, eos, NEW_TOKENS, slots=3, stop_on_loops=False).run(enumerate(pages)))
    for page in finished:
        tokens, logprobs, truncated, looping = references[page.key]
        assert page.tokens == tokens and (page.truncated, page.looping) == (truncated, looping), page.key
        np.testing.assert_allclose(page.logprobs, logprobs, rtol=1e-3, atol=1e-3)


@needs_cuda
def test_cuda_bf16_decode_stream_runs(varied_model):
    runner = ModelRunner(RunnerSettings(model=str(varied_model), device="cuda", dtype="bfloat16",
                                        max_new_tokens=NEW_TOKENS, stop_on_loops=False))  # fmt: skip
    pages = [runner.prepare(image) for image in _images()]
    alone = [runner.generate_prepared([page], "ocr")[0] for page in pages]
    streamed = {item.key: item for item in runner.decode_stream(enumerate(pages), "ocr", slots=3)}
    assert sorted(streamed) == list(range(len(pages)))
    for key, item in streamed.items():
        assert len(item.tokens) == len(item.logprobs) <= NEW_TOKENS
        assert all(value <= 1e-3 for value in item.logprobs)
        assert (item.output.resized_width, item.output.resized_height) == (alone[key].resized_width,
                                                                           alone[key].resized_height)  # fmt: skip
    # bf16 rounds differently for other batch shapes, and this checkpoint's top logits lie close
    # together, so pages may part from `generate` after a while; their first tokens agree.
    assert all(streamed[key].output.text[:8] == output.text[:8] for key, output in enumerate(alone))


def test_caller_code_between_pages_runs_outside_inference_mode(case):
    runner, pages, eos, _references = case
    for _page in _decoder(runner, eos, NEW_TOKENS, slots=2, stop_on_loops=False).run(enumerate(pages[:4])):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_compiled_decoding_steps_give_the_same_tokens(case):
    # --compile: the decoding steps' layers under torch.compile (dynamic shapes: rows and
    # cache capacity change as pages end and join), compiled once and shared by decoders.
    runner, pages, eos, references = case
    for _run in range(2):
        decoder = _decoder(runner, eos, NEW_TOKENS, slots=3, stop_on_loops=False, compile_steps=True)
        assert decoder.passes.step_layers is decode_passes._compiled_layers()
        finished = {page.key: page for page in decoder.run(enumerate(pages))}
        for key, (tokens, logprobs, truncated, _looping) in enumerate(references):
            assert finished[key].tokens == tokens, key
            np.testing.assert_allclose(finished[key].logprobs, logprobs, rtol=1e-4, atol=1e-4)
