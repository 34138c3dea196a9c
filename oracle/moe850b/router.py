"""Top-k softmax router with the Switch load-balancing loss, the router z-loss and optional bias balancing.

Shapes: T tokens, D model width, E experts, K experts chosen per token.

- Probabilities are computed in (at least) fp32; the K chosen weights are renormalised to sum to one per token.
- Switch loss (Fedus et al., 2021): E · Σᵢ fᵢ·Pᵢ, fᵢ the fraction of the T·K assignments sent to expert i and
  Pᵢ the mean router probability of expert i. It equals 1.0 when routing is perfectly balanced.
- z-loss (Zoph et al., 2022): mean over tokens of logsumexp(logits)², keeping router logits small.
- Aux-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores used for *selection only*,
  nudged after each step towards under-loaded experts; the weights still come from the unbiased probabilities.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Routing(NamedTuple):
    experts_TK: torch.Tensor  # int64 expert ids, K per token
    weights_TK: torch.Tensor  # fp32, renormalised over the K chosen experts
    tokens_per_expert_E: torch.Tensor  # int64 assignment counts (before any capacity dropping)
    load_balance_loss: torch.Tensor  # fp32 scalar
    z_loss: torch.Tensor  # fp32 scalar


def switch_load_balance_loss(probs_TE: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
    n_experts = probs_TE.shape[-1]
    fraction_E = tokens_per_expert_E.float() / tokens_per_expert_E.sum().clamp(min=1)
    mean_prob_E = probs_TE.mean(dim=0)
    return n_experts * (fraction_E * mean_prob_E).sum()


def router_z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits_TE, dim=-1).pow(2).mean()


def count_assignments(experts_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert, without a host sync (bincount would need the maximum on CUDA)."""
    flat = experts_TK.reshape(-1)
    return torch.zeros(n_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


class TopKRouter(nn.Module):
    def __init__(
        self, dim: int, n_experts: int, top_k: int, *, bias_balancing: bool = False, bias_update_rate: float = 1e-3
    ) -> None:
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.bias_balancing, self.bias_update_rate = bias_balancing, bias_update_rate
        self.gate = nn.Linear(dim, n_experts, bias=False)
        # Selection bias for aux-loss-free balancing: state, not a parameter (no gradient flows into it).
        self.register_buffer("expert_bias", torch.zeros(n_experts, dtype=torch.float32))
        self.expert_bias: torch.Tensor

    def forward(self, x_TD: torch.Tensor) -> Routing:
        # At least fp32 (bf16 logits make the top-k choice noisy); float64 stays float64 for gradcheck.
        dtype = torch.promote_types(x_TD.dtype, torch.float32)
        logits_TE = F.linear(x_TD.to(dtype), self.gate.weight.to(dtype))
        probs_TE = logits_TE.softmax(dim=-1)
        scores_TE = probs_TE + self.expert_bias if self.bias_balancing else probs_TE
        experts_TK = scores_TE.topk(self.top_k, dim=-1).indices
        chosen_TK = probs_TE.gather(-1, experts_TK)
        weights_TK = chosen_TK / chosen_TK.sum(dim=-1, keepdim=True)
        tokens_per_expert_E = count_assignments(experts_TK, self.n_experts)
        return Routing(
            experts_TK=experts_TK,
            weights_TK=weights_TK,
            tokens_per_expert_E=tokens_per_expert_E,
            load_balance_loss=switch_load_balance_loss(probs_TE, tokens_per_expert_E),
            z_loss=router_z_loss(logits_TE),
        )

    @torch.no_grad()
    def update_bias(self, tokens_per_expert_E: torch.Tensor) -> None:
        """After an optimiser step: raise the bias of under-loaded experts, lower it for over-loaded ones."""
        load = tokens_per_expert_E.float()
        self.expert_bias += self.bias_update_rate * torch.sign(load.mean() - load)
