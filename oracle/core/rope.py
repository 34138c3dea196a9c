"""Rotary position embeddings (Su et al., 2021) in the "rotate half" layout, with a cached cos/sin table.

Shapes: S sequence positions, Hd head dimension (even).
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Holds cos/sin for positions [0, max_positions); grows the cache on demand for longer inputs."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.inv_freq: torch.Tensor
        self.cos_SHd: torch.Tensor
        self.sin_SHd: torch.Tensor
        self._build_cache(max_positions)

    def _build_cache(self, n_positions: int) -> None:
        device = self.inv_freq.device
        positions = torch.arange(n_positions, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos_SHd", angles.cos(), persistent=False)
        self.register_buffer("sin_SHd", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for the given integer positions (any shape); trailing dim is Hd."""
        if positions.device.type != "meta" and positions.numel():
            needed = int(positions.max()) + 1
            if needed > self.cos_SHd.shape[0]:
                self._build_cache(max(needed, 2 * self.cos_SHd.shape[0]))
        return self.cos_SHd[positions], self.sin_SHd[positions]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x_BHSHd: torch.Tensor, cos_SHd: torch.Tensor, sin_SHd: torch.Tensor) -> torch.Tensor:
    """Rotate q or k (B, H, S, Hd) by the angles of their positions; computed in fp32, returned in x's dtype."""
    x32 = x_BHSHd.float()
    rotated = x32 * cos_SHd + _rotate_half(x32) * sin_SHd
    return rotated.to(x_BHSHd.dtype)
