"""Throughput benchmark: the model card's loop vs kosmos25's pipeline, side by side.

Full-size KOSMOS-2.5 architecture (`Kosmos2_5Config()` defaults) with random weights
(compute does not depend on weight values; no download), N synthetic document pages
(receipt-like and A4-like), a fixed number of new tokens per page (EOS suppressed, so
every page costs the same). Both ways run in this one process:

- reference: one page at a time, processor -> generate -> batch_decode, default settings;
- kosmos25: the library's real pipeline (files -> pages -> batches -> parse -> files).

`--ragged` compares instead how the ways cope with pages of very different lengths
(a seeded schedule of new tokens per page, forced identically in every way): the
reference loop, today's static batches (`generate_prepared`) and continuous batching
(`decode_stream`) at the same batch size; see `ragged_main`.

Run: `make bench` or `python benchmarks/bench.py --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

FULL_VOCAB = 108481


@dataclass
class PhaseTimes:
    """Seconds spent in each phase, summed over pages, measured with forward hooks."""

    vision: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    decode_steps: int = 0
    first_logits: list = field(default_factory=list)
    # Per generate call, per step: the gap between each row's two largest logits (how near a tie).
    top2_gaps: list = field(default_factory=list)


class PhaseTimer:
    """Times the vision encoder, the prefill (first text forward) and the decode steps."""

    def __init__(self, model, device: str) -> None:
        self.times = PhaseTimes()
        self.device = device
        self.eos_token_id = model.config.text_config.eos_token_id
        self._start = 0.0
        self._prefill = False
        self.handles = [
            model.vision_model.register_forward_pre_hook(self._begin),
            model.vision_model.register_forward_hook(self._end_vision),
            model.text_model.register_forward_pre_hook(self._begin_text, with_kwargs=True),
            model.text_model.register_forward_hook(self._end_text),
        ]

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _begin(self, module, args):
        self._sync()
        self._start = time.perf_counter()

    def _end_vision(self, module, args, output):
        self._sync()
        self.times.vision += time.perf_counter() - self._start
        self._start = time.perf_counter()  # the image projection counts towards the prefill

    def _begin_text(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids")
        self._prefill = input_ids is not None and input_ids.shape[1] > 1
        if not self._prefill:
            self._begin(module, args)

    def _end_text(self, module, args, output):
        self._sync()
        elapsed = time.perf_counter() - self._start
        logits = output.logits[:, -1].float().clone()  # never change the model's own logits
        logits[:, self.eos_token_id] = float("-inf")  # suppressed by min_new_tokens
        top2 = logits.topk(2, dim=-1).values
        if self._prefill:
            self.times.top2_gaps.append([])
        self.times.top2_gaps[-1].append((top2[:, 0] - top2[:, 1]).cpu())
        if self._prefill:
            self.times.prefill += elapsed
            self.times.first_logits.extend(output.logits[:, -1].float().cpu())
        else:
            self.times.decode += elapsed
            self.times.decode_steps += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())


def release_memory() -> None:
    """Free the last run's model so the next run's peak memory is its own."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def synthetic_pages(count: int, receipts_only: bool = False) -> list[Image.Image]:
    """Receipt-like and A4-like pages (alternately, or receipts only) with lines of dark 'text' blocks."""
    pages = []
    for index in range(count):
        size = (600, 1600) if index % 2 == 0 or receipts_only else (1654, 2339)
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for y in range(60, size[1] - 60, 48):
            for x in range(60, size[0] - 200, 160):
                draw.text((x, y), f"TOTAL {index}.{y % 97:02d}", fill="black")
        pages.append(image)
    return pages


