"""ExpertParallelMoE on 2 CPU processes (gloo) against the single-process MoE applied to each rank's tokens.

One spawn runs every case (a spawn costs seconds); each rank writes its mismatches per case to a JSON file, and one
test per case reads them. Reference: MoE on each rank's tokens separately, loss_r = Σ y_r·g_r + aux terms. Expert
weight gradients on rank r must equal Σ_r' ∂loss_r'/∂(rank r's slice); router and shared-expert gradients must equal
∂loss_r/∂θ alone (reducing those across ranks is data parallelism's job, not the layer's).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oracle.moe850b.config import MoEConfig
from oracle.moe850b.moe import MoE, MoEOutput
from oracle.train import expert_parallel
from oracle.train.expert_parallel import ExpertParallelMoE
from tests.conftest import micro_config

WORLD = 2
TOKEN_SHAPES = [(2, 8), (3, 5)]  # (B, S) per rank: the ranks need not hold the same number of tokens
D = 32

# name: (config overrides, forced routing). Forced routing sets the gate weights and input feature 0 so that
# "rank0": every token of both ranks picks experts of rank 0 (rank 1 receives nothing, nobody sends to rank 1);
# "own": every rank's tokens pick its own experts (no rows cross between the ranks at all).
CASES: dict[str, tuple[dict[str, object], str | None]] = {
    "top2_shared": ({}, None),
    "top2_capacity_no_shared": ({"capacity_factor": 0.5, "shared_expert_hidden_size": 0}, None),
    "top1_capacity_8_experts": ({"n_experts": 8, "top_k": 1, "capacity_factor": 1.0}, None),
    "top2_8_experts_grouped_gemm_capacity": ({"n_experts": 8, "moe_impl": "grouped", "capacity_factor": 1.25}, None),
    "all_tokens_to_rank0": ({}, "rank0"),
    "all_tokens_to_rank0_capacity_no_shared": ({"capacity_factor": 1.0, "shared_expert_hidden_size": 0}, "rank0"),
    "all_tokens_to_rank0_8_experts_grouped_gemm": ({"n_experts": 8, "moe_impl": "grouped"}, "rank0"),
    "no_rows_cross_between_ranks": ({}, "own"),
}
OTHER_CHECKS = ["indivisible_n_experts_raises", "from_config_builds_the_local_shard", "no_grad_forward"]


def _config(**overrides: object) -> MoEConfig:
    fields: dict[str, object] = {
        "hidden_size": D,
        "expert_hidden_size": 16,
        "shared_expert_hidden_size": 16,
        "n_experts": 4,
        "top_k": 2,
        "moe_impl": "loop",
    }
    fields.update(overrides)
    return micro_config(**fields)


def _loss(out: MoEOutput, g_BSD: torch.Tensor) -> torch.Tensor:
    return (out.y_BSD * g_BSD).sum() + 0.1 * out.load_balance_loss + 0.01 * out.z_loss


def _inputs(seed: int, forced: str | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every rank's inputs and output cotangents (each process builds all of them, for the reference)."""
    generator = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, S, D, generator=generator) for B, S in TOKEN_SHAPES]
    gs = [torch.randn(B, S, D, generator=generator) for B, S in TOKEN_SHAPES]
    for rank, x in enumerate(xs):
        if forced is not None:
            sign = -1.0 if forced == "own" and rank == 1 else 1.0
            x[..., 0] = sign * (x[..., 0].abs() + 2.0)
    return xs, gs


