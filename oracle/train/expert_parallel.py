"""Expert parallelism for the MoE layer: the routed experts sharded over a process group, tokens moved by all-to-all.

Shapes: B batch, S sequence, T = B·S tokens on this rank, D model width, F expert FFN width, K experts per token,
A = T·K assignments, E experts, R ranks in the expert-parallel group, L = E/R experts per rank, M assignment rows this
rank sends, N rows it receives.

Rank r holds experts [r·L, (r+1)·L) as a GroupedExperts(L, D, F): its `w13` (L, 2F, D) and `w2` (L, D, F) are that
slice of the single-process layer's stacked weights. The router and the shared expert are replicated on every rank.

forward, on each rank's own tokens (any number of them; ranks may differ):
1. route exactly like `MoE`, capacity dropping applied to this rank's tokens; dropped assignments are not sent;
2. sort the kept (token, k) assignments by expert id, which also groups them by destination rank;
3. exchange the per-expert counts (all_to_all_single of an int64 (E,) tensor: every rank receives L counts from
   each rank); they give the split sizes and the local expert of every received row, so no index exchange is needed;
4. all-to-all the token rows (uneven splits, autograd-aware), run the local experts on them grouped by expert, and
   all-to-all the results back with the reverse splits;
5. un-permute and combine with the routing weights here, after the return trip, so their gradient stays on this
   rank; add the shared expert.

The split sizes must be on the host: each forward syncs once, after the count exchange. Every rank of the group must
call forward (and backward) together, also when it sends or receives nothing.

Gradients: an expert's weights on rank r receive the gradient of every rank's tokens routed to it (through the
backward all-to-all), exactly the single-process gradient of the summed per-rank losses. The router and the shared
expert see only this rank's tokens: like every replicated parameter, reducing their gradients across ranks is the
data-parallel wrapper's job, not this layer's. The same holds for the bias-balancing buffer: all-reduce
tokens_per_expert_E before `router.update_bias`, or the replicas drift apart.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from oracle.core.mlp import SwiGLU
from oracle.moe850b.config import MoEConfig
from oracle.moe850b.experts import (
    GroupedExperts,
    grouped_mm_preferred,
    grouped_mm_supported,
)
from oracle.moe850b.moe import MoE, MoEOutput, route_with_capacity
from oracle.moe850b.router import TopKRouter, count_assignments

__all__ = ["ExpertParallelMoE", "all_to_all"]


def _all_to_all_raw(
    x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: dist.ProcessGroup | None
) -> torch.Tensor:
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    # torch.distributed.nn.functional.all_to_all_single does the same but is deprecated (a FutureWarning per call).
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        return _all_to_all_raw(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _all_to_all_raw(grad_out, ctx.input_splits, ctx.output_splits, ctx.group), None, None, None


def all_to_all(
    x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """all_to_all_single along dim 0 with uneven splits; its backward is the all-to-all with the splits swapped."""
    out: torch.Tensor = _AllToAll.apply(x, output_splits, input_splits, group)  # type: ignore[no-untyped-call]
    return out


def _local_expert_range(n_experts: int, group: dist.ProcessGroup | None) -> tuple[int, int]:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if n_experts % size:
        raise ValueError(
            f"n_experts: {n_experts} is not divisible by the expert-parallel group size {size}; "
            "choose a group size that divides the number of experts"
        )
    n_local = n_experts // size
    return rank * n_local, (rank + 1) * n_local


def _inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


class ExpertParallelMoE(nn.Module):
    """`MoE` with the routed experts sharded over `group` (None: the default group). Build with `from_config` or
    `from_moe`; the constructor takes this rank's parts. Attribute names match `MoE` (router, experts,
    shared_expert)."""

    def __init__(
        self,
        router: TopKRouter,
        local_experts: GroupedExperts,
        shared_expert: SwiGLU | None = None,
        *,
        capacity_factor: float | None = None,
        impl: str = "auto",
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.group = group
        self.ep_size, self.ep_rank = dist.get_world_size(group), dist.get_rank(group)
        self.n_experts, self.top_k = router.n_experts, router.top_k
        first, last = _local_expert_range(self.n_experts, group)
        if local_experts.n_experts != last - first:
            raise ValueError(
                f"local_experts: {local_experts.n_experts} experts, but n_experts {self.n_experts} over the group "
                f"size {self.ep_size} is {last - first} per rank"
            )
        self.first_expert, self.n_local_experts = first, last - first
        self.capacity_factor, self.impl = capacity_factor, impl
        self.router, self.experts, self.shared_expert = router, local_experts, shared_expert

    @classmethod
    def from_config(cls, config: MoEConfig, group: dist.ProcessGroup | None = None) -> ExpertParallelMoE:
        """Freshly initialised parts. The replicated router and shared expert must be equal on every rank: seed
        every rank alike (which also makes the ranks' expert shards alike: re-initialise or load those) or
        broadcast them."""
        first, last = _local_expert_range(config.n_experts, group)
        router = TopKRouter(
            config.hidden_size,
            config.n_experts,
            config.top_k,
            bias_balancing=config.bias_balancing,
            bias_update_rate=config.bias_update_rate,
        )
        experts = GroupedExperts(last - first, config.hidden_size, config.expert_hidden_size)
        shared = (
            SwiGLU(config.hidden_size, config.shared_expert_hidden_size) if config.shared_expert_hidden_size else None
        )
        return cls(router, experts, shared, capacity_factor=config.capacity_factor, impl=config.moe_impl, group=group)

    @classmethod
    def from_moe(cls, moe: MoE, group: dist.ProcessGroup | None = None) -> ExpertParallelMoE:
        """This rank's shard of a single-process layer (copies; `moe` is left as it is). `moe` must be the same on
        every rank."""
        first, last = _local_expert_range(moe.n_experts, group)
        full = moe.experts
        experts = GroupedExperts(last - first, full.dim, full.hidden_dim).to(device=full.w13.device)
        experts.w13 = nn.Parameter(full.w13.detach()[first:last].clone())
        experts.w2 = nn.Parameter(full.w2.detach()[first:last].clone())
        return cls(
            copy.deepcopy(moe.router),
            experts,
            copy.deepcopy(moe.shared_expert),
            capacity_factor=moe.capacity_factor,
            impl=moe.impl,
            group=group,
        )

    def forward(self, x_BSD: torch.Tensor) -> MoEOutput:
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        r = route_with_capacity(self.router, x_TD, self.n_experts, self.top_k, self.capacity_factor)
        y_TD = self._routed(x_TD, r.experts_TK, r.weights_TK, r.keep_TK)
        if self.shared_expert is not None:
            y_TD = y_TD + self.shared_expert(x_TD)
        return MoEOutput(y_TD.view(B, S, D), r.load_balance_loss, r.z_loss, r.stats)

    def _routed(
        self, x_TD: torch.Tensor, experts_TK: torch.Tensor, weights_TK: torch.Tensor, keep_TK: torch.Tensor | None
    ) -> torch.Tensor:
        T, K = experts_TK.shape
        R, L, E = self.ep_size, self.n_local_experts, self.n_experts
        experts_A = experts_TK.t().reshape(-1)  # k-major: assignment a = k·T + t
        if keep_TK is not None:  # dropped assignments sort last, under the id E, and are not sent
            experts_A = torch.where(keep_TK.t().reshape(-1), experts_A, E)
        order_A = torch.argsort(experts_A, stable=True)
        send_counts_E = count_assignments(experts_A, E + 1)[:E]
        recv_counts_RL = torch.empty_like(send_counts_E)
        dist.all_to_all_single(recv_counts_RL, send_counts_E, group=self.group)
        send_E, recv_RL = torch.stack([send_counts_E, recv_counts_RL]).tolist()  # the host sync
        send_splits = [sum(send_E[r * L : (r + 1) * L]) for r in range(R)]
        recv_splits = [sum(recv_RL[r * L : (r + 1) * L]) for r in range(R)]
        counts_L = [sum(recv_RL[r * L + e] for r in range(R)) for e in range(L)]

        M = sum(send_splits)
        x_MD = x_TD.index_select(0, order_A[:M] % T)
        x_ND = all_to_all(x_MD, recv_splits, send_splits, self.group)
        # Rows arrive grouped by source rank, then by local expert; regroup them by local expert.
        local_N = torch.arange(L, device=x_ND.device).repeat(R).repeat_interleave(recv_counts_RL)
        order_N = torch.argsort(local_N, stable=True)
        y_ND = self._run_local_experts(x_ND.index_select(0, order_N), counts_L)
        y_ND = y_ND.index_select(0, _inverse_permutation(order_N))
        y_MD = all_to_all(y_ND, send_splits, recv_splits, self.group)

        y_AD = torch.cat([y_MD, y_MD.new_zeros(T * K - M, y_MD.shape[1])])
        y_KTD = y_AD.index_select(0, _inverse_permutation(order_A)).view(K, T, -1)
        return (y_KTD * weights_TK.t().unsqueeze(-1).to(y_KTD.dtype)).sum(dim=0)

    def _run_local_experts(self, x_ND: torch.Tensor, counts_L: list[int]) -> torch.Tensor:
        """SwiGLU of each local expert over its contiguous group of rows. Empty groups still go through the matmuls:
        that keeps the output attached to the autograd graph on a rank that received nothing, whose backward must
        still join the all-to-all."""
        w13_L2FD, w2_LDF = self.experts.w13, self.experts.w2
        grouped = grouped_mm_preferred(x_ND) if self.impl == "auto" else self.impl == "grouped"
        if grouped and grouped_mm_supported(x_ND) and x_ND.shape[0] > 0:
            offsets_L = torch.tensor(counts_L, device=x_ND.device).cumsum(0).to(torch.int32)
            gate_NF, up_NF = torch._grouped_mm(x_ND, w13_L2FD.transpose(-2, -1), offs=offsets_L).chunk(2, dim=-1)
            return torch._grouped_mm(F.silu(gate_NF) * up_NF, w2_LDF.transpose(-2, -1), offs=offsets_L)
        ys: list[torch.Tensor] = []
        for x_nD, w13_2FD, w2_DF in zip(torch.split(x_ND, counts_L), w13_L2FD.unbind(0), w2_LDF.unbind(0), strict=True):
            gate_nF, up_nF = F.linear(x_nD, w13_2FD).chunk(2, dim=-1)
            ys.append(F.linear(F.silu(gate_nF) * up_nF, w2_DF))
        return torch.cat(ys)