def build_checkpoint(folder: Path, max_patches: int, device: str = "cpu") -> Path:
    """Full-size architecture, random weights, bf16 on disk; reused when already built.

    On a GPU the random initialisation runs there (minutes on a CPU core, seconds there).
    """
    from tiny_checkpoint import build_processor, build_tokenizer
    from transformers import Kosmos2_5Config, Kosmos2_5ForConditionalGeneration

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    with torch.device(device if device.startswith("cuda") else "cpu"):
        model = Kosmos2_5ForConditionalGeneration(Kosmos2_5Config()).to(torch.bfloat16)
    model.save_pretrained(folder)
    build_processor(build_tokenizer(FULL_VOCAB), max_patches=4096, image_tokens=2048).save_pretrained(folder)
    del model
    gc.collect()
    return folder


def run_reference(checkpoint: Path, pages, args) -> dict:
    """The model card's loop: one page at a time."""
    from transformers import AutoProcessor, Kosmos2_5ForConditionalGeneration
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    # Upstream's state: take back kosmos25's vision-attention fix, applied in this process by the earlier run.
    for name in ("sdpa", "flash_attention_2"):
        if name in vars(modeling_kosmos2_5.ALL_ATTENTION_FUNCTIONS):
            delattr(modeling_kosmos2_5.ALL_ATTENTION_FUNCTIONS, name)
    dtype = getattr(torch, args.dtype)
    with PeakMemory() as memory:
        started = time.perf_counter()
        processor = AutoProcessor.from_pretrained(checkpoint)
        model = Kosmos2_5ForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype).to(args.device)
        load = time.perf_counter() - started
        timer = PhaseTimer(model, args.device)
        tokens = []
        started = time.perf_counter()
        running = PeakMemory().__enter__()
        for image in pages:
            inputs = processor(text="<ocr>", images=image, max_patches=args.max_patches, return_tensors="pt")
            inputs.pop("height"), inputs.pop("width")
            inputs = {k: v.to(args.device) if v is not None else None for k, v in inputs.items()}
            inputs["flattened_patches"] = inputs["flattened_patches"].to(dtype)
            generated = model.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
            processor.batch_decode(generated, skip_special_tokens=True)
            tokens.append(generated[0, inputs["input_ids"].shape[1] :].tolist())
        total = time.perf_counter() - started
        running.__exit__()
        timer.close()
    del model
    release_memory()
    return {"load": load, "total": total, "times": timer.times, "tokens": tokens, "peak": memory.peak,
            "run_peak": running.peak}  # fmt: skip


def run_kosmos25(checkpoint: Path, page_files: list[Path], out_dir: Path, args) -> dict:
    """kosmos25's real pipeline with its defaults for the device (batch size unless given)."""
    from kosmos_cli.inputs.documents import PageOptions, collect_documents
    from kosmos_cli.run.pipeline import Pipeline, RunRequest
    from kosmos_cli.run.progress import PlainReporter
    from kosmos_cli.model.batch_size import auto_batch_size
    from kosmos_cli.model.runner import ModelRunner, RunnerSettings
    from kosmos_cli.outputs.files import DirectorySink
    from kosmos_cli.outputs.formats import FORMATS, RenderOptions

    settings = RunnerSettings(
        model=str(checkpoint),
        device=args.device,
        dtype="auto" if args.dtype_ours == "auto" else args.dtype_ours,
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        max_patches=args.max_patches,
        stop_on_loops=False,
    )
    with PeakMemory() as memory:
        started = time.perf_counter()
        runner = ModelRunner(settings)
        load = time.perf_counter() - started
        batch_size = args.batch_size or auto_batch_size(runner)
        timer = PhaseTimer(runner.model, runner.device)
        tokens = []
        generate = runner.model.generate

        def recording_generate(*gen_args, **gen_kwargs):
            generated = generate(*gen_args, **gen_kwargs)
            prompt = gen_kwargs["input_ids"].shape[1]
            tokens.extend(generated[:, prompt:].tolist())
            return generated

        runner.model.generate = recording_generate
        streamed_tokens = {}
        stream = None
        if args.batching == "continuous" and runner.supports_continuous_batching:

            def stream(pairs, task):  # as api.Reader.read streams pages (the CLI's default)
                for streamed in runner.decode_stream(pairs, task, slots=batch_size):
                    streamed_tokens[streamed.key] = streamed.tokens
                    yield streamed.key, streamed.output

        documents, _ = collect_documents(tuple(map(str, page_files)))
        request = RunRequest("ocr", settings.model, PageOptions(), batch_size)
        sink = DirectorySink(out_dir, FORMATS["json"], RenderOptions())
        pipeline = Pipeline(request, runner.prepare, runner.generate_prepared, sink, PlainReporter(quiet=True),
                            stream=stream)  # fmt: skip
        started = time.perf_counter()
        with PeakMemory() as running:
            pipeline.run(documents)
        total = time.perf_counter() - started
        timer.close()
        if stream is not None:  # the decode loop calls the text layers itself: its own clock splits the phases
            stats = runner.last_decoder.stats
            timer.times.prefill = stats.prefill_seconds - timer.times.vision
            timer.times.decode, timer.times.decode_steps = stats.decode_seconds, stats.decode_steps
            tokens = [streamed_tokens[key] for key in sorted(streamed_tokens)]
    info = {"batch_size": batch_size, "dtype": str(runner.dtype).replace("torch.", ""),
            "fast_vision": runner.fast_vision_attention, "attention": runner.attention,
            "batching": "continuous" if stream is not None else "static",
            "cpu_kernels": (runner.cpu_kernels.describe() if runner.cpu_kernels else "-")
            + (", products of many rows in float32" if runner.float32_products else "")}  # fmt: skip
    del runner, pipeline
    release_memory()
    return {"load": load, "total": total, "times": timer.times, "tokens": tokens, "peak": memory.peak,
            "run_peak": running.peak, **info}  # fmt: skip


