"""Per-row key/value caches for bidirectional dLLMs (Fast-dLLM's prefix and dual cache).

The cache holds every layer's keys and values in the batch's column layout, [B, H_kv, T + 1,
head_dim]: the same left-padded [prompt | canvas] columns as the engine's token tensor, plus one
scratch column T that padded query slots write to and that no query attends to. A forward hands
the backend a writer (`dllm.backend.KVWriter`):

- `fill(rows)`: a full forward over all T columns stores its keys/values and attends with its
  own (so a block-start step gives the same logits as no cache);
- `attend(rows, cols)`: a forward over some columns per row (the block, or the block to the end
  of the canvas) writes its fresh keys/values at those columns and attends to the whole row:
  cached columns keep what the last forward that covered them wrote.

Rows own their slices: when the batch's membership changes, the engine copies each row's real
columns out (`row`) and places them into the new layout (`place`), so a request's cache, like its
tokens, never depends on its neighbours. Memory: 2 x layers x H_kv x head_dim x element size per
column, for every column of the batch layout (`nbytes`).
"""

from __future__ import annotations

import torch
from unmaskd.dllm.backend import KVWriter

CACHE_MODES = ("none", "prefix", "dual")


class KVCache:
    def __init__(self, layout: tuple[int, int, int], key_valid: torch.Tensor, dtype: torch.dtype):
        n_layers, n_kv_heads, head_dim = layout
        batch, width = key_valid.shape
        shape = (batch, n_kv_heads, width + 1, head_dim)
        device = key_valid.device
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.width = width
        valid = torch.cat([key_valid, key_valid.new_zeros(batch, 1)], -1)
        bias = torch.zeros(valid.shape, dtype=dtype, device=device)
        self.key_bias = bias.masked_fill(~valid, float("-inf"))[:, None, None, :]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    def fill(self, rows: torch.Tensor | None) -> KVWriter:
        """Writer for a full forward of `rows` (None: every row) over all columns."""
        def write(layer: int, k: torch.Tensor, v: torch.Tensor):
            index = slice(None) if rows is None else rows
            self.k[layer][index, :, :self.width] = k
            self.v[layer][index, :, :self.width] = v
            return k, v, None
        return write

    def attend(self, rows: torch.Tensor | None, cols: torch.Tensor,
               bias: torch.Tensor | None = None) -> KVWriter:
        """Writer for a forward of `rows` over `cols` [n, Q] (column T for padded slots);
        `bias` [n, 1, Q, T + 1] replaces the key-padding mask (block-causal attention)."""
        n = cols.shape[0]
        row_index = (torch.arange(n, device=cols.device) if rows is None else rows)[:, None]
        if bias is None:
            bias = self.key_bias if rows is None else self.key_bias[rows]

        def write(layer: int, k: torch.Tensor, v: torch.Tensor):
            # [n, H, Q, d] -> [n, Q, H, d]: advanced indices (rows, cols) come first
            self.k[layer][row_index, :, cols] = k.transpose(1, 2)
            self.v[layer][row_index, :, cols] = v.transpose(1, 2)
            if rows is None:
                return self.k[layer], self.v[layer], bias.to(k.dtype)
            return self.k[layer][rows], self.v[layer][rows], bias.to(k.dtype)
        return write

    def row(self, b: int, start: int, stop: int) -> torch.Tensor:
        """Row b's columns [start, stop) of every layer: [2, layers, H_kv, stop - start, d]."""
        return torch.stack([torch.stack([t[b, :, start:stop] for t in kv])
                            for kv in (self.k, self.v)])

    def place(self, b: int, start: int, saved: torch.Tensor) -> None:
        """Put a row's saved columns (from `row`) at column `start` of row b."""
        stop = start + saved.shape[-2]
        for layer in range(len(self.k)):
            self.k[layer][b, :, start:stop] = saved[0, layer]
            self.v[layer][b, :, start:stop] = saved[1, layer]
