import torch

from oracle.core.rope import RotaryEmbedding, apply_rotary


def _score(rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, q_pos: int, k_pos: int) -> torch.Tensor:
    cos_q, sin_q = rope(torch.tensor([q_pos]))
    cos_k, sin_k = rope(torch.tensor([k_pos]))
    return (apply_rotary(q, cos_q, sin_q) * apply_rotary(k, cos_k, sin_k)).sum()


def test_query_key_score_depends_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=32, max_positions=64, theta=10_000.0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    base = _score(rope, q, k, 5, 2)
    torch.testing.assert_close(_score(rope, q, k, 13, 10), base)
    torch.testing.assert_close(_score(rope, q, k, 40, 37), base)
    assert not torch.allclose(_score(rope, q, k, 13, 2), base)


def test_rotation_preserves_norm_and_position_zero_is_identity() -> None:
    rope = RotaryEmbedding(head_dim=16, max_positions=8)
    x = torch.randn(2, 3, 4, 16)
    cos, sin = rope(torch.arange(4))
    rotated = apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])


def test_theta_changes_the_angles() -> None:
    slow, fast = RotaryEmbedding(16, 8, theta=500_000.0), RotaryEmbedding(16, 8, theta=10.0)
    assert not torch.allclose(slow(torch.tensor([3]))[0], fast(torch.tensor([3]))[0])


def test_cache_grows_for_positions_beyond_it() -> None:
    rope = RotaryEmbedding(head_dim=8, max_positions=4)
    cos, _ = rope(torch.tensor([10]))
    reference = RotaryEmbedding(head_dim=8, max_positions=16)
    torch.testing.assert_close(cos, reference(torch.tensor([10]))[0])