def report(name: str, result: dict, pages: int) -> dict:
    times = result["times"]
    per_page = result["total"] / pages
    other = result["total"] - times.vision - times.prefill - times.decode
    row = {
        "name": name,
        "load+preprocess": other / pages,
        "vision": times.vision / pages,
        "prefill": times.prefill / pages,
        "decode": times.decode / pages,
        "total": per_page,
        "pages/min": 60 / per_page,
        "peak GB": result["peak"] / 1e9,
        "run peak GB": result["run_peak"] / 1e9,
    }
    return row


def ragged_schedule(count: int, mean: float, low: int, high: int, seed: int) -> list[int]:
    """New tokens per page: a log-normal spread (sigma 1.1) scaled to `mean`, clipped to [low, high].

    Quantiles instead of random draws, so that even 8 pages span the whole spread;
    the seed only shuffles the order in which the pages come.
    """
    import random
    from statistics import NormalDist

    spread = [math.exp(1.1 * NormalDist().inv_cdf((index + 0.5) / count)) for index in range(count)]
    scale = mean / (sum(spread) / count)
    for _ in range(20):  # re-scale so that the mean survives the clipping
        lengths = [min(high, max(low, round(value * scale))) for value in spread]
        scale *= mean / (sum(lengths) / count)
    random.Random(seed).shuffle(lengths)
    return lengths


def forced_lengths(scores, generated, targets, eos_token_id: int):
    """Make each row end with EOS as its `targets[row]`-th token, and not before.

    `generated` and `targets` are [rows] tensors on the scores' device; `scores` is changed in place.
    """
    early = generated + 1 < targets
    now = generated + 1 == targets
    scores[early, eos_token_id] = float("-inf")
    scores[now] = float("-inf")
    scores[now, eos_token_id] = 0.0
    return scores


