"""The policy floor: every setting has a direction of tightening, the trust root's floor is validated and merged
over the embedded one, and a loosening is told from a tightening."""

from __future__ import annotations

from pathlib import Path

import pytest

from guards.trust import TrustRoot
from policies.floor import EMBEDDED_SETTINGS, TIGHTENING, FloorError, PolicyFloor, floor_of, is_as_strict, leaves
from policies.settings import Settings


def _trust(floor: dict[str, object]) -> TrustRoot:
    return TrustRoot(source="org trust root", development=False, floor=floor)


def test_every_setting_has_a_direction_of_tightening() -> None:
    # a new Settings field without an entry in TIGHTENING could otherwise move freely: add its direction there
    assert {key for key, _ in leaves(Settings())} == set(TIGHTENING)


def test_an_empty_floor_is_the_embedded_floor() -> None:
    assert floor_of(_trust({})) == PolicyFloor()
    assert PolicyFloor().settings == EMBEDDED_SETTINGS


def test_a_partial_floor_keeps_the_embedded_values_it_does_not_name() -> None:
    floor = floor_of(_trust({"settings": {"scan": {"max_file_bytes": 5}}, "waivers": {"max_files": 2}}))
    assert (floor.settings.scan.max_file_bytes, floor.waivers.max_files) == (5, 2)
    assert floor.settings.local_train.entry_points == ["oracle_cli/app.py:train_command"]


def test_a_mapping_setting_of_the_floor_replaces_the_embedded_one_whole() -> None:
    floor = floor_of(_trust({"settings": {"architecture": {"consistency_files": {}}}}))
    assert floor.settings.architecture.consistency_files == {}


@pytest.mark.parametrize(
    ("floor", "field"),
    [
        ({"settings": {"scan": {"max_file_bytes": 0}}}, "settings.scan.max_file_bytes"),
        ({"waivers": {"critical_rules": ["NOPE001"]}}, "waivers.critical_rules"),
        ({"waivers": {"max_lifetime_days": "forever"}}, "waivers.max_lifetime_days"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_a_malformed_floor_is_an_error_naming_the_field(floor: dict[str, object], field: str) -> None:
    with pytest.raises(FloorError, match=rf"floor\.{field}: "):
        floor_of(_trust(floor))


@pytest.mark.parametrize(
    ("key", "loose", "tight", "floor_value"),
    [
        ("scan.exclude", ["*"], [], ["docs/*"]),
        ("scan.max_file_bytes", 1, 30_000_000, 20_000_000),
        ("scan.fail_on", "error", "warning", "warning"),
        ("local_train.allow_override", True, False, False),
        ("local_train.entry_points", [], ["a:f", "b:g"], ["a:f"]),
        ("external_weights.allowed_namespaces", ["oracle-ai", "meta-llama"], [], ["oracle-ai"]),
        ("external_weights.extra_loader_calls", [], ["fetch", "grab"], ["fetch"]),
        ("architecture.n_experts", 65, 64, 64),
        ("architecture.param_active_min", 100, 120, 110),
        ("architecture.consistency_files", {}, {"a": "x", "b": "y"}, {"a": "x"}),
        ("attestation.require_signature", False, True, True),
        ("cluster.max_nodes", 33, 8, 32),
        ("cluster.project", "other", "oracle", "oracle"),
    ],
)
def test_a_loosening_is_told_from_a_tightening(key: str, loose: object, tight: object, floor_value: object) -> None:
    assert not is_as_strict(key, loose, floor_value)
    assert is_as_strict(key, tight, floor_value)


def test_an_undeclared_setting_must_equal_the_floor() -> None:
    assert not is_as_strict("scan.something_new", 2, 1)
    assert is_as_strict("scan.something_new", 1, 1)


def test_a_missing_policies_toml_is_a_finding_only_in_a_tree_that_opted_in(tmp_path: Path) -> None:
    from policies.floor import check_settings

    foreign = check_settings(tmp_path, Settings(), PolicyFloor(), "embedded floor")
    assert foreign == []  # another repository running our hooks: no lock, nothing the floor could hold

    (tmp_path / "requirements.lock").write_text("")
    ours = check_settings(tmp_path, Settings(), PolicyFloor(), "embedded floor")
    assert [finding.rule_id for finding in ours] == ["TRU001"]
    assert "policies/policies.toml is missing" in ours[0].message
