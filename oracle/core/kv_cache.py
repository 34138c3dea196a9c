"""A preallocated key/value cache for incremental decoding: one (B, G, S_max, Hd) buffer pair per layer.

All rows of a batch share one write position; `advance` moves it after every layer has written the step.
"""

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
