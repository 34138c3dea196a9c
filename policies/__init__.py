"""Policy modules: what is allowed. One module per policy; the catalog is generated from their rules."""

from __future__ import annotations

from policies import architecture, external_weights, local_train, venv
from policies.rule import Policy, Rule

ALL_POLICIES: tuple[Policy, ...] = (venv.POLICY, local_train.POLICY, external_weights.POLICY, architecture.POLICY)


def catalog() -> list[Rule]:
    return [rule for policy in ALL_POLICIES for rule in policy.rules]


def find_rule(rule_id: str) -> Rule | None:
    return next((rule for rule in catalog() if rule.id == rule_id.upper()), None)
