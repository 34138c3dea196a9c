import math

import pytest
import torch

from oracle.core import attention as attention_module
from oracle.core.attention import Attention, causal_attention
from oracle.core.kv_cache import KVCache
from oracle.core.rope import RotaryEmbedding


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention with K/V heads repeated up to the query heads and an explicit causal mask."""
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    S, L = q.shape[2], k.shape[2]
    mask = torch.ones(S, L, dtype=torch.bool).tril(diagonal=L - S)
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v


def test_grouped_query_attention_equals_full_attention_with_repeated_heads() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 10, 16), torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    torch.testing.assert_close(causal_attention(q, k, v), _reference_attention(q, k, v))


def test_queries_after_a_cache_see_earlier_keys_but_not_later_ones() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    torch.testing.assert_close(causal_attention(q, k, v), _reference_attention(q, k, v))
    torch.testing.assert_close(causal_attention(q[:, :, -1:], k, v), _reference_attention(q[:, :, -1:], k, v))


def test_changing_later_tokens_never_changes_earlier_outputs() -> None:
    torch.manual_seed(0)
    layer = Attention(dim=32, n_heads=4, n_kv_heads=2, head_dim=8)
    rope = RotaryEmbedding(8, 16)
    cos, sin = rope(torch.arange(12))
    x = torch.randn(1, 12, 32)
    changed = x.clone()
    changed[:, 7:] = torch.randn(1, 5, 32)
    torch.testing.assert_close(layer(x, cos, sin)[:, :7], layer(changed, cos, sin)[:, :7])
    assert not torch.allclose(layer(x, cos, sin)[:, 7:], layer(changed, cos, sin)[:, 7:])


def test_incremental_decoding_with_the_cache_equals_the_full_pass() -> None:
    torch.manual_seed(0)
    layer = Attention(dim=32, n_heads=4, n_kv_heads=1, head_dim=8)
    rope = RotaryEmbedding(8, 16)
    x = torch.randn(2, 9, 32)
    full = layer(x, *rope(torch.arange(9)))
    cache = KVCache(n_layers=1, batch_size=2, n_kv_heads=1, head_dim=8, max_length=9)
    pieces = []
    for start, end in ((0, 4), (4, 6), (6, 7), (7, 8), (8, 9)):
        pieces.append(layer(x[:, start:end], *rope(torch.arange(start, end)), cache, 0))
        cache.advance(end - start)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


def test_cache_refuses_to_overflow() -> None:
    cache = KVCache(n_layers=1, batch_size=1, n_kv_heads=1, head_dim=4, max_length=2)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(0, torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4))


def test_flash_attn_is_not_used_on_cpu_even_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention_module, "HAS_FLASH_ATTN", True)
    assert not attention_module.flash_attn_usable(torch.randn(1, 2, 3, 8, dtype=torch.bfloat16))


@pytest.mark.gpu
def test_flash_attn_gives_the_same_result_as_sdpa() -> None:
    if not (torch.cuda.is_available() and attention_module.HAS_FLASH_ATTN):
        pytest.skip("needs a CUDA device with flash_attn installed")
    torch.manual_seed(0)
    q = torch.randn(2, 8, 64, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, 96, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 2, 96, 64, device="cuda", dtype=torch.bfloat16)
    flash = causal_attention(q, k, v)
    torch.testing.assert_close(flash.float(), _reference_attention(q.float(), k.float(), v.float()), atol=2e-2, rtol=0)
