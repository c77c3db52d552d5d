"""The key/value cache of continuous batching: one row (a *slot*) per page in flight.

Buffers are [rows, heads, capacity, dim] per decoder layer, allocated on first use and
grown (and shrunk) in blocks of CACHE_BLOCK positions, so a decoding step never copies
the whole cache. They hold a row for every slot until no more pages will come; then
rows no page uses any more are given back too (a run's last pages decode alone, and
would otherwise keep every slot's cache at the longest page's length).
`decode_loop.ContinuousDecoder` decides which page owns which row; this module only
stores keys/values and hands attention what it reads.
torch is imported inside functions so the CLI's `--help` stays instant.
"""

from __future__ import annotations

# The cache grows (and shrinks) in blocks of this many positions: the CPU decode kernel
# reads the whole buffer, so unused capacity costs time on every step.
CACHE_BLOCK = 256
# Capacities are multiples of this, so that masks over them suit the fused GPU kernels.
CACHE_ALIGN = 64


class SlotCache:
    """The duck-typed cache the text layers call `update` on: writes into slot buffers.

    In a prefill (`start_prefill`) the new keys go to rows `rows`, positions 0..P-1, and
    attention runs on them as they are (causal). In a decoding step (`start_step`) each
    active row's key goes to its own position and attention gets rows 0..n-1 of the
    buffers' first `width` positions (the caller adds a key mask). On GPUs `width` is the
    whole capacity: the shapes then change only when the capacity does, every CACHE_BLOCK
    steps, rather than at every step (kernels that plan per shape, such as cuDNN's
    attention, would plan again each time). On CPU it is the longest row's length: a step
    there is bound by the bytes it reads, and torch's attention over the used positions
    alone was 1.3x (256 unused) to 1.9x (1,100 unused) as fast (8 and 4 rows, bf16;
    `products`, kosmos25's other CPU kernel, reads the whole buffer behind the view anyway).
    """

    def __init__(self, slots: int, layers: int, heads: int, head_dim: int, capacity_limit: int, dtype, device) -> None:
        self.slots, self.layers, self.heads, self.head_dim = slots, layers, heads, head_dim
        self.capacity_limit = capacity_limit
        self.dtype, self.device = dtype, device
        self.keys: list = []
        self.values: list = []
        self.peak_capacity = 0
        self.peak_cells = 0  # the most rows x positions held at once (memory, in positions)
        self.mode = "prefill"
        self.rows = slice(0)  # the prefill's rows: a new group always goes right after the live rows
        self.prompt_length = 0
        self.active = 0
        self.width = 0  # positions a decoding step's attention reads
        self.positions = None  # [n] write position per active row (device)
        self.row_index = None  # [n] arange (device)

    @property
    def capacity(self) -> int:
        """Positions each row's buffers hold now (0 before first use)."""
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def held_rows(self) -> int:
        """Rows the buffers hold now (0 before first use)."""
        return self.keys[0].shape[0] if self.keys else 0

    def start_prefill(self, rows: slice, prompt_length: int) -> None:
        """The next forward pass prefills `rows` with prompts of `prompt_length` tokens."""
        self.reserve(prompt_length, rows.start)
        if rows.stop > self.held_rows:  # rows were given back, and pages came after all: every slot again
            self._reallocate(self.capacity, rows.start, self.slots)
        self.mode, self.rows, self.prompt_length = "prefill", rows, prompt_length

    def start_step(self, positions, width: int) -> None:
        """The next forward pass is a decoding step: row i writes at `positions[i]` (a device tensor)."""
        import torch

        self.mode, self.active, self.width = "decode", positions.shape[0], width
        self.positions = positions
        self.row_index = torch.arange(self.active, device=positions.device)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Store this step's keys/values for layer `layer_idx`; return what attention reads."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.mode == "prefill":
            keys[self.rows, :, : self.prompt_length] = key_states
            values[self.rows, :, : self.prompt_length] = value_states
            return key_states, value_states
        keys[self.row_index, :, self.positions] = key_states[:, :, 0]
        values[self.row_index, :, self.positions] = value_states[:, :, 0]
        return keys[: self.active, :, : self.width], values[: self.active, :, : self.width]

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy row `source`'s first `length` positions into row `target` (every layer)."""
        for buffer in (*self.keys, *self.values):
            buffer[target, :, :length] = buffer[source, :, :length]

    def reserve(self, width: int, rows_in_use: int) -> None:
        """Make the buffers hold `width` positions (allocating them, a row per slot, on first use)."""
        if self.capacity >= width:
            return
        capacity = min(self.capacity_limit, round_up(width + CACHE_BLOCK, CACHE_ALIGN))
        self._reallocate(capacity, rows_in_use, self.held_rows or self.slots)

    def fit(self, needed: int, rows_in_use: int, last_pages: bool = False) -> None:
        """Give back capacity beyond `needed` positions that no live row uses (the longest page
        ended); with `last_pages` (no page will join), rows beyond `rows_in_use` too, once at
        least a quarter of the rows held is free (fewer copies of the live rows)."""
        if not self.keys:
            return
        if last_pages and rows_in_use == 0:
            self.clear()
            return
        rows = self.held_rows
        if last_pages and rows - rows_in_use >= max(1, rows // 4):
            rows = max(1, rows_in_use)
        capacity = self.capacity
        if capacity - needed > 2 * CACHE_BLOCK:
            capacity = min(self.capacity_limit, round_up(needed + CACHE_BLOCK, CACHE_ALIGN))
        if (capacity, rows) != (self.capacity, self.held_rows):
            self._reallocate(capacity, rows_in_use, rows)

    def clear(self) -> None:
        """Drop every buffer."""
        self.keys.clear()
        self.values.clear()

    def _reallocate(self, capacity: int, rows_in_use: int, rows: int) -> None:
        """Buffers of `rows` rows and `capacity` positions, rows 0..rows_in_use-1 kept."""
        # Zeros, not garbage: the CPU decode kernel multiplies the whole buffer before masking.
        shape = (rows, self.heads, capacity, self.head_dim)
        if not self.keys:
            for _layer in range(self.layers):
                self.keys.append(self._zeros(shape))
                self.values.append(self._zeros(shape))
        else:
            keep = min(capacity, self.capacity)
            for buffers in (self.keys, self.values):
                for index, old in enumerate(buffers):
                    new = self._zeros(shape)
                    new[:rows_in_use, :, :keep] = old[:rows_in_use, :, :keep]
                    buffers[index] = new  # one layer at a time: the old buffer goes here
        self.peak_capacity = max(self.peak_capacity, capacity)
        self.peak_cells = max(self.peak_cells, rows * capacity)

    def _zeros(self, shape):
        import torch

        return torch.zeros(shape, dtype=self.dtype, device=self.device)


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `value`."""
    return -(-value // multiple) * multiple
