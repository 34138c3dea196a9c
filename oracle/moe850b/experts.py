"""Routed SwiGLU experts as stacked 3-D weights, run by grouped GEMM or by the reference per-expert loop.

Shapes: T tokens, K experts per token, A = T·K assignments, D model width, F expert FFN width, E experts.

Weights: `w13` (E, 2F, D) holds the gate and up projections fused, so one grouped GEMM computes both;
`w2` (E, D, F) is the down projection. Both are stored like nn.Linear weights (out, in).

Grouped path: assignments are sorted by expert (stable, in k-major order, so first choices precede second
choices), the tokens gathered into that order, both projections run as `torch._grouped_mm` over the per-expert
groups, and the results are put back by a gather with the inverse permutation and summed with the routing weights.
No host synchronisation. The loop path is the reference: one matmul pair per expert over `unbind` slices.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from oracle.moe850b.router import count_assignments

_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether torch._grouped_mm can run on x's device and dtype (otherwise the loop runs)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return x.dtype in _GROUPED_MM_DTYPES
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)
    return False


def grouped_mm_preferred(x: torch.Tensor) -> bool:
    """What `impl="auto"` picks: grouped GEMM on CUDA, where it is ~9x the loop (DESIGN.md field notes); the loop
    on CPU, where torch._grouped_mm is itself a loop of matmuls and its whole-batch temporaries made it 0.75-0.9x
    the loop in bench/moe_layer.py (bench/RESULTS.md)."""
    return x.device.type == "cuda" and grouped_mm_supported(x)


class GroupedExperts(nn.Module):
    def __init__(self, n_experts: int, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.n_experts, self.dim, self.hidden_dim = n_experts, dim, hidden_dim
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        # Like nn.Linear, usable as built; the model re-initialises with its own scheme.
        self.reset_parameters(std=dim**-0.5, out_std=hidden_dim**-0.5)

    def reset_parameters(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.w13, std=std)
        nn.init.normal_(self.w2, std=out_std)

    def forward(
        self, x_TD: torch.Tensor, experts_TK: torch.Tensor, weights_TK: torch.Tensor, *, impl: str = "auto"
    ) -> torch.Tensor:
        """impl: "grouped" (torch._grouped_mm wherever it runs), "loop" (the reference), or "auto"."""
        use_grouped = grouped_mm_preferred(x_TD) if impl == "auto" else impl == "grouped" and grouped_mm_supported(x_TD)
        if use_grouped:
            return self.forward_grouped(x_TD, experts_TK, weights_TK)
        return self.forward_loop(x_TD, experts_TK, weights_TK)

    def forward_grouped(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, weights_TK: torch.Tensor) -> torch.Tensor:
        T, K = experts_TK.shape
        experts_A = experts_TK.t().reshape(-1)  # k-major: assignment a = k·T + t
        order_A = torch.argsort(experts_A, stable=True)
        token_A = order_A % T
        offsets_E = count_assignments(experts_TK, self.n_experts).cumsum(0).to(torch.int32)

        x_AD = x_TD.index_select(0, token_A)
        h_A2F = torch._grouped_mm(x_AD, self.w13.transpose(-2, -1), offs=offsets_E)
        gate_AF, up_AF = h_A2F.chunk(2, dim=-1)
        y_AD = torch._grouped_mm(F.silu(gate_AF) * up_AF, self.w2.transpose(-2, -1), offs=offsets_E)

        inverse_A = torch.empty_like(order_A)
        inverse_A[order_A] = torch.arange(order_A.numel(), device=order_A.device)
        y_KTD = y_AD.index_select(0, inverse_A).view(K, T, self.dim)
        return (y_KTD * weights_TK.t().unsqueeze(-1).to(y_KTD.dtype)).sum(dim=0)

    def forward_loop(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, weights_TK: torch.Tensor) -> torch.Tensor:
        out_TD = torch.zeros_like(x_TD)
        # unbind once: indexing w[e] inside the loop is several times slower under autograd.
        for expert, (w13_2FD, w2_DF) in enumerate(zip(self.w13.unbind(0), self.w2.unbind(0), strict=True)):
            token_idx, slot = torch.where(experts_TK == expert)
            if token_idx.numel() == 0:
                continue
            gate_NF, up_NF = F.linear(x_TD[token_idx], w13_2FD).chunk(2, dim=-1)
            y_ND = F.linear(F.silu(gate_NF) * up_NF, w2_DF)
            out_TD.index_add_(0, token_idx, y_ND * weights_TK[token_idx, slot, None].to(y_ND.dtype))
        return out_TD


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


def capacity_keep_mask(experts_TK: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """True for the assignments each expert accepts: its first `capacity` in priority order (first choices of all
    tokens in token order, then second choices, ...). Computed without a host sync."""
    T, K = experts_TK.shape
    onehot_AE = F.one_hot(experts_TK.t().reshape(-1), n_experts)
    position_A = (onehot_AE.cumsum(dim=0) * onehot_AE).sum(dim=-1) - 1
    return (position_A < capacity).view(K, T).t()
