import math

import torch

from oracle.moe850b.router import TopKRouter, count_assignments, router_z_loss, switch_load_balance_loss


def test_router_weights_sum_to_one_over_the_chosen_experts() -> None:
    torch.manual_seed(0)
    router = TopKRouter(dim=16, n_experts=8, top_k=3)
    routing = router(torch.randn(50, 16))
    torch.testing.assert_close(routing.weights_TK.sum(dim=-1), torch.ones(50))
    assert routing.weights_TK.dtype == torch.float32
    assert routing.experts_TK.shape == (50, 3)
    probs = torch.nn.functional.linear(torch.zeros(0, 16), router.gate.weight)  # shape check only
    assert probs.shape == (0, 8)


def test_router_chooses_the_most_probable_experts_in_fp32_for_bf16_input() -> None:
    torch.manual_seed(0)
    router = TopKRouter(dim=16, n_experts=8, top_k=2)
    x = torch.randn(20, 16)
    routing = router(x.bfloat16())
    logits = torch.nn.functional.linear(x.bfloat16().float(), router.gate.weight.float())
    expected = logits.topk(2, dim=-1).indices
    assert torch.equal(routing.experts_TK.sort(dim=-1).values, expected.sort(dim=-1).values)


def test_switch_loss_is_one_at_perfect_balance() -> None:
    probs = torch.full((64, 8), 1 / 8)
    balanced_counts = torch.full((8,), 16)
    torch.testing.assert_close(switch_load_balance_loss(probs, balanced_counts), torch.tensor(1.0))


def test_switch_loss_grows_to_the_expert_count_when_one_expert_takes_everything() -> None:
    probs = torch.zeros(10, 4)
    probs[:, 0] = 1.0
    counts = torch.tensor([10, 0, 0, 0])
    torch.testing.assert_close(switch_load_balance_loss(probs, counts), torch.tensor(4.0))


def test_z_loss_on_known_logits() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    torch.testing.assert_close(router_z_loss(logits), torch.tensor(expected))


def test_assignment_counts() -> None:
    experts = torch.tensor([[0, 2], [2, 3], [0, 2]])
    assert count_assignments(experts, 5).tolist() == [2, 0, 3, 1, 0]


def test_bias_steers_selection_but_not_the_weights() -> None:
    torch.manual_seed(0)
    router = TopKRouter(dim=8, n_experts=4, top_k=1, bias_balancing=True)
    x = torch.randn(30, 8)
    router.expert_bias[3] = 10.0
    routing = router(x)
    assert (routing.experts_TK == 3).all()
    torch.testing.assert_close(routing.weights_TK, torch.ones(30, 1))  # renormalised unbiased probability
    router.bias_balancing = False
    assert not (router(x).experts_TK == 3).all()


def test_bias_update_moves_towards_underloaded_experts() -> None:
    router = TopKRouter(dim=8, n_experts=4, top_k=1, bias_balancing=True, bias_update_rate=0.1)
    router.update_bias(torch.tensor([10, 0, 0, 2]))
    torch.testing.assert_close(router.expert_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
