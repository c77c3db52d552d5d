"""Training benchmark: one LoRA optimizer step of the full-size KOSMOS-2.5 architecture on CPU.

`Kosmos2_5Config()` defaults with random weights (compute does not depend on weight values;
no download), bf16 weights, LoRA with `kosmos25 train`'s own targets, one page of
`--patches` image patches and `--tokens` target tokens. One warm-up step, then `--steps`
timed steps; prints seconds per step and the process's peak resident memory.

A watchdog ends the process (exit 3) when resident memory passes `--rss-limit-gb`: the
machines this runs on are shared.

Run: `make bench-train` or `python benchmarks/bench_train.py --help`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _watchdog(limit: int) -> None:
    """Ends the process as soon as resident memory passes `limit` (other work shares the machine)."""
    while True:
        rss = _rss_bytes()
        if rss > limit:
            print(f"ABORTED: resident memory {rss / 2**30:.1f} GiB passed the limit {limit / 2**30:.1f} GiB",
                  file=sys.stderr, flush=True)  # fmt: skip
            os._exit(3)
        time.sleep(0.05)


def build_batch(config, patches: int, tokens: int, dtype) -> dict:
    """One page: `<s><image>`, the image positions, `</image><ocr>`, then `tokens` target tokens."""
    from kosmos_cli.training.examples import IGNORE

    image = config.latent_query_num
    width = config.vision_config.patch_embed_hidden_size + 2  # row and column index + the pixels
    prompt = [0, 1] + [0] * image + [2, 3]
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(10, config.text_config.vocab_size, (tokens,), generator=generator).tolist()
    ids = torch.tensor([prompt + target])
    labels = torch.tensor([[IGNORE] * len(prompt) + target])
    mask = torch.tensor([[0, 0] + [1] * image + [0] * (2 + tokens)])
    flat = torch.randn(1, patches, width, generator=generator)
    columns = max(1, int(patches**0.5))  # a square grid of patches
    flat[0, :, 0] = torch.arange(patches) // columns + 1  # row and column numbers, as the processor writes them
    flat[0, :, 1] = torch.arange(patches) % columns + 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_embeds_position_mask": mask,
            "flattened_patches": flat.to(dtype), "labels": labels}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up step")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rss-limit-gb", type=float, default=14.0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then GPU memory is reported too)")
    parser.add_argument("--no-checkpointing", action="store_true",
                        help="keep every activation for the backward pass (without checkpointing: over 14 GiB, see README)")
    args = parser.parse_args()
    threading.Thread(target=_watchdog, args=(int(args.rss_limit_gb * 2**30),), daemon=True).start()

    from transformers import Kosmos2_5Config, Kosmos2_5ForConditionalGeneration

    from kosmos_cli.training.lora import with_lora
    from kosmos_cli.training.loop import _enable_checkpointing

    dtype = torch.bfloat16
    started = time.perf_counter()
    torch.manual_seed(0)
    # Built directly in bf16: a float32 build first would need twice the memory at its peak.
    torch.set_default_dtype(dtype)
    config = Kosmos2_5Config()
    model = Kosmos2_5ForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    # Activation checkpointing, as `kosmos25 train` uses on a GPU: without it the activations kept
    # for the backward pass alone pass 14 GiB at this size.
    checkpointing = not args.no_checkpointing and _enable_checkpointing(model)
    model, matched = with_lora(model, rank=args.rank, alpha=2 * args.rank, dropout=0.0, vision=False)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)
    model.to(args.device)
    batch = {key: value.to(args.device) for key, value in build_batch(config, args.patches, args.tokens, dtype).items()}
    print(f"model: {params / 1e6:.0f}M parameters, LoRA rank {args.rank} on {matched} modules "
          f"({sum(p.numel() for p in trainable) / 1e6:.1f}M trainable), built in {time.perf_counter() - started:.0f} s; "
          f"{args.patches} patches, {args.tokens} target tokens, bf16, {torch.get_num_threads()} threads, "
          f"activation checkpointing {'on' if checkpointing else 'off'}", flush=True)  # fmt: skip

    times = []
    for step in range(args.steps + 1):
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        loss = loss.detach()
        optimizer.step()
        optimizer.zero_grad()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        print(f"step {step} ({'warm-up' if step == 0 else 'timed'}): {elapsed:.1f} s, loss {loss.item():.3f}", flush=True)
        if step:
            times.append(elapsed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    gpu = ""
    if args.device.startswith("cuda"):
        gpu = f"; peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(f"seconds per step: {sum(times) / len(times):.2f}; peak RSS: {peak / 2**30:.2f} GiB{gpu}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
