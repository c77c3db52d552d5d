"""Weight matrices kept in oneDNN's blocked layout (CPU, bf16), and products on them.

A decoding step multiplies a few rows by every weight matrix, so it is bound by reading
the weights; oneDNN reads its own layout faster than `nn.Linear`'s (`pack_linear_weights`).
Products on packed matrices can also finish inside the product what the model does right
after it (oneDNN post-ops: GELU, the vision MLP's gate, a residual add), on the float32
accumulator, saving a pass over the result in memory (`product_gelu`, `product_mul`,
`product_add`). On CPUs whose float32 products beat their bf16 ones, products of many rows
widen to float32 instead (`float32_products_faster`). torch is imported inside functions
so the CLI's `--help` stays instant.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

def pack_linear_weights(model, decoder: bool = True, float32_from: int | None = None) -> int:
    """Keep the weight matrices of the decoder, the vision encoder and the image projection in
    oneDNN's blocked layout (CPU, bf16); returns how many.

    A decoding step multiplies a few rows (one per busy slot) by every weight matrix, so it
    is bound by reading the weights. Given `nn.Linear`'s plain layout, oneDNN reads them at
    about 14 GB/s on this project's 2-core machine; pre-packed once into its own layout, at
    about 20 GB/s (24 decoder layers at 8 rows: 71 against 100 ms per step). The vision
    encoder's products (4096 rows) gain less, 4-7% of the encoder's time. The same
    oneDNN kernels compute the products, so results are equal to rounding.

    The vocabulary projection is left plain: it shares its matrix with the token
    embedding, and packing it would hold a second copy. Packing replaces each plain
    matrix, and the plain one's pages are handed back (see `release_mapped_pages`), so
    memory stays the same. Does nothing (returns 0) unless the model is bf16
    on a CPU whose oneDNN build has bf16 kernels. `decoder=False` leaves the decoder
    plain, for `torch.compile`, whose inductor cannot lower products of packed matrices.

    `float32_from`: products of at least this many rows (the vision encoder's, a prompt's)
    widen the bf16 matrix and rows to float32 and round the result back to bf16, for CPUs
    whose float32 products are faster than their bf16 ones (see `float32_products_faster`);
    a decoding step's few rows still read the packed bf16 matrix.
    """
    import torch

    first = next(model.text_model.model.layers.parameters())
    if first.device.type != "cpu" or first.dtype != torch.bfloat16:
        return 0
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return 0

    class PackedLinear(torch.nn.Module):
        """`nn.Linear` for inference with its weight in oneDNN's layout (no gradients)."""

        def __init__(self, linear: torch.nn.Linear, rows: int) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            # `weight`: transformers' vision MLP reads its dtype to cast its input.
            self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
            self.bias = None if linear.bias is None else linear.bias.detach()
            self.float32_from = float32_from

        def forward(self, hidden_states):
            if self.float32_from is not None and hidden_states.numel() >= self.float32_from * self.in_features:
                return _float32_product(hidden_states, self.weight, self.bias)
            return torch.ops.mkldnn._linear_pointwise(hidden_states, self.weight, self.bias, "none", [], "")

    packed = 0
    mappings = file_mappings()  # read once: packing adds no file mappings
    # The layout is chosen for the rows a product usually has: a decoding step's few, a page's patches.
    parts = [(model.text_model.model.layers, 8)] if decoder else []
    for part, rows in (*parts, (model.vision_model.encoder, 4096), (model.image_to_text_projection, 4096)):
        for parent in list(part.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(parent, name, PackedLinear(child, rows))
                    release_mapped_pages(child.weight, mappings)
                    packed += 1
    return packed


def _float32_product(rows, packed_weight, bias):
    """rows @ weight^T + bias computed in float32 from bf16 inputs, rounded to the rows' dtype."""
    import torch

    weight = packed_weight.to_dense(torch.float32)  # a few ms: products of many rows take 100s
    bias = None if bias is None else bias.float()
    return torch.nn.functional.linear(rows.float(), weight, bias).to(rows.dtype)


# Products of at least this many rows are bound by arithmetic, not by reading the matrix. It only
# has to part a decoding step's rows (one per slot, at most 16) from a page's (a prompt's 2052, the
# vision encoder's patches): nothing in between runs at the default --max-patches. Below about 700
# rows float32's lead was gone (0.94x at 512), so --max-patches under that may widen at a small loss.
MANY_ROWS = 64
# The product timed by `float32_products_faster`: a prompt's rows through a decoder FFN matrix.
# As many rows as a prompt has: without AMX float32's lead grows with rows (bf16 over float32
# time: 0.94 at 512 rows, 1.13 at 1024, 1.32 at 2048), so fewer rows would misjudge the products.
_MEASURED_PRODUCT = (2048, 1536, 6144)  # rows, in, out
# float32 must be this much faster to be chosen: near a tie, stay with the model's own dtype.
_FLOAT32_MARGIN = 1.1


@functools.lru_cache(maxsize=None)
def float32_products_faster(threads: int) -> bool:
    """Whether this CPU multiplies many bf16 rows by a bf16 matrix faster in float32 (measured).

    With AMX, bf16 products run at about 7x float32's speed; on a CPU with `avx512_bf16`
    but no AMX (emulated here with `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`) oneDNN's bf16
    products ran at 0.22 TFLOP/s and float32 ones, matrix widening included, at 0.33
    (1.3-1.55x faster at KOSMOS-2.5's shapes). So both are timed once per process, best of
    2 after a warm-up, packed as `pack_linear_weights` packs them; float32 is dropped after
    one call when that alone takes twice bf16's time (0.25 s in all with AMX, 1.2 s without).
    `threads` is part of the cache key: it can change the answer.
    """
    import torch

    from .cpu_attention import best_seconds

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    rows, inputs, outputs = _MEASURED_PRODUCT
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, inputs, generator=generator).to(torch.bfloat16)
    weight = torch.randn(outputs, inputs, generator=generator).to(torch.bfloat16)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    with torch.inference_mode():
        in_bf16 = best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(hidden, packed, None, "none", [], ""), 2)
        started = time.perf_counter()
        _float32_product(hidden, packed, None)  # a first call: its time is an upper bound
        if time.perf_counter() - started > 2 * in_bf16:  # far behind (with AMX about 6x): not worth timing again
            return False
        in_float32 = best_seconds(lambda: _float32_product(hidden, packed, None), 2)
    return in_float32 * _FLOAT32_MARGIN < in_bf16


