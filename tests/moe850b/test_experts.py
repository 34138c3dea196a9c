import pytest
import torch

from oracle.moe850b.experts import (
    GroupedExperts,
    capacity_keep_mask,
    expert_capacity,
    grouped_mm_preferred,
    grouped_mm_supported,
)
from oracle.moe850b.moe import MoE
from tests.conftest import micro_config


def _experts(n_experts: int = 8, dim: int = 16, hidden: int = 32) -> GroupedExperts:
    torch.manual_seed(0)
    experts = GroupedExperts(n_experts, dim, hidden)
    experts.reset_parameters(std=0.2, out_std=0.2)
    return experts


def _run(experts: GroupedExperts, impl: str, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> dict:
    experts.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    weights = weights.clone().requires_grad_(True)
    forward = experts.forward_grouped if impl == "grouped" else experts.forward_loop
    y = forward(x, ids, weights)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return {"y": y.detach(), "x": x.grad, "weights": weights.grad, "w13": experts.w13.grad, "w2": experts.w2.grad}


def test_grouped_path_runs_on_cpu_in_fp32_but_auto_prefers_the_loop_there() -> None:
    assert grouped_mm_supported(torch.zeros(1, dtype=torch.float32))
    assert not grouped_mm_supported(torch.zeros(1, dtype=torch.float64))
    assert not grouped_mm_preferred(torch.zeros(1, dtype=torch.float32))


def test_dispatch_follows_impl(monkeypatch: pytest.MonkeyPatch) -> None:
    experts = _experts()
    calls: list[str] = []
    monkeypatch.setattr(GroupedExperts, "forward_grouped", lambda self, *a: calls.append("grouped"))
    monkeypatch.setattr(GroupedExperts, "forward_loop", lambda self, *a: calls.append("loop"))
    x, ids, weights = torch.randn(4, 16), torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2)
    for impl in ("grouped", "loop", "auto"):
        experts(x, ids, weights, impl=impl)
    experts(x.double(), ids, weights, impl="grouped")  # no fp64 grouped GEMM: falls back to the loop
    assert calls == ["grouped", "loop", "loop", "loop"]


def test_grouped_path_equals_the_reference_loop_in_outputs_and_all_gradients() -> None:
    experts = _experts()
    torch.manual_seed(1)
    x = torch.randn(40, 16)
    # experts 3 and 5 receive no tokens at all
    ids = torch.tensor([0, 1, 2, 4, 6, 7])[torch.randint(0, 6, (40, 2))]
    weights = torch.rand(40, 2)
    grouped, loop = _run(experts, "grouped", x, ids, weights), _run(experts, "loop", x, ids, weights)
    for name in ("y", "x", "weights", "w13", "w2"):
        torch.testing.assert_close(grouped[name], loop[name], atol=1e-5, rtol=1e-5, msg=f"{name} differs")
    for result in (grouped, loop):
        assert result["w13"][[3, 5]].abs().sum() == 0
        assert result["w2"][[3, 5]].abs().sum() == 0
    assert grouped["w13"][0].abs().sum() > 0


def test_moe_layer_grouped_equals_loop_including_router_gradients() -> None:
    config = micro_config(n_experts=8, top_k=2, capacity_factor=1.0, moe_impl="grouped")
    torch.manual_seed(0)
    grouped_layer = MoE(config)
    loop_layer = MoE(config.model_copy(update={"moe_impl": "loop"}))
    for layer in (grouped_layer, loop_layer):
        torch.manual_seed(3)
        for parameter in layer.parameters():
            torch.nn.init.normal_(parameter, std=0.3)
    x = torch.randn(2, 10, 16)
    results = []
    for layer in (grouped_layer, loop_layer):
        out = layer(x)
        (out.y_BSD.pow(2).sum() + out.load_balance_loss + out.z_loss).backward()
        results.append((out, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    (g_out, g_grads), (l_out, l_grads) = results
    torch.testing.assert_close(g_out.y_BSD, l_out.y_BSD, atol=1e-5, rtol=1e-5)
    assert int(g_out.stats.dropped_assignments) == int(l_out.stats.dropped_assignments) > 0
    assert g_grads.keys() == l_grads.keys()
    for name in g_grads:
        torch.testing.assert_close(g_grads[name], l_grads[name], atol=1e-4, rtol=1e-4, msg=f"grad of {name}")


def test_capacity_keeps_first_choices_before_second_choices() -> None:
    # 4 tokens, top-2, capacity 2: expert 0 is everyone's first choice, expert 1 the second choice of three.
    ids = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 1]])
    keep = capacity_keep_mask(ids, n_experts=3, capacity=2)
    assert keep.tolist() == [[True, True], [True, True], [False, True], [False, False]]
    # the same second choices, but expert 0's first choices compete with a token whose first choice is expert 1
    ids = torch.tensor([[0, 2], [1, 0], [0, 2]])
    keep = capacity_keep_mask(ids, n_experts=3, capacity=2)
    assert keep.tolist() == [[True, True], [True, False], [True, True]]


def test_capacity_formula() -> None:
    assert expert_capacity(n_tokens=100, n_experts=8, top_k=2, capacity_factor=1.25) == 32
    assert expert_capacity(n_tokens=8, n_experts=4, top_k=1, capacity_factor=1.0) == 2


def test_dropped_tokens_are_counted_and_pass_through_untouched() -> None:
    config = micro_config(n_experts=4, top_k=1, capacity_factor=1.0, shared_expert_hidden_size=0)
    torch.manual_seed(0)
    layer = MoE(config)
    with torch.no_grad():
        layer.router.gate.weight.zero_()
        layer.router.gate.weight[0, 0] = 50.0  # every token with x[0] > 0 goes to expert 0
    x = torch.randn(1, 8, 16)
    x[..., 0] = x[..., 0].abs() + 1.0
    out = layer(x)
    assert out.stats.tokens_per_expert_E.tolist() == [8, 0, 0, 0]
    assert int(out.stats.dropped_assignments) == 6  # capacity ceil(1.0 · 8 · 1 / 4) = 2
    assert int(out.stats.dropped_tokens) == 6
    y = out.y_BSD[0]
    assert y[:2].abs().sum() > 0
    assert torch.equal(y[2:], torch.zeros_like(y[2:]))


def test_gradcheck_in_float64_on_a_micro_layer() -> None:
    config = micro_config(n_experts=4, top_k=2, hidden_size=8, expert_hidden_size=8, shared_expert_hidden_size=8)
    torch.manual_seed(0)
    layer = MoE(config.model_copy(update={"moe_impl": "loop"})).double()
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def run(x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(layer, dict(zip(names, weights, strict=True)), (x,))
        return out.y_BSD.sum(dim=-1) + out.load_balance_loss + out.z_loss

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_bf16_experts_run(impl: str) -> None:
    experts = _experts().to(torch.bfloat16)
    ids = torch.randint(0, 8, (12, 2))
    y = experts(torch.randn(12, 16, dtype=torch.bfloat16), ids, torch.rand(12, 2), impl=impl)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all()
