"""Key/value caches for incremental decoding.

A cache tells the model where the next S tokens sit (`positions`, `end`), stores their keys and values (`update`),
says which cached keys each new query may see (`attention_mask`; None means plain causal), and moves on (`advance`).

- `KVCache`: one (B, G, S_max, Hd) buffer pair per layer; every row of the batch shares one write position
  (`OracleMoE.generate`, where all rows start together).
- `SlotKVCache`: a fixed number of slots, each with its own length, for a server that batches requests which started
  at different times (continuous batching). The rows of a forward pass are a contiguous range of slots
  (`select`), so the active rows are read as a view, never gathered; `move` compacts a finished slot away.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_length: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, n_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_length = max_length
        self.length = 0

    def end(self, n_new: int) -> int:
        """The number of positions the longest row will hold after the next n_new tokens."""
        return self.length + n_new

    def positions(self, n_new: int, device: torch.device) -> torch.Tensor:
        """(S,) positions of the next n_new tokens, the same for every row."""
        return torch.arange(self.length, self.length + n_new, device=device)

    def attention_mask(self, n_new: int) -> torch.Tensor | None:
        return None  # every row is aligned: bottom-right causal attention is exact

    def update(self, layer: int, k_BGSHd: torch.Tensor, v_BGSHd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values for `layer` after the cached ones; return everything cached so far."""
        start, end = self.length, self.length + k_BGSHd.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache full: {end} positions requested, the cache holds {self.max_length}")
        self.keys[layer][:, :, start:end] = k_BGSHd
        self.values[layer][:, :, start:end] = v_BGSHd
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_positions: int) -> None:
        self.length += n_positions


class SlotKVCache:
    """`n_slots` independent sequences of up to `max_length` positions each."""

    def __init__(
        self,
        n_layers: int,
        n_slots: int,
        n_kv_heads: int,
        head_dim: int,
        max_length: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_slots, n_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.n_slots, self.max_length = n_slots, max_length
        self.lengths = [0] * n_slots  # host copy: no device sync to plan a step
        self._written = [0] * n_slots  # how far a prefill wrote, advanced or not (a forward pass may fail midway)
        self.device = torch.device(device)
        self._lengths_N = torch.zeros(n_slots, dtype=torch.long, device=device)
        self._start, self._stop = 0, 0

    def select(self, start: int, stop: int) -> None:
        """The next forward pass runs slots [start, stop) as its batch rows, in order."""
        if not 0 <= start < stop <= self.n_slots:
            raise ValueError(f"slots [{start}, {stop}) are outside 0..{self.n_slots}")
        self._start, self._stop = start, stop

    def reset(self, slot: int) -> None:
        """Empty `slot`. What it held is zeroed, not just masked: SDPA adds a boolean mask, so a NaN or inf left by an
        earlier sequence at a masked position would still turn the next occupant's attention into NaN."""
        # a decode step writes one position past the length before advancing, a prefill up to _written
        self._clear(slot, 0, min(self.max_length, max(self.lengths[slot] + 1, self._written[slot])))
        self.lengths[slot] = self._written[slot] = 0
        self._lengths_N[slot] = 0

    def move(self, source: int, target: int) -> None:
        """Copy slot `source` (its cached positions and length) into `target` (whose longer leftovers are zeroed)."""
        n = self.lengths[source]
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[target, :, :n] = layer[source, :, :n]
        self._clear(target, n, min(self.max_length, max(self.lengths[target] + 1, self._written[target])))
        self.lengths[target] = self._written[target] = n
        self._lengths_N[target] = n

    def _clear(self, slot: int, start: int, stop: int) -> None:
        if stop > start:
            for buffers in (self.keys, self.values):
                for layer in buffers:
                    layer[slot, :, start:stop] = 0

    def _rows(self) -> slice:
        return slice(self._start, self._stop)

    def end(self, n_new: int) -> int:
        return max(self.lengths[self._rows()]) + n_new

    def positions(self, n_new: int, device: torch.device) -> torch.Tensor:
        """(B, S) positions of the next n_new tokens of each selected slot."""
        return self._lengths_N[self._rows(), None] + torch.arange(n_new, device=device)

    def attention_mask(self, n_new: int) -> torch.Tensor:
        """(B, 1, S, L) True where a query may attend: keys at or before its own position in its own slot."""
        query_BS = self.positions(n_new, self.device)
        key_L = torch.arange(self.end(n_new), device=self.device)
        return (key_L[None, None, :] <= query_BS[:, :, None])[:, None]

    def update(self, layer: int, k_BGSHd: torch.Tensor, v_BGSHd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new keys/values at its own length; return the rows' caches up to the longest."""
        rows, S = self._rows(), k_BGSHd.shape[2]
        end = self.end(S)
        if end > self.max_length:
            raise ValueError(f"KV cache full: {end} positions requested, a slot holds {self.max_length}")
        keys, values = self.keys[layer][rows], self.values[layer][rows]
        if S == 1:  # decoding: one scatter for every row
            row_B = torch.arange(keys.shape[0], device=keys.device)
            position_B = self._lengths_N[rows]
            keys[row_B, :, position_B] = k_BGSHd[:, :, 0]
            values[row_B, :, position_B] = v_BGSHd[:, :, 0]
        else:
            for row, length in enumerate(self.lengths[rows]):
                keys[row, :, length : length + S] = k_BGSHd[row]
                values[row, :, length : length + S] = v_BGSHd[row]
                slot = rows.start + row
                self._written[slot] = max(self._written[slot], length + S)
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n_positions: int) -> None:
        rows = self._rows()
        for slot in range(rows.start, rows.stop):
            self.lengths[slot] += n_positions
        self._lengths_N[rows] += n_positions


AnyKVCache = KVCache | SlotKVCache