def _force_gate(moe: MoE) -> None:
    """Experts of rank 0 score +4·x[0], those of rank 1 −4·x[0]; the other features barely count."""
    weight = moe.router.gate.weight
    half = moe.n_experts // WORLD
    with torch.no_grad():
        weight.mul_(0.01)
        weight[:half, 0] = 4.0
        weight[half:, 0] = -4.0


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for name, p in module.named_parameters()
    }


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def close(self, label: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
        try:
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
        except AssertionError as exc:
            self.errors.append(f"{label}: {exc}")

    def true(self, label: str, condition: bool) -> None:
        if not condition:
            self.errors.append(f"{label}: not true")


def _run_case(index: int, overrides: dict[str, object], forced: str | None, rank: int) -> list[str]:
    config = _config(**overrides)
    torch.manual_seed(0)
    moe = MoE(config)
    if forced is not None:
        _force_gate(moe)
    ep = ExpertParallelMoE.from_moe(moe)
    xs, gs = _inputs(index, forced)

    reference = []
    for x_ref, g_ref in zip(xs, gs, strict=True):
        moe.zero_grad(set_to_none=True)
        x_ref = x_ref.clone().requires_grad_(True)
        out_ref = moe(x_ref)
        _loss(out_ref, g_ref).backward()
        assert x_ref.grad is not None
        reference.append((out_ref, x_ref.grad, _grads(moe)))

    x = xs[rank].clone().requires_grad_(True)
    sent_rows: list[int] = []
    all_to_all = expert_parallel.all_to_all

    def spy(
        x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: dist.ProcessGroup | None = None
    ) -> torch.Tensor:
        sent_rows.append(sum(input_splits))
        return all_to_all(x, output_splits, input_splits, group)

    with mock.patch.object(expert_parallel, "all_to_all", spy):
        out = ep(x)
    _loss(out, gs[rank]).backward()

    check = _Checker()
    # dispatch (and return) carry the kept assignments only
    kept = x.shape[0] * x.shape[1] * config.top_k - int(out.stats.dropped_assignments)
    check.true(f"rows sent {sent_rows} == kept assignments {kept}", sent_rows[0] == kept)
    out_ref, x_grad_ref, grads_ref = reference[rank]
    check.close("y_BSD", out.y_BSD, out_ref.y_BSD)
    check.close("load_balance_loss", out.load_balance_loss, out_ref.load_balance_loss)
    check.close("z_loss", out.z_loss, out_ref.z_loss)
    for field in ("tokens_per_expert_E", "dropped_assignments", "dropped_tokens"):
        check.close(f"stats.{field}", getattr(out.stats, field), getattr(out_ref.stats, field))
    assert x.grad is not None
    check.close("grad of x", x.grad, x_grad_ref)
    first, last = ep.first_expert, ep.first_expert + ep.n_local_experts
    grads = _grads(ep)
    check.true("same parameter names as MoE", grads.keys() == grads_ref.keys())
    for name, grad in grads.items():
        if name.startswith("experts."):  # every rank's tokens reach this rank's experts
            expected = sum(ref_grads[name][first:last] for _, _, ref_grads in reference)
        else:  # replicated: this rank's tokens only
            expected = grads_ref[name]
        check.close(f"grad of {name}", grad, torch.as_tensor(expected))

    # the case exercises what its name says
    counts = [ref_out.stats.tokens_per_expert_E for ref_out, _, _ in reference]
    half = config.n_experts // WORLD
    if forced == "rank0":
        check.true("no token routed to rank 1", all(int(c[half:].sum()) == 0 for c in counts))
    if forced == "own":
        check.true("rank 0's tokens stay on rank 0", int(counts[0][half:].sum()) == 0)
        check.true("rank 1's tokens stay on rank 1", int(counts[1][:half].sum()) == 0)
    if forced is None:
        check.true("both ranks send to both ranks", all(bool((c.view(WORLD, -1).sum(1) > 0).all()) for c in counts))
    if config.capacity_factor is not None and config.capacity_factor <= 1.0:
        check.true("capacity drops something", any(int(r[0].stats.dropped_assignments) > 0 for r in reference))
    if config.shared_expert_hidden_size == 0:
        check.true("no shared expert", ep.shared_expert is None)
    return check.errors


def _other_checks(rank: int) -> dict[str, list[str]]:
    results: dict[str, list[str]] = {}

    check = _Checker()
    try:
        ExpertParallelMoE.from_moe(MoE(_config(n_experts=3, top_k=1)))
        check.errors.append("no ValueError for 3 experts over 2 ranks")
    except ValueError as exc:
        check.true(f"message names n_experts and the group size: {exc}", "n_experts: 3" in str(exc) and "2" in str(exc))
    results["indivisible_n_experts_raises"] = check.errors

    check = _Checker()
    config = _config(n_experts=8)
    ep = ExpertParallelMoE.from_config(config)
    check.true("4 local experts from 4·rank", (ep.n_local_experts, ep.first_expert) == (4, 4 * rank))
    check.true("w13 is (L, 2F, D)", tuple(ep.experts.w13.shape) == (4, 32, D))
    check.true("w2 is (L, D, F)", tuple(ep.experts.w2.shape) == (4, D, 16))
    x = torch.randn(*TOKEN_SHAPES[rank], D)
    out = ep(x)
    out.y_BSD.sum().backward()
    check.true("runs forward and backward", out.y_BSD.shape == x.shape and ep.experts.w13.grad is not None)
    results["from_config_builds_the_local_shard"] = check.errors

    check = _Checker()
    torch.manual_seed(0)
    moe = MoE(_config(capacity_factor=1.0))
    ep = ExpertParallelMoE.from_moe(moe)
    xs, _ = _inputs(99, None)
    with torch.no_grad():
        check.close("y_BSD", ep(xs[rank]).y_BSD, moe(xs[rank]).y_BSD)
    results["no_grad_forward"] = check.errors
    return results


def _worker(rank: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/store", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        results = {
            name: _run_case(index, overrides, forced, rank)
            for index, (name, (overrides, forced)) in enumerate(CASES.items())
        }
        results.update(_other_checks(rank))
        Path(directory, f"result_{rank}.json").write_text(json.dumps(results), encoding="utf-8")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, list[str]]]:
    directory = tmp_path_factory.mktemp("expert_parallel")
    mp.spawn(_worker, args=(str(directory),), nprocs=WORLD, join=True)
    return [json.loads((directory / f"result_{rank}.json").read_text(encoding="utf-8")) for rank in range(WORLD)]


@pytest.mark.parametrize("case", [*CASES, *OTHER_CHECKS])
def test_expert_parallel_matches_single_process_moe(case: str, results: list[dict[str, list[str]]]) -> None:
    failures = [f"rank {rank}: {error}" for rank, result in enumerate(results) for error in result[case]]
    assert not failures, "\n".join(failures)
