"""Training recipes and the DeepSpeed config generated from them."""

import itertools
from pathlib import Path

import pytest
import yaml

from oracle.moe850b.config import ConfigError, load_config
from oracle.train.config import available_recipes, load_train_config
from oracle.train.deepspeed_config import deepspeed_config, validate_deepspeed_config
from oracle.train.schedule import learning_rate


def _write(tmp_path: Path, name: str = "oracle-mini", **changes: dict[str, object]) -> Path:
    data = load_train_config(name).model_dump(mode="json")
    for section, values in changes.items():
        data[section] = {**data[section], **values} if isinstance(data[section], dict) else values
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_every_model_preset_has_a_recipe_of_the_same_name() -> None:
    assert available_recipes() == ["oracle-bench", "oracle-mini", "oracle850b"]
    for name in available_recipes():
        recipe = load_train_config(name)
        assert recipe.name == name
        assert load_config(recipe.model).name == name


def test_the_flagship_recipe_is_consistent_with_the_flagship_model() -> None:
    recipe = load_train_config("oracle850b")
    model = recipe.moe_config()
    assert recipe.data.seq_len <= model.context_length
    assert recipe.batch.global_batch == 1024 == 1 * 4 * 256
    assert recipe.parallelism.zero_stage == 3
    assert model.capacity_factor == recipe.moe.capacity_factor


def test_inconsistent_batch_arithmetic_is_rejected_naming_the_key_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, batch={"global_batch": 10})
    with pytest.raises(ConfigError) as error:
        load_train_config(path)
    message = str(error.value)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "global_batch" in text)
    assert f"{path}:{line}: batch.global_batch: 10 != micro_batch 2" in message


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"optimizer": {"learning_rate": 1.0}}, "optimizer.learning_rate"),  # a typo: unknown keys are refused
        ({"parallelism": {"zero_stage": 4}}, "parallelism.zero_stage"),
        ({"batch": {"micro_batch": 0}}, "batch.micro_batch"),
        ({"schedule": {"warmup_steps": 100}}, "warmup_steps"),
        ({"optimizer": {"min_lr": 1.0}}, "min_lr"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(tmp_path: Path, changes: dict[str, object], key: str) -> None:
    path = _write(tmp_path, **changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"{path}:\d+: .*{key.split('.')[-1]}"):
        load_train_config(path)


def test_sequence_length_beyond_the_model_context_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, data={"seq_len": 1000})
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+: data.seq_len: 1000 .* context_length 512"):
        load_train_config(path)


def test_expert_parallel_size_must_divide_ranks_and_experts(tmp_path: Path) -> None:
    path = _write(tmp_path, parallelism={"expert": 3, "data": 3}, batch={"global_batch": 12})
    with pytest.raises(ConfigError, match=r"parallelism\.expert: 3 does not divide the model's n_experts 8"):
        load_train_config(path)


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="oracle-bench, oracle-mini, oracle850b"):
        load_train_config("oracle-nano")


def test_generated_deepspeed_config_is_what_deepspeed_reads() -> None:
    recipe = load_train_config("oracle-bench")  # one data-parallel rank: DeepSpeed checks batches vs world size 1
    parsed = validate_deepspeed_config(deepspeed_config(recipe), recipe)
    # DeepSpeed ignores unknown keys silently: assert what it parsed, not what we wrote.
    assert parsed.zero_optimization_stage == 3
    assert parsed.bfloat16_config.enabled
    assert parsed.train_batch_size == recipe.batch.global_batch
    assert parsed.gradient_clipping == recipe.optimizer.grad_clip
    assert parsed.optimizer_name == "adamw"


def test_zero_stage_is_configurable(tmp_path: Path) -> None:
    recipe = load_train_config(_write(tmp_path, "oracle-bench", parallelism={"zero_stage": 2}, precision="fp32"))
    parsed = validate_deepspeed_config(deepspeed_config(recipe), recipe)
    assert parsed.zero_optimization_stage == 2
    assert not parsed.bfloat16_config.enabled


def test_a_misspelt_deepspeed_key_is_refused_not_ignored() -> None:
    recipe = load_train_config("oracle-bench")
    config = deepspeed_config(recipe)
    config["zero_optimisation"] = config.pop("zero_optimization")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['zero_optimisation'\]"):
        validate_deepspeed_config(config, recipe)
    del config["zero_optimisation"]
    with pytest.raises(ConfigError, match=r"zero_optimization\.stage is 0 after parsing, the recipe says 3"):
        validate_deepspeed_config(config, recipe)


def test_inconsistent_deepspeed_batch_sizes_are_rejected() -> None:
    recipe = load_train_config("oracle-bench")
    config = deepspeed_config(recipe) | {"train_batch_size": 7}
    with pytest.raises(ConfigError, match="train_batch_size is not equal to"):
        validate_deepspeed_config(config, recipe)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_minimum() -> None:
    rates = [learning_rate(s, lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14) for s in range(16)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert rates[9] == pytest.approx(0.55)  # half-way through the decay
    assert rates[14] == rates[15] == pytest.approx(0.1)
