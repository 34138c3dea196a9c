import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from oracle_cli.app import app

runner = CliRunner()


def test_params_json_has_the_documented_fields() -> None:
    result = runner.invoke(app, ["params", "--config", "oracle850b", "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for key in ("total_params", "active_params", "num_experts", "top_k", "context_length", "vocab_size"):
        assert key in payload
    assert (payload["num_experts"], payload["top_k"], payload["context_length"], payload["vocab_size"]) == (
        64,
        2,
        8192,
        65536,
    )
    assert payload["total_params"] == payload["declared"]["total_params"]
    assert sum(part["active"] for part in payload["by_component"].values()) == payload["active_params"]


def test_params_check_passes_for_every_preset() -> None:
    result = runner.invoke(app, ["params", "--check"])
    assert result.exit_code == 0, result.output
    assert "oracle850b" in result.stdout
    assert "oracle-mini" in result.stdout


def test_params_check_exits_1_when_a_declared_number_drifts(tmp_path: Path) -> None:
    raw = json.loads(Path("oracle/moe850b/configs/oracle-mini.moe.json").read_text())
    raw["param_active"] += 1
    path = tmp_path / "drifted.moe.json"
    path.write_text(json.dumps(raw))
    result = runner.invoke(app, ["params", "--config", str(path), "--check", "--format", "json"])
    assert result.exit_code == 1
    assert "param_active: declared" in result.stderr
    assert json.loads(result.stdout)["check"]["ok"] is False


def test_params_check_fails_when_a_number_is_not_declared(tmp_path: Path) -> None:
    raw = json.loads(Path("oracle/moe850b/configs/oracle-mini.moe.json").read_text())
    del raw["param_total"]
    path = tmp_path / "undeclared.moe.json"
    path.write_text(json.dumps(raw))
    assert runner.invoke(app, ["params", "--config", str(path), "--check"]).exit_code == 1


def test_a_bad_config_is_a_usage_error_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.moe.json"
    path.write_text('{"name": "x"}')
    result = runner.invoke(app, ["params", "--config", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.stderr
    assert "vocab_size" in result.stderr


def test_the_console_script_is_installed_and_prints_help() -> None:
    oracle = Path(sys.executable).parent / "oracle"
    result = subprocess.run([str(oracle), "params", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "oracle params --config oracle850b --format json" in result.stdout


def test_the_console_script_reports_an_error_in_one_line_with_its_code() -> None:
    oracle = Path(sys.executable).parent / "oracle"
    env = {key: value for key, value in os.environ.items() if key != "ORACLE_DEBUG"}
    done = subprocess.run([str(oracle), "guards", "explain", "NOPE1"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: no rule 'NOPE1'; `oracle guards rules` lists them"]
