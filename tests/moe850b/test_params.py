from oracle.moe850b.config import available_presets, load_config
from oracle.moe850b.model import OracleMoE
from oracle.moe850b.params import count_parameters
from tests.conftest import micro_config


def test_flagship_counts_meet_the_declared_architecture() -> None:
    config = load_config("oracle850b")
    count = count_parameters(config)
    assert abs(count.total - 850e9) / 850e9 <= 0.01
    assert 110e9 <= count.active <= 130e9
    assert (config.n_experts, config.top_k, config.context_length, config.vocab_size) == (64, 2, 8192, 65536)
    assert (count.total, count.active) == (config.param_total, config.param_active)


def test_every_preset_declares_what_the_code_computes() -> None:
    for name in available_presets():
        assert count_parameters(load_config(name)).mismatches() == [], name


def test_counts_equal_a_materialised_model() -> None:
    config = micro_config()
    model = OracleMoE(config)
    count = count_parameters(config)
    assert count.total == sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert count.active == count.total - routed + routed * config.top_k // config.n_experts
    assert sum(c["total"] for c in count.by_component.values()) == count.total


def test_tied_embeddings_are_counted_once() -> None:
    untied, tied = count_parameters(micro_config()), count_parameters(micro_config(tie_embeddings=True))
    assert untied.total - tied.total == 32 * 16
    assert "lm_head" not in tied.by_component


def test_a_declared_number_that_differs_is_reported() -> None:
    config = load_config("oracle-mini").model_copy(update={"param_total": 1})
    problems = count_parameters(config).mismatches()
    assert problems == [f"param_total: declared 1, computed {count_parameters(load_config('oracle-mini')).total}"]
