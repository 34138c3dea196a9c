"""The model card, config.json and generation_config.json: built from the code, parsed by huggingface_hub."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from huggingface_hub import ModelCard

from hub.card import (
    TOTAL_LABEL,
    config_from_hub_json,
    generation_config_json,
    model_config_json,
    render_card,
)
from hub.metadata import ASSETS_DIR, CardError, split_front_matter, validate_card_metadata
from oracle.moe850b.config import ConfigError, MoEConfig, available_presets, load_config
from oracle.moe850b.params import ParamCount, count_parameters
from oracle.tokenization.special_tokens import END_OF_TEXT, END_OF_TURN, PAD, SPECIAL_TOKENS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "f" * 64
REPO = "oracle-ai/oracle850b-moe"


@pytest.fixture(scope="session")
def flagship() -> MoEConfig:
    return load_config("oracle850b")


@pytest.fixture(scope="session")
def flagship_count(flagship: MoEConfig) -> ParamCount:
    return count_parameters(flagship)  # what `oracle params --config oracle850b` prints


@pytest.fixture(scope="module")
def card_without_weights() -> str:
    return render_card(repo_id=REPO, has_weights=False, has_tokenizer=False, commit=COMMIT, attestation_digest=DIGEST)


@pytest.fixture(scope="module")
def card_with_weights() -> str:
    return render_card(repo_id=REPO, has_weights=True, has_tokenizer=True, commit=COMMIT, attestation_digest=DIGEST)


def table(card: str, heading: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under `## heading`, keyed by their first cell."""
    section = card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[1:]}  # rows[0]: the header


def number(cell: str) -> int:
    return int(cell.strip("*").replace(",", ""))


def test_huggingface_hub_parses_the_card(card_without_weights: str) -> None:
    card = ModelCard(card_without_weights)
    assert yaml.safe_load(card.data.to_yaml()) == {
        "language": ["en", "ru"],
        "library_name": "oracle",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "tags": ["moe", "mixture-of-experts", "oracle", "oracle-moe", "pytorch"],
    }
    assert card.text.lstrip().startswith("# Oracle850B-MoE")


@pytest.mark.parametrize("fixture", ["card_without_weights", "card_with_weights"])
def test_card_metadata_passes_our_validation(fixture: str, request: pytest.FixtureRequest) -> None:
    text: str = request.getfixturevalue(fixture)
    metadata, _ = split_front_matter(text)
    assert validate_card_metadata(metadata, allowed_namespaces=["oracle-ai"]) == []
    front_matter = text.split("---\n")[1]
    assert "null" not in front_matter
    assert "None" not in front_matter
    assert "model-index" not in metadata


def test_architecture_table_is_the_config(card_without_weights: str, flagship: MoEConfig) -> None:
    rows = table(card_without_weights, "Architecture")
    expected = {
        "Layers": flagship.n_layers,
        "Hidden size": flagship.hidden_size,
        "Attention heads": flagship.n_heads,
        "Key/value heads (grouped-query attention)": flagship.n_kv_heads,
        "Head dimension": flagship.resolved_head_dim,
        "Context length (tokens)": flagship.context_length,
        "Vocabulary size": flagship.vocab_size,
        "Routed experts per layer": flagship.n_experts,
        "Experts per token (top-k)": flagship.top_k,
        "Routed expert FFN width": flagship.expert_hidden_size,
        "Shared expert FFN width": flagship.shared_expert_hidden_size,
        "RoPE theta": int(flagship.rope_theta),
    }
    assert {label: number(rows[label][0]) for label in expected} == expected
    assert float(rows["Capacity factor"][0]) == flagship.capacity_factor


def test_parameter_table_is_what_oracle_params_computes(card_without_weights: str, flagship_count: ParamCount) -> None:
    rows = table(card_without_weights, "Parameters")
    totals = {label: (number(total), number(active)) for label, (total, active) in rows.items()}
    assert totals.pop(TOTAL_LABEL) == (flagship_count.total, flagship_count.active)
    computed = sorted((c["total"], c["active"]) for c in flagship_count.by_component.values())
    assert sorted(totals.values()) == computed
    assert (flagship_count.total, flagship_count.active) == (
        flagship_count.config.param_total,
        flagship_count.config.param_active,
    )


def test_summary_rounds_the_computed_counts(card_without_weights: str, flagship_count: ParamCount) -> None:
    summary = card_without_weights.split("# Oracle850B-MoE\n", 1)[1].split("\n## ", 1)[0]
    assert f"{flagship_count.active / 1e9:.1f}B of the model's {flagship_count.total / 1e9:.1f}B parameters" in summary


def test_card_follows_the_config_it_is_given() -> None:
    mini = load_config("oracle-mini")
    text = render_card(
        config_name="oracle-mini",
        repo_id=REPO,
        has_weights=False,
        has_tokenizer=False,
        commit=COMMIT,
        attestation_digest=DIGEST,
    )
    rows = table(text, "Parameters")
    assert number(rows[TOTAL_LABEL][0]) == count_parameters(mini).total
    assert number(table(text, "Architecture")["Layers"][0]) == mini.n_layers


def test_card_without_weights_says_so_and_reports_no_results(card_without_weights: str) -> None:
    status = card_without_weights.split("## Status\n", 1)[1].split("\n## ", 1)[0]
    assert "**No weights are published yet.**" in status
    assert "No tokenizer is published yet." in status
    assert "safetensors" not in status
    assert "hf download" not in status
    evaluation = card_without_weights.split("## Evaluation\n", 1)[1].split("\n## ", 1)[0]
    assert evaluation.startswith("\nNone reported.")
    assert not re.search(r"\d", evaluation), "the evaluation section states no numbers"
    assert "model-index" not in split_front_matter(card_without_weights)[0]


