import json
from pathlib import Path

import pytest

from oracle.moe850b.config import ConfigError, available_presets, load_config
from tests.conftest import micro_config


def test_presets_are_found_by_name() -> None:
    assert {"oracle850b", "oracle-mini", "oracle-bench"} <= set(available_presets())
    assert load_config("oracle-mini").name == "oracle-mini"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_heads": 3}, "n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"top_k": 5}, "top_k"),
        ({"expert_hidden_size": 12}, "expert_hidden_size"),
        ({"head_dim": 5}, "head_dim"),
    ],
)
def test_inconsistent_shapes_are_rejected_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        micro_config(**overrides)


def _write(tmp_path: Path, **changes: object) -> Path:
    raw = json.loads(Path("oracle/moe850b/configs/oracle-mini.moe.json").read_text())
    raw.update(changes)
    path = tmp_path / "bad.moe.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def test_a_bad_value_in_a_file_names_the_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, top_k=99)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if '"top_k"' in text)
    assert f"{path}:{line}" in str(error.value)
    assert "top_k" in str(error.value)


def test_an_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_expertz"):
        load_config(_write(tmp_path, num_expertz=8))


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.moe.json"
    path.write_text('{\n  "name": "x",\n  "top_k": ,\n}\n')
    with pytest.raises(ConfigError, match=r"broken.moe.json:3:\d+: invalid JSON"):
        load_config(path)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="oracle-mini"):
        load_config("oracle9000")
