"""This machine's matrix-product peak and memory bandwidth: the yardsticks for the model's kernels.

A kernel is judged against what the hardware does at best, measured here rather than
taken from a data sheet (a shared VM's share of a core varies):

- matrix products at KOSMOS-2.5's own shapes (4096 patches or a 2052-token prompt against
  the vision encoder's and decoder's weight matrices) and a large square one, in the
  `nn.Linear` layout (x @ W^T, W stored [out, in]) the model uses and in the plain
  layout (x @ W, W stored [in, out]); the best of them is the peak FLOP/s;
- memory bandwidth, as a copy of 1 GiB and as what a decoding step's kind of product
  (a few rows against a large weight matrix) reads per second.

Run: `python benchmarks/matmul.py` (about a minute); `profile_model.py` imports it.
"""

from __future__ import annotations

import argparse
import time

import torch

# (name, rows, inner, columns): rows are tokens, inner x columns the weight matrix.
MODEL_SHAPES = [
    ("vision q/k/v/o: 4096 patches x 1536 -> 1536", 4096, 1536, 1536),
    ("vision MLP in: 4096 x 1536 -> 3968", 4096, 1536, 3968),
    ("vision MLP out: 4096 x 3968 -> 1536", 4096, 3968, 1536),
    ("prefill q/k/v/o: 2052 tokens x 1536 -> 1536", 2052, 1536, 1536),
    ("prefill fc1: 2052 x 1536 -> 6144", 2052, 1536, 6144),
    ("prefill fc2: 2052 x 6144 -> 1536", 2052, 6144, 1536),
    ("square 4096 x 4096 x 4096", 4096, 4096, 4096),
]


def timed(function, min_seconds: float = 0.4, min_repeats: int = 3) -> float:
    """Median seconds per call of `function`, after one warm-up call."""
    function()
    times = []
    started = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    times.sort()
    return times[len(times) // 2]


def product_flops(rows: int, inner: int, columns: int, dtype, layout: str) -> float:
    """FLOP/s of [rows, inner] x weight -> [rows, columns] in `layout` ("linear" or "plain")."""
    x = torch.randn(rows, inner).to(dtype)
    if layout == "linear":
        weight = torch.randn(columns, inner).to(dtype)
        seconds = timed(lambda: torch.nn.functional.linear(x, weight))
    else:
        weight = torch.randn(inner, columns).to(dtype)
        seconds = timed(lambda: torch.mm(x, weight))
    return 2 * rows * inner * columns / seconds


def peak_flops(dtype=torch.bfloat16, verbose: bool = False) -> tuple[float, list[tuple[str, str, float]]]:
    """The best FLOP/s over the model's shapes and both layouts, and every measurement."""
    rows = []
    for name, m, k, n in MODEL_SHAPES:
        for layout in ("linear", "plain"):
            flops = product_flops(m, k, n, dtype, layout)
            rows.append((name, layout, flops))
            if verbose:
                print(f"  {name:46s} {layout:6s} {flops / 1e12:6.3f} TFLOP/s", flush=True)
    return max(flops for _name, _layout, flops in rows), rows


def copy_bandwidth(gib: float = 1.0) -> float:
    """Bytes per second moved by copying a `gib` GiB tensor (read + write counted)."""
    source = torch.empty(int(gib * (1 << 30)) // 2, dtype=torch.bfloat16).fill_(1)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / seconds


def weight_read_bandwidth(rows: int = 4, dtype=torch.bfloat16) -> float:
    """Bytes of weights per second that `rows` tokens x a large weight matrix reads (a decode step's work)."""
    weight = torch.randn(24 * 4 * 1536, 1536).to(dtype)  # one decoder's q/k/v/o weights, 24 layers: 226 MB
    x = torch.randn(rows, 1536).to(dtype)
    seconds = timed(lambda: torch.nn.functional.linear(x, weight))
    return weight.numel() * weight.element_size() / seconds


def cpu_flags() -> str:
    """The CPU's matrix-related instruction sets, as /proc/cpuinfo lists them."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(flag for flag in wanted if flag in flags) or "none of avx2/avx512/amx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated (default bfloat16,float32)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU flags: {cpu_flags()}")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        print(f"{name} matrix products:", flush=True)
        peak, _rows = peak_flops(dtype, verbose=True)
        print(f"{name} peak: {peak / 1e12:.3f} TFLOP/s")
    print(f"copy bandwidth (1 GiB, read + write): {copy_bandwidth() / 1e9:.1f} GB/s")
    for rows in (1, 4, 8):
        print(f"weights read by {rows} row(s) x [36864, 1536] bf16: {weight_read_bandwidth(rows) / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