def test_card_with_weights_is_for_transformers_and_points_at_provenance(card_with_weights: str) -> None:
    assert "No weights are published yet" not in card_with_weights
    assert "`provenance.json`" in card_with_weights
    assert "`tokenizer.json`" in card_with_weights
    assert split_front_matter(card_with_weights)[0]["library_name"] == "transformers"
    usage = card_with_weights.split("## How to use\n", 1)[1].split("\n## ", 1)[0]
    for line in (
        f'tokenizer = AutoTokenizer.from_pretrained("{REPO}")',
        f'model = AutoModelForCausalLM.from_pretrained("{REPO}")',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)",
    ):
        assert line in usage  # the snippet itself runs in tests/hub/test_publish.py, against a published export
    assert "Qwen2MoeForCausalLM" in card_with_weights
    assert "## How to use" not in render_card(
        repo_id=REPO, has_weights=False, has_tokenizer=True, commit=COMMIT, attestation_digest=DIGEST
    )


def test_governance_names_the_commit_and_the_attestation(card_without_weights: str) -> None:
    governance = card_without_weights.split("## Governance\n", 1)[1].split("\n## ", 1)[0]
    assert f"git commit `{COMMIT}`" in governance
    assert f"Attestation envelope sha256: `{DIGEST}`" in governance
    assert "`attestation.json`" in governance
    assert "oracle guards verify" in governance


def test_card_has_every_section(card_without_weights: str) -> None:
    headings = re.findall(r"^## (.+)$", card_without_weights, flags=re.MULTILINE)
    assert headings == [
        "Status",
        "Architecture",
        "Parameters",
        "Intended use",
        "Out-of-scope use",
        "Limitations and risks",
        "Training",
        "Evaluation",
        "Governance",
        "License",
    ]
    assert "\n\n\n" not in card_without_weights


def test_a_sha256_prefix_on_the_digest_is_accepted() -> None:
    text = render_card(
        config_name="oracle-mini",
        repo_id=REPO,
        has_weights=False,
        has_tokenizer=False,
        commit=COMMIT,
        attestation_digest=f"sha256:{DIGEST}",
    )
    assert f"`{DIGEST}`" in text


@pytest.mark.parametrize(
    ("field", "arguments"),
    [
        ("repo_id", {"repo_id": "oracle850b"}),
        ("commit", {"commit": "HEAD"}),
        ("commit", {"commit": COMMIT[:12]}),
        ("attestation_digest", {"attestation_digest": "abc"}),
    ],
)
def test_render_card_refuses_malformed_identifiers(field: str, arguments: dict[str, str]) -> None:
    values = {"repo_id": REPO, "commit": COMMIT, "attestation_digest": DIGEST, **arguments}
    with pytest.raises(CardError, match=f"^{field}: "):
        render_card(config_name="oracle-mini", has_weights=False, has_tokenizer=False, **values)


def test_render_card_refuses_an_unknown_config() -> None:
    with pytest.raises(ConfigError, match="unknown config"):
        render_card(
            config_name="nope",
            repo_id=REPO,
            has_weights=False,
            has_tokenizer=False,
            commit=COMMIT,
            attestation_digest=DIGEST,
        )


def test_generation_config_asset_is_what_the_code_generates() -> None:
    asset = json.loads((ASSETS_DIR / "generation_config.json").read_text(encoding="utf-8"))
    assert asset == generation_config_json("oracle850b")


def test_generation_config_uses_our_special_tokens_and_context(flagship: MoEConfig) -> None:
    generation = generation_config_json("oracle850b")
    assert generation["eos_token_id"] == [SPECIAL_TOKENS.index(END_OF_TEXT), SPECIAL_TOKENS.index(END_OF_TURN)]
    assert generation["bos_token_id"] == SPECIAL_TOKENS.index(END_OF_TEXT)
    assert generation["pad_token_id"] == SPECIAL_TOKENS.index(PAD)
    assert generation["max_length"] == flagship.context_length
    assert (generation["do_sample"], generation["temperature"], generation["top_p"]) == (True, 0.7, 0.9)


@pytest.mark.parametrize("name", available_presets())
def test_config_json_round_trips_to_the_preset(name: str) -> None:
    data = model_config_json(name)
    assert data["model_type"] == "oracle_moe"
    assert data["architectures"] == ["OracleMoEForCausalLM"]
    assert config_from_hub_json(data) == load_config(name)
    json.dumps(data)  # serialisable as it is


def test_config_json_mirrors_equal_the_config_fields(flagship: MoEConfig) -> None:
    data = model_config_json("oracle850b")
    assert data["max_position_embeddings"] == data["context_length"] == flagship.context_length
    assert data["num_experts"] == data["n_experts"] == flagship.n_experts
    assert data["num_experts_per_tok"] == data["top_k"] == flagship.top_k
    assert data["vocab_size"] == flagship.vocab_size


def test_a_config_json_whose_mirror_disagrees_is_refused() -> None:
    data = {**model_config_json("oracle-mini"), "num_experts_per_tok": 3}
    with pytest.raises(ConfigError, match="num_experts_per_tok is 3 but top_k is"):
        config_from_hub_json(data)


@pytest.mark.parametrize("name", ["default_system.txt", "default_intro.txt"])
def test_default_prompts_are_ours_and_plain(name: str) -> None:
    text = (ASSETS_DIR / name).read_text(encoding="utf-8")
    assert "Oracle" in text
    assert text.endswith("\n")
    assert "{" not in text
    assert "<|" not in text
