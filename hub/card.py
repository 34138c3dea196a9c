"""The files that describe the model on the Hub, built from the code: the model card (README.md), config.json and
generation_config.json.

Every number in them is read from the model config (`oracle.moe850b.config.load_config`) or computed by the same
function as `oracle params` (`oracle.moe850b.params.count_parameters`, on the meta device); none is typed here.
huggingface_hub is imported inside the functions: `HF_ENDPOINT` is read when huggingface_hub is first imported, and
importing this module must not fix it before the publish code sets it. Everything here works offline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from hub.metadata import REPO_ID, CardError, validate_card_metadata
from oracle.moe850b.config import (
    FLAGSHIP,
    HUB_CONFIG_MIRRORS,
    ConfigError,
    MoEConfig,
    load_config,
    without_hub_mirrors,
)
from oracle.moe850b.params import ParamCount, count_parameters
from oracle.tokenization.special_tokens import END_OF_TEXT, END_OF_TURN, PAD, SPECIAL_TOKENS

TEMPLATE_PATH = Path(__file__).parent / "templates" / "modelcard.md.j2"

LICENSE = "apache-2.0"  # the project's license (pyproject.toml: Apache-2.0)
LICENSE_NAME = "Apache License 2.0"
LANGUAGES = ["en", "ru"]  # what the data pipeline keeps (`oracle data run --languages en,ru`)
LANGUAGE_NAMES = "English and Russian"
# The Hub reads library_name to offer a "use this model" snippet. With weights the repository holds the transformers
# export (Qwen2MoeForCausalLM, no remote code), so it is transformers, and the card's own snippet is the one a user
# runs; without weights its config.json is ours (`oracle_moe`), which transformers cannot load, so "oracle" names
# what reads it. The "pytorch" tag keeps the Hub's framework filter.
LIBRARY_NAME = "oracle"
LIBRARY_NAME_WITH_WEIGHTS = "transformers"
EXPORT_ARCHITECTURE = "Qwen2MoeForCausalLM"
EXPORT_MODEL_TYPE = "qwen2_moe"
# The prompt of the card's usage snippet.
SNIPPET_PROMPT = "What is a mixture-of-experts language model?"
SNIPPET_NEW_TOKENS = 64
PIPELINE_TAG = "text-generation"
TAGS = ["moe", "mixture-of-experts", "oracle", "oracle-moe", "pytorch"]

MODEL_TYPE = "oracle_moe"
ARCHITECTURES = ["OracleMoEForCausalLM"]
# config.json keys other tools read (transformers' names) -> the MoEConfig field each one mirrors, value for value.
CONFIG_MIRRORS = HUB_CONFIG_MIRRORS

# Sampling defaults of generation_config.json.
TEMPERATURE = 0.7
TOP_P = 0.9

_DISPLAY_NAMES = {FLAGSHIP: "Oracle850B-MoE"}
_COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # sha1, or sha256 object format
_BLANK_RUNS = re.compile(r"\n{3,}")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_COMPONENT_LABELS = {
    "embedding": "Token embedding",
    "attention": "Attention (all layers)",
    "norms": "RMSNorm weights",
    "router": "Routers (all layers)",
    "shared_expert": "Shared expert (all layers)",
    "routed_experts": "Routed experts (all layers)",
    "lm_head": "LM head",
}
TOTAL_LABEL = "**Total**"


def token_id(token: str) -> int:
    """The id of a special token: they take the first ids of the vocabulary, in SPECIAL_TOKENS order."""
    return SPECIAL_TOKENS.index(token)


def model_config_json(config_name: str = FLAGSHIP) -> dict[str, object]:
    """config.json for the Hub: every MoEConfig field under its own name, plus `architectures` and the mirrors."""
    config = load_config(config_name)
    fields = config.model_dump(mode="json")
    mirrors = {key: fields[field] for key, field in CONFIG_MIRRORS.items()}
    return {"architectures": list(ARCHITECTURES), "model_type": MODEL_TYPE, **fields, **mirrors}


def config_from_hub_json(data: Mapping[str, object]) -> MoEConfig:
    """The MoEConfig of a Hub config.json: Hub-only keys are checked against the fields they mirror, then dropped."""
    return MoEConfig.model_validate(without_hub_mirrors(dict(data)))


def generation_config_json(config_name: str = FLAGSHIP) -> dict[str, object]:
    """generation_config.json: special token ids, the context as max_length, and the sampling defaults.

    Generation stops at `<|endoftext|>` (end of a document) or `<|end|>` (end of a chat turn). There is no separate
    BOS token: training puts `<|endoftext|>` between documents, so it is what precedes a new one.
    """
    config = load_config(config_name)
    return {
        "bos_token_id": token_id(END_OF_TEXT),
        "eos_token_id": [token_id(END_OF_TEXT), token_id(END_OF_TURN)],
        "pad_token_id": token_id(PAD),
        "max_length": config.context_length,
        "do_sample": True,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
    }


def render_card(
    *,
    config_name: str = FLAGSHIP,
    repo_id: str,
    has_weights: bool,
    has_tokenizer: bool,
    commit: str,
    attestation_digest: str,
) -> str:
    """The model card (README.md) of `config_name` as published to `repo_id` from `commit`. `has_weights`: the
    repository holds the transformers export (`oracle export --format hf`), and the card shows how to load it.

    Raises CardError for a malformed repo id, commit or digest, or if the card's own metadata fails validation;
    ConfigError for an unknown config.
    """
    from huggingface_hub import ModelCard, ModelCardData

    digest = attestation_digest.removeprefix("sha256:")
    if not REPO_ID.match(repo_id):
        raise CardError(f"repo_id: {repo_id!r} is not a Hub repo id; use namespace/name, e.g. oracle-ai/oracle850b-moe")
    if not _COMMIT.match(commit):
        raise CardError(f"commit: {commit!r} is not a full git commit id; pass the 40-hex id (git rev-parse HEAD)")
    if not _DIGEST.match(digest):
        raise CardError(f"attestation_digest: {attestation_digest!r} is not a sha256 hex digest (64 hex characters)")
    config = load_config(config_name)
    count = count_parameters(config)
    card_data = ModelCardData(
        license=LICENSE,
        language=list(LANGUAGES),
        library_name=LIBRARY_NAME_WITH_WEIGHTS if has_weights else LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=list(TAGS),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=_DISPLAY_NAMES.get(config.name, f"Oracle-MoE {config.name}"),
        config_name=config.name,
        repo_id=repo_id,
        has_weights=has_weights,
        has_tokenizer=has_tokenizer,
        commit=commit,
        commit_short=commit[:12],
        attestation_digest=digest,
        language_names=LANGUAGE_NAMES,
        license_name=LICENSE_NAME,
        files=_files(has_weights=has_weights, has_tokenizer=has_tokenizer),
        architecture=EXPORT_ARCHITECTURE,
        prompt=SNIPPET_PROMPT,
        max_new_tokens=SNIPPET_NEW_TOKENS,
        arch=_architecture(config),
        params=_parameters(count),
        recipe=_recipe(config.name),
        data=_data_pipeline(),
    )
    problems = validate_card_metadata(card.data.to_dict(), allowed_namespaces=[])
    if problems:  # our own metadata must pass the gate it is checked by
        raise CardError("the generated card's metadata is invalid: " + "; ".join(problems))
    # Optional template sections leave runs of blank lines; Markdown needs one.
    return _BLANK_RUNS.sub("\n\n", str(card)).rstrip("\n") + "\n"


def _number(value: int) -> str:
    return f"{value:,}"


def _billions(value: int) -> str:
    return f"{value / 1e9:.1f}B"


def _bytes(value: int) -> str:
    return f"{value / 1e12:.2f} TB" if value >= 10**12 else f"{value / 1e9:.2f} GB"


def _files(*, has_weights: bool, has_tokenizer: bool) -> list[tuple[str, str]]:
    """What hub/stage.py stages beside the card."""
    config = (
        f"the transformers config (`{EXPORT_ARCHITECTURE}`, model_type `{EXPORT_MODEL_TYPE}`; ours under `oracle`)"
        if has_weights
        else f"the architecture (model_type `{MODEL_TYPE}`)"
    )
    files = [
        ("README.md", "this card"),
        ("config.json", config),
        ("generation_config.json", "special token ids and sampling defaults"),
        ("default_system.txt", "the default system prompt for chat"),
        ("default_intro.txt", "the model's introduction of itself"),
        ("attestation.json", "the attestation envelope of the commit this was published from"),
    ]
    if has_tokenizer:
        files.append(("tokenizer.json", "the tokenizer, with tokenizer_config.json and special_tokens_map.json"))
    if has_weights:
        files.append(("*.safetensors", "the weights, in shards that `model.safetensors.index.json` lists"))
        files.append(
            ("provenance.json", "signed: the sha256 of every file of the export and the checkpoint it was made from")
        )
    return files


def _architecture(config: MoEConfig) -> dict[str, object]:
    shared = config.shared_expert_hidden_size
    rows = [
        ("Layers", _number(config.n_layers)),
        ("Hidden size", _number(config.hidden_size)),
        ("Attention heads", _number(config.n_heads)),
        ("Key/value heads (grouped-query attention)", _number(config.n_kv_heads)),
        ("Head dimension", _number(config.resolved_head_dim)),
        ("Context length (tokens)", _number(config.context_length)),
        ("Vocabulary size", _number(config.vocab_size)),
        ("Routed experts per layer", _number(config.n_experts)),
        ("Experts per token (top-k)", _number(config.top_k)),
        ("Routed expert FFN width", _number(config.expert_hidden_size)),
        ("Shared expert FFN width", _number(shared) if shared else "none"),
        ("Capacity factor", str(config.capacity_factor) if config.capacity_factor else "none (no token dropping)"),
        ("RoPE theta", _number(int(config.rope_theta)) if config.rope_theta.is_integer() else str(config.rope_theta)),
        ("RMSNorm epsilon", str(config.norm_eps)),
        ("Tied input/output embeddings", "yes" if config.tie_embeddings else "no"),
        ("Load-balancing loss weight", str(config.router_aux_loss_coef)),
        ("Router z-loss weight", str(config.router_z_loss_coef)),
        ("Aux-loss-free bias balancing", "on" if config.bias_balancing else "off"),
    ]
    return {
        "rows": rows,
        "n_layers": config.n_layers,
        "n_experts": config.n_experts,
        "top_k": config.top_k,
        "context_length": _number(config.context_length),
        "has_shared_expert": bool(shared),
        "capacity_factor": config.capacity_factor,
    }


def _parameters(count: ParamCount) -> dict[str, object]:
    rows = [
        (_COMPONENT_LABELS.get(name, name), _number(numbers["total"]), _number(numbers["active"]))
        for name, numbers in count.by_component.items()
    ]
    rows.append((TOTAL_LABEL, f"**{_number(count.total)}**", f"**{_number(count.active)}**"))
    return {
        "rows": rows,
        "total_human": _billions(count.total),
        "active_human": _billions(count.active),
        "active_share": f"{count.active / count.total:.1%}",
        "bf16_size": _bytes(count.total * torch.bfloat16.itemsize),
    }


def _recipe(config_name: str) -> dict[str, object] | None:
    """The training recipe of the same name, if there is one."""
    from oracle.train.config import load_train_config

    try:
        recipe = load_train_config(config_name)
    except ConfigError:
        return None
    tokens_per_step = recipe.batch.global_batch * recipe.data.seq_len
    rows = [
        ("Precision", recipe.precision),
        ("DeepSpeed ZeRO stage", str(recipe.parallelism.zero_stage)),
        ("Data-parallel ranks", _number(recipe.parallelism.data)),
        ("Sequence length (tokens)", _number(recipe.data.seq_len)),
        ("Global batch (sequences)", _number(recipe.batch.global_batch)),
        ("Tokens per step", _number(tokens_per_step)),
        ("Optimizer", f"AdamW, betas {recipe.optimizer.betas}, weight decay {recipe.optimizer.weight_decay:g}"),
        ("Learning rate", f"{recipe.optimizer.lr:g} peak, cosine decay to {recipe.optimizer.min_lr:g}"),
        ("Warmup steps", _number(recipe.schedule.warmup_steps)),
        ("Total steps", _number(recipe.schedule.total_steps)),
        ("Planned training tokens", _number(tokens_per_step * recipe.schedule.total_steps)),
    ]
    return {"rows": rows, "zero_stage": recipe.parallelism.zero_stage}


def _data_pipeline() -> dict[str, object]:
    from oracle.data import decontaminate, dedup

    return {
        "num_perm": dedup.NUM_PERM,
        "shingle_words": dedup.SHINGLE_WORDS,
        "threshold": dedup.THRESHOLD,
        "ngram": decontaminate.N,
    }
