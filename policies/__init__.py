"""Policy modules: what is allowed. One module per policy; the catalog is generated from their rules."""

from __future__ import annotations

from policies import architecture, coverage, external_weights, floor, gate_checks, local_train, venv
from policies.rule import Policy, Rule

# external_weights runs before local_train: its content sniffing overlaps the ripgrep pass both of them read.
# coverage runs last: it reports what the policies before it could not read, decode or parse.
ALL_POLICIES: tuple[Policy, ...] = (
    venv.POLICY,
    external_weights.POLICY,
    local_train.POLICY,
    architecture.POLICY,
    coverage.POLICY,
)


def catalog() -> list[Rule]:
    # The floor's rules judge the gate's own inputs (settings, waivers): the runner checks them, not a policy pass.
    # The publish and submit gates' own checks (PUB, SUB) judge the staged files and the rendered job spec.
    return [rule for policy in ALL_POLICIES for rule in policy.rules] + list(floor.RULES) + list(gate_checks.RULES)


def find_rule(rule_id: str) -> Rule | None:
    return next((rule for rule in catalog() if rule.id == rule_id.upper()), None)
