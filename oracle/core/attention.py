"""Causal grouped-query attention through PyTorch SDPA, or `flash_attn` when it is installed and usable.

Shapes: B batch, S query positions, L key positions (S plus what is cached), D model width,
H query heads, G key/value heads (H % G == 0), Hd head dimension.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from oracle.core.rope import apply_rotary

if TYPE_CHECKING:
    from oracle.core.kv_cache import AnyKVCache

HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def flash_attn_usable(q: torch.Tensor) -> bool:
    """flash_attn runs only on CUDA in fp16/bf16; everything else goes through SDPA."""
    return HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def causal_attention(
    q_BHSHd: torch.Tensor, k_BGLHd: torch.Tensor, v_BGLHd: torch.Tensor, mask_B1SL: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal attention where the S queries are the last S of the L key positions (bottom-right aligned mask), or,
    given `mask_B1SL` (True: may attend), exactly the keys it allows: rows whose sequences have different lengths."""
    S, L = q_BHSHd.shape[2], k_BGLHd.shape[2]
    gqa = q_BHSHd.shape[1] != k_BGLHd.shape[1]
    if mask_B1SL is not None:
        return F.scaled_dot_product_attention(q_BHSHd, k_BGLHd, v_BGLHd, attn_mask=mask_B1SL, enable_gqa=gqa)
    if flash_attn_usable(q_BHSHd):
        from flash_attn import flash_attn_func

        # flash_attn takes (B, S, H, Hd), handles G < H itself and aligns its causal mask bottom-right.
        out_BSHHd = flash_attn_func(
            q_BHSHd.transpose(1, 2), k_BGLHd.transpose(1, 2), v_BGLHd.transpose(1, 2), causal=True
        )
        return out_BSHHd.transpose(1, 2)  # type: ignore[no-any-return]
    if S == L:
        return F.scaled_dot_product_attention(q_BHSHd, k_BGLHd, v_BGLHd, is_causal=True, enable_gqa=gqa)
    if S == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q_BHSHd, k_BGLHd, v_BGLHd, enable_gqa=gqa)
    # SDPA's is_causal aligns top-left; with a cache the queries sit at positions L-S .. L-1.
    query_pos = torch.arange(L - S, L, device=q_BHSHd.device)
    key_pos = torch.arange(L, device=q_BHSHd.device)
    allowed_SL = key_pos[None, :] <= query_pos[:, None]
    return F.scaled_dot_product_attention(q_BHSHd, k_BGLHd, v_BGLHd, attn_mask=allowed_SL, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False)

    def forward(
        self,
        x_BSD: torch.Tensor,
        cos_SHd: torch.Tensor,
        sin_SHd: torch.Tensor,
        cache: AnyKVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, S, _ = x_BSD.shape
        q_BHSHd = self.q_proj(x_BSD).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k_BGSHd = self.k_proj(x_BSD).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BGSHd = self.v_proj(x_BSD).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q_BHSHd = apply_rotary(q_BHSHd, cos_SHd, sin_SHd)
        k_BGSHd = apply_rotary(k_BGSHd, cos_SHd, sin_SHd)
        mask_B1SL = None
        if cache is not None:
            k_BGSHd, v_BGSHd = cache.update(layer, k_BGSHd, v_BGSHd)
            mask_B1SL = cache.attention_mask(S)
        out_BHSHd = causal_attention(q_BHSHd, k_BGSHd, v_BGSHd, mask_B1SL)
        out_BSD: torch.Tensor = self.o_proj(out_BHSHd.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))
        return out_BSD
