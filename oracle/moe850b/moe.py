"""The mixture-of-experts feed-forward layer: route, drop over capacity, run the experts, add the shared expert.

Shapes: B batch, S sequence, T = B·S tokens, D model width, K experts per token, E experts.

Tokens over an expert's capacity get routing weight zero for that expert; a token all of whose assignments were
dropped contributes nothing here and so passes through the block's residual unchanged. The zero-weight rows are
still computed, which keeps shapes static (no host sync) at the price of the work capacity dropping would save.
"""

from typing import NamedTuple

import torch
from torch import nn

from oracle.core.mlp import SwiGLU
from oracle.moe850b.config import MoEConfig
from oracle.moe850b.experts import GroupedExperts, capacity_keep_mask, expert_capacity
from oracle.moe850b.router import TopKRouter


class RoutingStats(NamedTuple):
    """Per-layer routing figures for logging; tensors, so reading them is the caller's (host-syncing) choice."""

    tokens_per_expert_E: torch.Tensor  # assignments each expert was chosen for, before capacity
    dropped_assignments: torch.Tensor  # (token, expert) pairs over capacity
    dropped_tokens: torch.Tensor  # tokens with every assignment dropped (pure residual pass-through)


class MoEOutput(NamedTuple):
    y_BSD: torch.Tensor
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    stats: RoutingStats


class CapacityRouting(NamedTuple):
    experts_TK: torch.Tensor
    weights_TK: torch.Tensor  # zero where the assignment was dropped over capacity
    keep_TK: torch.Tensor | None  # None: no capacity limit
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    stats: RoutingStats


def route_with_capacity(
    router: TopKRouter, x_TD: torch.Tensor, n_experts: int, top_k: int, capacity_factor: float | None
) -> CapacityRouting:
    """Route the tokens and, with a capacity factor, drop each expert's assignments beyond its capacity."""
    routing = router(x_TD)
    weights_TK, keep_TK = routing.weights_TK, None
    zero = torch.zeros((), dtype=torch.int64, device=x_TD.device)
    dropped_assignments, dropped_tokens = zero, zero
    if capacity_factor is not None:
        capacity = expert_capacity(x_TD.shape[0], n_experts, top_k, capacity_factor)
        keep_TK = capacity_keep_mask(routing.experts_TK, n_experts, capacity)
        weights_TK = weights_TK * keep_TK
        dropped_assignments = (~keep_TK).sum()
        dropped_tokens = (~keep_TK.any(dim=-1)).sum()
    stats = RoutingStats(routing.tokens_per_expert_E, dropped_assignments, dropped_tokens)
    return CapacityRouting(routing.experts_TK, weights_TK, keep_TK, routing.load_balance_loss, routing.z_loss, stats)


class MoE(nn.Module):
    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.capacity_factor = config.capacity_factor
        self.impl = config.moe_impl
        self.router = TopKRouter(
            config.hidden_size,
            config.n_experts,
            config.top_k,
            bias_balancing=config.bias_balancing,
            bias_update_rate=config.bias_update_rate,
        )
        self.experts = GroupedExperts(config.n_experts, config.hidden_size, config.expert_hidden_size)
        self.shared_expert = (
            SwiGLU(config.hidden_size, config.shared_expert_hidden_size) if config.shared_expert_hidden_size else None
        )

    def forward(self, x_BSD: torch.Tensor) -> MoEOutput:
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        r = route_with_capacity(self.router, x_TD, self.n_experts, self.top_k, self.capacity_factor)
        y_TD = self.experts(x_TD, r.experts_TK, r.weights_TK, impl=self.impl)
        if self.shared_expert is not None:
            y_TD = y_TD + self.shared_expert(x_TD)
        return MoEOutput(y_TD.view(B, S, D), r.load_balance_loss, r.z_loss, r.stats)