def forcing_processor(targets: list[int], prompt_length: int, eos_token_id: int):
    """`forced_lengths` as a `generate` logits processor for one batch of pages."""
    from transformers import LogitsProcessor

    class ForcedLengths(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = torch.full((len(targets),), input_ids.shape[1] - prompt_length, device=scores.device)
            wanted = torch.tensor(targets, device=scores.device)
            return forced_lengths(scores, generated, wanted, eos_token_id)

    return ForcedLengths()


class StepCounter:
    """Counts decoding steps (one-token text forwards) of `generate`, without touching the logits."""

    def __init__(self, model) -> None:
        self.steps = 0
        self.handle = model.text_model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids")
        self.steps += input_ids is not None and input_ids.shape[1] == 1

    def close(self) -> None:
        self.handle.remove()


def _device_peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def ragged_reference(checkpoint: Path, pages, lengths: list[int], args) -> dict:
    """The model card's loop, one page at a time, each page ended at its scheduled length."""
    from transformers import AutoProcessor, Kosmos2_5ForConditionalGeneration
    from transformers.models.kosmos2_5 import modeling_kosmos2_5

    for name in ("sdpa", "flash_attention_2"):  # upstream's state (see run_reference)
        if name in vars(modeling_kosmos2_5.ALL_ATTENTION_FUNCTIONS):
            delattr(modeling_kosmos2_5.ALL_ATTENTION_FUNCTIONS, name)
    dtype = getattr(torch, args.dtype)
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = Kosmos2_5ForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype).to(args.device)
    eos = processor.tokenizer.eos_token_id
    counter = StepCounter(model)
    tokens = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as memory:
        started = time.perf_counter()
        for image, length in zip(pages, lengths):
            inputs = processor(text="<ocr>", images=image, max_patches=args.max_patches, return_tensors="pt")
            inputs.pop("height"), inputs.pop("width")
            inputs = {k: v.to(args.device) if v is not None else None for k, v in inputs.items()}
            inputs["flattened_patches"] = inputs["flattened_patches"].to(dtype)
            prompt = inputs["input_ids"].shape[1]
            generated = model.generate(**inputs, max_new_tokens=max(lengths),
                                       logits_processor=[forcing_processor([length], prompt, eos)])  # fmt: skip
            processor.batch_decode(generated, skip_special_tokens=True)
            tokens.append(generated[0, prompt:].tolist())
        total = time.perf_counter() - started
    counter.close()
    del model
    release_memory()
    return {"total": total, "tokens": tokens, "steps": counter.steps, "rows_per_step": 1.0, "peak": memory.peak,
            "device_peak": _device_peak()}  # fmt: skip


