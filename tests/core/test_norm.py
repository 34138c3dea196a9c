import torch

from oracle.core.norm import RMSNorm


def test_rmsnorm_matches_its_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rmsnorm_output_has_unit_rms_with_unit_weight() -> None:
    x = torch.randn(4, 64) * 7.0
    rms = RMSNorm(64)(x).pow(2).mean(dim=-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(4), atol=1e-4, rtol=0)


def test_rmsnorm_keeps_bf16_dtype() -> None:
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    assert RMSNorm(16)(x).dtype == torch.bfloat16
