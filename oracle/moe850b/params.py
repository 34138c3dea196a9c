"""Exact parameter counts, computed by building the model on the `meta` device (no memory, no hand formulas).

Active parameters per token: everything a token passes through — embeddings, attention, norms, router, shared
expert, LM head — plus top_k of the n_experts routed experts in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from oracle.moe850b.config import MoEConfig
from oracle.moe850b.model import OracleMoE

COMPONENTS = ("embedding", "attention", "norms", "router", "shared_expert", "routed_experts", "lm_head")


@dataclass(frozen=True)
class ParamCount:
    config: MoEConfig
    total: int
    active: int
    by_component: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "config": self.config.name,
            "total_params": self.total,
            "active_params": self.active,
            "num_experts": self.config.n_experts,
            "top_k": self.config.top_k,
            "n_layers": self.config.n_layers,
            "hidden_size": self.config.hidden_size,
            "context_length": self.config.context_length,
            "vocab_size": self.config.vocab_size,
            "by_component": self.by_component,
            "declared": {"total_params": self.config.param_total, "active_params": self.config.param_active},
        }

    def mismatches(self) -> list[str]:
        """What the config declares that the code does not compute (an undeclared number is a mismatch too)."""
        problems = []
        for key, declared, computed in (
            ("param_total", self.config.param_total, self.total),
            ("param_active", self.config.param_active, self.active),
        ):
            if declared != computed:
                problems.append(f"{key}: declared {declared}, computed {computed}")
        return problems


def component_of(parameter_name: str) -> str:
    if parameter_name.startswith("embed_tokens."):
        return "embedding"
    if parameter_name.startswith("lm_head."):
        return "lm_head"
    if ".attn." in parameter_name:
        return "attention"
    if ".moe.router." in parameter_name:
        return "router"
    if ".moe.shared_expert." in parameter_name:
        return "shared_expert"
    if ".moe.experts." in parameter_name:
        return "routed_experts"
    if parameter_name.endswith("norm.weight"):
        return "norms"
    raise ValueError(f"parameter {parameter_name!r} belongs to no known component; extend params.component_of")


def count_parameters(config: MoEConfig) -> ParamCount:
    with torch.device("meta"):
        model = OracleMoE(config)
    totals = dict.fromkeys(COMPONENTS, 0)
    # named_parameters() yields a tied weight once (under embed_tokens), so it is counted once.
    for name, parameter in model.named_parameters():
        totals[component_of(name)] += parameter.numel()
    per_expert = totals["routed_experts"] // config.n_experts
    actives = dict(totals, routed_experts=per_expert * config.top_k)
    by_component = {name: {"total": totals[name], "active": actives[name]} for name in COMPONENTS if totals[name]}
    return ParamCount(config, sum(totals.values()), sum(actives.values()), by_component)