def ragged_ours(runner, pages, lengths: list[int], way: str, batch: int) -> dict:
    """kosmos25's static batches (`generate_prepared`) or continuous batching (`decode_stream`)."""
    eos = runner.eos_token_id
    tokens: dict[int, list[int]] = {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    counter = StepCounter(runner.model)
    with PeakMemory() as memory:
        started = time.perf_counter()
        if way == "static":
            generate = runner.model.generate
            current: list[int] = []

            def forcing_generate(*gen_args, **gen_kwargs):
                prompt = gen_kwargs["input_ids"].shape[1]
                targets = [lengths[index] for index in current]
                forcing = [forcing_processor(targets, prompt, eos)]
                gen_kwargs["logits_processor"] = forcing + list(gen_kwargs.get("logits_processor") or [])
                generated = generate(*gen_args, **gen_kwargs)
                for index, row in zip(current, generated[:, prompt:].tolist()):
                    tokens[index] = row[: row.index(eos) + 1] if eos in row else row  # drop the batch's padding
                return generated

            runner.model.generate = forcing_generate
            try:
                for start in range(0, len(pages), batch):
                    current[:] = range(start, min(start + batch, len(pages)))
                    runner.generate_prepared([runner.prepare(pages[index]) for index in current], "ocr")
            finally:
                del runner.model.generate  # back to the class's method
            steps, rows_per_step = counter.steps, None
        else:
            wanted = torch.tensor(lengths, device=runner.device)

            def hook(keys, generated, scores):
                rows = torch.tensor(keys, device=scores.device)
                forced_lengths(scores, torch.tensor(generated, device=scores.device), wanted[rows], eos)

            prepared = ((index, runner.prepare(image)) for index, image in enumerate(pages))
            for item in runner.decode_stream(prepared, "ocr", slots=batch, logits_hook=hook):
                tokens[item.key] = item.tokens
            stats = runner.last_decoder.stats
            steps, rows_per_step = stats.decode_steps, stats.row_steps / max(1, stats.decode_steps)
        total = time.perf_counter() - started
    counter.close()
    result = {"total": total, "tokens": [tokens[index] for index in range(len(pages))], "steps": steps,
              "rows_per_step": rows_per_step, "peak": memory.peak, "device_peak": _device_peak()}  # fmt: skip
    if way == "static":  # rows busy per step: each page's own tokens over the steps the batches ran
        result["rows_per_step"] = (sum(lengths) - len(pages)) / max(1, steps)
    else:
        result["phases"] = (stats.prefill_seconds, stats.decode_seconds)
    release_memory()
    return result


def _ragged_line(result: dict, lengths: list[int]) -> str:
    """One way's figures at once, so that an interrupted run still tells something."""
    total = result["total"]
    return (f"{total:.1f} s, {result['steps']} decoding steps, {sum(lengths) / total:.1f} tokens/s, "
            f"{60 * len(lengths) / total:.2f} pages/min, peak RSS {result['peak'] / 1e9:.2f} GB")  # fmt: skip


def ragged_main(args) -> None:
    """Ragged workload: reference loop vs static batches vs continuous batching, same pages and lengths."""
    from kosmos_cli.model.runner import ModelRunner, RunnerSettings

    lengths = ragged_schedule(args.pages, args.mean_tokens, args.min_tokens, args.max_tokens, args.seed)
    ordered = sorted(lengths)
    quartile = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.pages} pages, max_patches {args.max_patches}, batch {args.batch_size}, seed {args.seed}")  # fmt: skip
    print(f"new tokens per page (EOS included), in page order: {lengths}")
    print(f"  min {ordered[0]}, p25 {quartile(0.25)}, median {quartile(0.5)}, mean {sum(lengths) / len(lengths):.0f}, "
          f"p75 {quartile(0.75)}, max {ordered[-1]}, total {sum(lengths)}")  # fmt: skip
    print("  random weights: every way suppresses EOS before a page's scheduled length and forces it there,\n"
          "  identically; the model's compute per token does not depend on the weights' values, so only the\n"
          "  lengths are staged (a real model would decide them from the pages).", flush=True)  # fmt: skip
    started = time.perf_counter()
    checkpoint = build_checkpoint(args.cache, args.max_patches, args.device)
    print(f"checkpoint ready in {time.perf_counter() - started:.0f} s: {checkpoint}", flush=True)
    pages = synthetic_pages(args.pages)
    settings = RunnerSettings(model=str(checkpoint), device=args.device,
                              dtype="auto" if args.dtype_ours == "auto" else args.dtype_ours,
                              max_new_tokens=max(lengths), max_patches=args.max_patches, stop_on_loops=False)  # fmt: skip
    runner = ModelRunner(settings)
    dtype = str(runner.dtype).replace("torch.", "")
    results = {}
    ways = [] if args.skip_static else [("static", args.batch_size)]
    ways += [("continuous", args.batch_size)]
    ways += [("continuous", slots) for slots in args.extra_slots if slots != args.batch_size]
    # Twice: the first run compiles (its time counts), the second shows the steady state.
    compiled = [("continuous, compiled", batch) for way, batch in ways if args.compile and way == "continuous"]
    ways += compiled + [("continuous, compiled again", batch) for _way, batch in compiled]
    for way, batch in ways:
        name = f"{way} ({dtype}, {'batch' if way == 'static' else 'slots'} {batch})"
        runner.settings = dataclasses.replace(settings, compile="compiled" in way)  # its compile time counts
        results[name] = ragged_ours(runner, pages, lengths, way.split(",")[0], batch)
        print(f"{name} done: {_ragged_line(results[name], lengths)}", flush=True)
    del runner
    release_memory()
    if not args.skip_reference:
        name = f"reference ({args.dtype}, batch 1)"
        results = {name: ragged_reference(checkpoint, pages, lengths, args), **results}
        print(f"{name} done: {_ragged_line(results[name], lengths)}", flush=True)

    total_tokens = sum(lengths)
    static = next((result for name, result in results.items() if name.startswith("static")), None)
    header = ["way", "total s", "decode steps", "rows/step", "tokens/s", "pages/min", "x static",
              "x reference", "peak RSS GB", "GPU peak GB"]  # fmt: skip
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    reference = next((result for name, result in results.items() if name.startswith("reference")), None)
    for name, result in results.items():
        values = [name, f"{result['total']:.1f}", str(result["steps"]), f"{result['rows_per_step']:.2f}",
                  f"{total_tokens / result['total']:.1f}", f"{60 * args.pages / result['total']:.2f}",
                  f"{static['total'] / result['total']:.2f}" if static else "-",
                  f"{reference['total'] / result['total']:.2f}" if reference else "-",
                  f"{result['peak'] / 1e9:.2f}", f"{result['device_peak'] / 1e9:.2f}"]  # fmt: skip
        print("| " + " | ".join(values) + " |")
    for name, result in results.items():
        if "phases" in result:
            prefill, decode = result["phases"]
            print(f"{name}: prefill (vision + prompt) {prefill:.1f} s, decoding {decode:.1f} s")
    base_name, base = (next(iter(results.items())))
    for name, result in results.items():
        if result is base:
            continue
        lengths_ok = all(len(tokens) == length for tokens, length in zip(result["tokens"], lengths))
        agree = sum(a == b for mine, theirs in zip(result["tokens"], base["tokens"]) for a, b in zip(mine, theirs))
        print(f"{name}: every page at its scheduled length: {lengths_ok}; tokens equal to {base_name}'s: "
              f"{agree}/{total_tokens}")  # fmt: skip