def release_mapped_pages(tensor, mappings: list[tuple[int, int]] | None = None) -> bool:
    """Hand back to the system the memory pages of a tensor that is no longer used, when they
    belong to a memory-mapped checkpoint file; returns whether it did.

    transformers maps a checkpoint stored in the dtype it is loaded in (bf16 here) and
    keeps the whole file mapped while any of its tensors lives. Pages read once, as the
    packing reads each plain matrix, then stay counted in the process's memory (2.4 GB
    for the full-size model) although nothing reads them again. `madvise(MADV_DONTNEED)`
    drops them from the process; were they read again, they would be read from the file
    anew (changes made in memory lost), so call it only on tensors nothing uses any more.
    Only whole pages inside a file mapping are released, never anonymous memory.
    `mappings`: `file_mappings()`, when several tensors are released in a row.
    Linux only; elsewhere, or when anything is amiss, nothing is done.
    """
    import ctypes
    import mmap

    if not sys.platform.startswith("linux") or not tensor.is_contiguous():
        return False
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if mappings is None:
        mappings = file_mappings()
    if not any(low <= start and end <= high for low, high in mappings):
        return False
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last <= first:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc.madvise(first, last - first, mmap.MADV_DONTNEED) == 0


def file_mappings() -> list[tuple[int, int]]:
    """The address ranges [low, high) of this process's memory that map files (Linux)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        # A file mapping names its file (a path) and its inode; anonymous memory names nothing or [heap], [stack].
        if len(fields) == 6 and fields[5].startswith("/") and fields[4] != "0":
            low, high = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


def packed_for(linear, rows: int) -> bool:
    """Whether `linear` multiplies `rows` rows by its matrix in oneDNN's layout, where post-ops
    apply (products of many rows may widen to float32 instead; see `pack_linear_weights`)."""
    if not getattr(linear.weight, "is_mkldnn", False):
        return False
    float32_from = getattr(linear, "float32_from", None)
    return float32_from is None or rows < float32_from


def product_gelu(rows, linear, approximate: str):
    """GELU(rows @ weight^T + bias) from a packed `linear`, GELU applied by oneDNN before rounding;
    `approximate`: "none" (exact GELU) or "tanh", as `F.gelu` takes it."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(rows, linear.weight, linear.bias, "gelu", [], approximate)


def product_add(rows, linear, other):
    """(rows @ weight^T + bias) + other from a packed `linear`, the sum taken before rounding."""
    import torch

    return torch.ops.mkldnn._linear_pointwise.binary(rows, other, linear.weight, linear.bias, "add")


def product_mul(rows, linear, other):
    """(rows @ weight^T + bias) * other from a packed `linear`, the product taken before rounding."""
    import torch

    return torch.ops.mkldnn._linear_pointwise.binary(rows, other, linear.weight, linear.bias, "mul")
