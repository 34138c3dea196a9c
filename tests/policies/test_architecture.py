"""The architecture policy against copies of this checkout's model code and configs (computed in a subprocess by
the copy's own code, as `oracle guards run --root` does for another checkout)."""

import json
import shutil
from pathlib import Path

import pytest

from guards.runner import run_gate
from policies.context import Environment
from policies.rule import Gate
from tests.policies.conftest import ids, only, write_tree

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = "oracle/moe850b/configs/oracle850b.moe.json"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "oracle", tmp_path / "oracle", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "policies" / "policies.toml", tmp_path / "policies.toml.tmp")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies.toml.tmp").rename(tmp_path / "policies" / "policies.toml")
    return tmp_path


def _arch(root: Path, gate: Gate = Gate.ci) -> list[str]:
    env = Environment(root / ".venv", Path("/usr"), {})
    result = run_gate(root, gate, environment_factory=lambda: env)
    assert result.errors == []
    return ids(result, "ARCH")


def _edit_config(root: Path, **changes: object) -> None:
    path = root / FLAGSHIP
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2))


def test_an_unchanged_copy_conforms(checkout: Path) -> None:
    assert _arch(checkout) == []


def test_an_invalid_flagship_config_is_found(checkout: Path) -> None:
    _edit_config(checkout, n_kv_heads=7)
    assert _arch(checkout) == ["ARCH001"]


def test_declared_counts_that_drift_from_the_code_are_found(checkout: Path) -> None:
    _edit_config(checkout, param_total=850_000_000_000)
    assert _arch(checkout) == ["ARCH002"]


def test_a_shape_that_misses_the_declared_targets_is_found(checkout: Path) -> None:
    _edit_config(checkout, n_layers=32)  # half the layers: ~425 B parameters, counts no longer declared either
    assert set(_arch(checkout)) == {"ARCH002"}


def test_a_router_built_with_another_top_k_is_found(checkout: Path) -> None:
    router = checkout / "oracle/moe850b/router.py"
    source = router.read_text()
    assert "self.n_experts, self.top_k = n_experts, top_k" in source
    router.write_text(source.replace("n_experts, top_k\n", "n_experts, 1\n", 1))
    env = Environment(checkout / ".venv", Path("/usr"), {})
    findings = only(run_gate(checkout, Gate.ci, environment_factory=lambda: env), "ARCH003")
    assert [f.message for f in findings] == ["layers 0-63 (64): router is missing or not 64 experts top-2"]


def test_a_config_declaring_other_experts_than_the_architecture_is_found(checkout: Path) -> None:
    _edit_config(checkout, top_k=4)
    assert "ARCH003" in _arch(checkout)


def test_numbers_that_disagree_across_files_are_found(checkout: Path) -> None:
    write_tree(
        checkout,
        {
            "oracle/tokenization/assets/tokenizer_config.json": '{"model_max_length": 4096, "vocab_size": 65536}\n',
            "oracle/moe850b/configs/oracle850b.yaml": "model:\n  n_experts: 64\n  top_k: 2\ndata:\n  seq_len: 16384\n",
        },
    )
    env = Environment(checkout / ".venv", Path("/usr"), {})
    findings = only(run_gate(checkout, Gate.ci, environment_factory=lambda: env), "ARCH004")
    assert sorted(f.message for f in findings) == [
        "tokenizer: model_max_length is 4096, the model's context_length is 8192",
        "training: seq_len is 16384, beyond the model's context_length 8192",
    ]


def test_numbers_that_agree_across_files_pass(checkout: Path) -> None:
    write_tree(
        checkout,
        {
            "oracle/tokenization/assets/tokenizer_config.json": '{"model_max_length": 8192, "vocab_size": 65536}\n',
            "oracle/moe850b/configs/oracle850b.yaml": "model:\n  n_experts: 64\n  top_k: 2\ndata:\n  seq_len: 4096\n",
        },
    )
    assert _arch(checkout) == []


def test_model_code_importing_a_foreign_package_is_found(checkout: Path) -> None:
    moe = checkout / "oracle/moe850b/moe.py"
    moe.write_text("import math\nfrom megatron.core.transformer.moe import moe_layer\n" + moe.read_text())
    result = run_gate(checkout, Gate.commit, ["oracle/moe850b/moe.py"])
    assert result.errors == []
    assert [f.message for f in only(result, "ARCH005")] == [
        "model code imports megatron.core.transformer.moe, which is not among the declared model packages"
    ]
    assert "the model cannot be built" in only(result, "ARCH003")[0].message  # it does not even import


def test_a_missing_flagship_config_is_found(checkout: Path) -> None:
    (checkout / FLAGSHIP).unlink()
    assert _arch(checkout) == ["ARCH001"]