def saved_pages(pages, folder: Path) -> list[Path]:
    """The pages as PNG files in `folder`, for the CLI's pipeline to read."""
    files = []
    for index, image in enumerate(pages):
        files.append(folder / f"page-{index:03d}.png")
        image.save(files[-1])
    return files


def whole_process_run(args, checkpoint: Path, pages) -> None:
    """One way alone (its import, model load, pages and output included): `--only`."""
    if args.only == "reference":
        result = run_reference(checkpoint, pages, args)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            result = run_kosmos25(checkpoint, saved_pages(pages, Path(scratch)), Path(scratch) / "out", args)
    lengths = sorted({len(tokens) for tokens in result["tokens"]})
    print(f"{args.only}: {len(result['tokens'])} pages, new tokens per page {lengths}, "
          f"{result['total']:.1f} s after loading the model")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=4, help="synthetic pages (default 4)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per page, EOS suppressed (default 128)")
    parser.add_argument("--batch-size", type=int, default=None, help="kosmos25 batch size (default: its own choice)")
    parser.add_argument("--dtype", default="bfloat16", help="reference dtype (default bfloat16, as the model card)")
    parser.add_argument("--dtype-ours", default="auto", help="kosmos25 dtype (default: its auto choice)")
    parser.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                        help="kosmos25's --batching (default continuous, as the CLI)")  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-patches", type=int, default=4096)
    parser.add_argument("--skip-reference", action="store_true", help="time kosmos25 only")
    parser.add_argument("--only", choices=["reference", "kosmos25"], help="run one way only, for timing whole "
                        "processes from outside (e.g. /usr/bin/time -v)")  # fmt: skip
    parser.add_argument("--receipts", action="store_true", help="receipt-sized pages only (default: receipt, A4, ...)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench-full-random")
    ragged = parser.add_argument_group("ragged workload (--ragged)")
    ragged.add_argument("--ragged", action="store_true", help="pages of very different lengths: reference vs "
                        "static batches vs continuous batching (try: --ragged --pages 8 --max-patches 1024)")  # fmt: skip
    ragged.add_argument("--mean-tokens", type=float, default=300, help="mean new tokens per page (default 300)")
    ragged.add_argument("--min-tokens", type=int, default=32, help="shortest page (default 32)")
    ragged.add_argument("--max-tokens", type=int, default=1500, help="longest page (default 1500)")
    ragged.add_argument("--seed", type=int, default=0, help="order of the pages' lengths (default 0)")
    ragged.add_argument("--skip-static", action="store_true", help="leave out static batches (compare slot counts)")
    ragged.add_argument("--extra-slots", type=lambda text: [int(x) for x in text.split(",") if x], default=[],
                        help="also run continuous batching with these slot counts, e.g. 8 or 8,16")  # fmt: skip
    ragged.add_argument("--compile", action="store_true",
                        help="also run each continuous way with --compile (its compile time included)")  # fmt: skip
    args = parser.parse_args()
    if args.ragged:
        if args.batch_size is None:
            args.batch_size = 4  # the same batch size for every way; set it for GPUs (the CLI picks up to 8 on CPU)
        ragged_main(args)
        return

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.pages} pages x {args.tokens} new tokens, max_patches {args.max_patches}", flush=True)  # fmt: skip
    started = time.perf_counter()
    checkpoint = build_checkpoint(args.cache, args.max_patches)
    print(f"checkpoint ready in {time.perf_counter() - started:.0f} s: {checkpoint}", flush=True)
    pages = synthetic_pages(args.pages, args.receipts)
    if args.only:
        whole_process_run(args, checkpoint, pages)
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        page_files = saved_pages(pages, Path(scratch))
        # kosmos25 first, so its peak memory is not inflated by the reference's freed model.
        ours = run_kosmos25(checkpoint, page_files, Path(scratch) / "out", args)
        print(f"kosmos25 done: {ours['total']:.1f} s", flush=True)
        reference = None
        if not args.skip_reference:
            reference = run_reference(checkpoint, pages, args)
            rows.append(report(f"reference ({args.dtype}, batch 1)", reference, args.pages))
            print(f"reference done: {reference['total']:.1f} s", flush=True)
        rows.append(report(f"kosmos25 ({ours['dtype']}, {ours['batching']}, batch {ours['batch_size']})", ours,
                           args.pages))  # fmt: skip

    header = ["way", "load+prep s/page", "vision s/page", "prefill s/page", "decode s/page", "total s/page",
              "pages/min", "peak RSS GB", "peak RSS after load GB"]  # fmt: skip
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        values = [row["name"]] + [f"{row[k]:.2f}" for k in list(row)[1:]]
        print("| " + " | ".join(values) + " |")
    print("\nmodel load: " + ", ".join(f"{n} {r['load']:.1f} s" for n, r in
                                      (("reference", reference), ("kosmos25", ours)) if r))  # fmt: skip
    vision = ours["attention"] if ours["fast_vision"] else "eager"
    print(f"kosmos25 attention: {ours['attention']} (vision encoder: {vision}; CPU kernels: {ours['cpu_kernels']})")
    if reference:
        ratio = reference["total"] / ours["total"]
        print(f"throughput kosmos25 / reference: {ratio:.2f}x")
        agree = sum(a == b for ref, mine in zip(reference["tokens"], ours["tokens"]) for a, b in zip(ref, mine))
        total = sum(len(ref) for ref in reference["tokens"])
        first = [
            next((i for i, (a, b) in enumerate(zip(ref, mine)) if a != b), len(ref))
            for ref, mine in zip(reference["tokens"], ours["tokens"])
        ]
        print(f"greedy tokens equal to the reference: {agree}/{total}; first divergence per page: {first}")
        # The reference runs one page per generate call, so call p is page p.
        gaps = [f"{reference['times'].top2_gaps[page][step][0].item():.4f}"
                for page, step in enumerate(first) if step < len(reference["tokens"][page])]  # fmt: skip
        if gaps:
            print(f"reference's gap between its top two logits where a page parts: {', '.join(gaps)}")
        if ours["times"].first_logits:  # static batches only: the decode loop's prefill is not hooked
            ref_logits = torch.stack(reference["times"].first_logits)
            our_logits = torch.stack(ours["times"].first_logits)
            print(f"largest difference of first-step logits: {(ref_logits - our_logits).abs().max().item():.4f} "
                  f"(logit scale: max |logit| {ref_logits.abs().max().item():.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
