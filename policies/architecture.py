"""Policy `architecture`: the model code and configs conform to the declared architecture.

ARCH001 the flagship config validates. ARCH002 its declared parameter counts equal those computed on the meta device
and meet the declared targets. ARCH003 every required component is present with the declared shape (attention,
SwiGLU experts, RMSNorm, RoPE, a router with the declared experts and top-k). ARCH004 the numbers that must agree
across the model config and the training, generation and tokenizer configs and the model card do agree. ARCH005
model code imports nothing but the standard library and the declared packages.

ARCH001-ARCH003 build the model on the meta device, which imports torch: the commit gate runs them only when model
code, configs or policy settings are staged. Against another checkout (`--root`), the facts are computed by that
checkout's code in a subprocess.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from policies.bytecode import NO_BYTECODE_PREFIX, reads_bytecode
from policies.context import ScanContext
from policies.rule import ALL_GATES, Gate, Policy, PolicyResult, Rule, Severity

NAME = "architecture"
CONFIG_DIR = "oracle/moe850b/configs"

INVALID_CONFIG = Rule(
    id="ARCH001",
    policy=NAME,
    title="The flagship config fails validation",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Everything downstream (training, the model card, serving) reads this file; an invalid one cannot "
    "describe the model we govern.",
    fix="Fix the field named in the message (oracle/moe850b/configs/oracle850b.moe.json).",
    example='"n_kv_heads": 7   # does not divide n_heads 64',
    example_fix='"n_kv_heads": 8',
)
PARAMS_DRIFT = Rule(
    id="ARCH002",
    policy=NAME,
    title="Declared parameter counts differ from the computed ones or miss the target",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="The published numbers must be the numbers of the code; hand-maintained figures drift.",
    fix="Run `oracle params --config oracle850b` and copy its totals into param_total/param_active, or fix the shape.",
    example='"param_total": 850000000000   # a round number typed by hand',
    example_fix='"param_total": 848290652160   # what `oracle params` computes',
)
COMPONENT_MISMATCH = Rule(
    id="ARCH003",
    policy=NAME,
    title="A required component is missing or differs from the declaration",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Oracle850B-MoE is declared as 64 experts, top-2, 8192 context, 65,536 vocabulary, with RMSNorm, RoPE, "
    "grouped-query attention and SwiGLU experts; code that builds something else is a different model.",
    fix="Restore the component, or change the declaration in policies.toml [architecture] through review.",
    example="the router built with top_k=1 while the declaration says top-2",
    example_fix="TopKRouter(dim, n_experts=64, top_k=2)",
)
CROSS_FILE_MISMATCH = Rule(
    id="ARCH004",
    policy=NAME,
    title="Numbers disagree across the model, training, generation and tokenizer configs and the model card",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="Vocabulary, context, experts and top-k appear in several files; one that disagrees trains, serves or "
    "publishes a different model from the one declared.",
    fix="Make the named file agree with oracle/moe850b/configs/oracle850b.moe.json.",
    example="tokenizer_config.json: model_max_length 4096 while the model's context is 8192",
    example_fix='"model_max_length": 8192',
)
FOREIGN_IMPORT = Rule(
    id="ARCH005",
    policy=NAME,
    title="Model code imports a foreign package",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="The model is ours from top to bottom; an import of another model implementation (transformers, timm, "
    "...) makes part of it somebody else's.",
    fix="Implement the piece in oracle/core or oracle/moe850b, or declare the package in [architecture] "
    "model_code_imports after review.",
    example="from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock",
    example_fix="from oracle.moe850b.moe import MoE",
)
RULES = (INVALID_CONFIG, PARAMS_DRIFT, COMPONENT_MISMATCH, CROSS_FILE_MISMATCH, FOREIGN_IMPORT)

# Keys that carry the shared numbers, by what they mean; "exact" keys must equal, "bound" keys must not exceed.
_EXACT_KEYS = {
    "vocab_size": ("vocab_size",),
    "context_length": ("context_length", "max_position_embeddings", "model_max_length"),
    "n_experts": ("n_experts", "num_experts", "num_local_experts", "n_routed_experts"),
    "top_k": ("top_k", "num_experts_per_tok", "moe_top_k"),
}
_BOUND_KEYS = {"context_length": ("seq_len", "max_seq_len", "sequence_length", "max_length")}


def check(ctx: ScanContext) -> PolicyResult:
    result = PolicyResult()
    settings = ctx.settings.architecture
    model_dirs = [d.rstrip("/") + "/" for d in settings.model_code]
    model_files = [p for p in ctx.files if p.endswith(".py") and p.startswith(tuple(model_dirs))]
    for path in model_files:
        result.examined.append(path)
        _check_imports(ctx, path, result)

    config_rel = f"{CONFIG_DIR}/{settings.flagship}.moe.json"
    if not (ctx.root / config_rel).exists():
        if (ctx.root / "policies" / "policies.toml").exists():  # the checkout declares an architecture: it needs one
            message = f"the flagship config {config_rel} is missing"
            result.findings.append(INVALID_CONFIG.finding(config_rel, 0, 0, message, "missing"))
        return result
    if ctx.gate is Gate.commit:
        watched = (*model_dirs, CONFIG_DIR + "/", "policies/policies.toml", *settings.consistency_files.values())
        if not any(path.startswith(watched) for path in ctx.files):
            return result
    result.examined.append(config_rel)
    presets = sorted(p.relative_to(ctx.root).as_posix() for p in (ctx.root / CONFIG_DIR).glob("*.moe.json"))
    try:
        all_facts = model_facts(ctx.root, presets, flagship=config_rel)
    except (RuntimeError, ImportError) as exc:  # the checkout's model code does not even build
        message = f"the model cannot be built from this checkout's code: {str(exc).strip().splitlines()[-1]}"
        result.findings.append(COMPONENT_MISMATCH.finding(config_rel, 0, 0, message, "unbuildable"))
        return result
    facts = all_facts[config_rel]
    if "error" in facts:
        result.findings.append(INVALID_CONFIG.finding(config_rel, 0, 0, str(facts["error"]), "invalid"))
        return result
    _check_counts(config_rel, facts, ctx, result)
    problems = facts.get("component_problems", [])
    assert isinstance(problems, list)
    for problem in problems:
        result.findings.append(COMPONENT_MISMATCH.finding(config_rel, 0, 0, str(problem), str(problem)))
    config = facts["config"]
    assert isinstance(config, dict)
    for key in ("n_experts", "top_k", "context_length", "vocab_size"):
        declared = getattr(settings, key)
        if config.get(key) != declared:
            message = f"{key} is {config.get(key)} but the architecture declares {declared}"
            result.findings.append(COMPONENT_MISMATCH.finding(config_rel, _line(ctx, config_rel, key), 1, message, key))
    _check_cross_files(ctx, config, result)
    _check_other_presets(ctx, config_rel, all_facts, result)
    return result


def _check_other_presets(
    ctx: ScanContext, flagship_rel: str, all_facts: dict[str, dict[str, object]], result: PolicyResult
) -> None:
    """The smaller presets (tests, benchmarks) declare their counts too; they must not drift either."""
    for relative, facts in sorted(all_facts.items()):
        if relative == flagship_rel:
            continue
        result.examined.append(relative)
        if "error" in facts:
            result.findings.append(INVALID_CONFIG.finding(relative, 0, 0, str(facts["error"]), "invalid"))
            continue
        config = facts["config"]
        assert isinstance(config, dict)
        for key, computed in (("param_total", facts["total"]), ("param_active", facts["active"])):
            if config[key] != computed:
                message = f"{key} declares {config[key]}, the code computes {computed}"
                result.findings.append(PARAMS_DRIFT.finding(relative, _line(ctx, relative, key), 1, message, key))


def _line(ctx: ScanContext, path: str, key: str) -> int:
    from oracle_base.validation import line_of

    return line_of(ctx.text(path) or "", (key,)) or 0


def _check_counts(config_rel: str, facts: dict[str, object], ctx: ScanContext, result: PolicyResult) -> None:
    settings = ctx.settings.architecture
    total, active = facts["total"], facts["active"]
    assert isinstance(total, int)
    assert isinstance(active, int)
    for key, computed in (("param_total", total), ("param_active", active)):
        declared = facts["config"][key]  # type: ignore[index]
        if declared != computed:
            message = f"{key} declares {declared}, the code computes {computed}"
            result.findings.append(PARAMS_DRIFT.finding(config_rel, _line(ctx, config_rel, key), 1, message, key))
    deviation = abs(total - settings.param_total_target) / settings.param_total_target
    if deviation > settings.param_total_tolerance:
        message = f"total {total:,} is {deviation:.2%} from the declared {settings.param_total_target:,}"
        result.findings.append(PARAMS_DRIFT.finding(config_rel, 0, 0, message, "total-target"))
    if not settings.param_active_min <= active <= settings.param_active_max:
        message = f"active {active:,} is outside [{settings.param_active_min:,}, {settings.param_active_max:,}]"
        result.findings.append(PARAMS_DRIFT.finding(config_rel, 0, 0, message, "active-target"))


def _check_imports(ctx: ScanContext, path: str, result: PolicyResult) -> None:
    tree = ctx.python_ast(path)
    if tree is None:
        result.skipped[path] = "Python that does not parse"
        return
    allowed = set(ctx.settings.architecture.model_code_imports) | set(sys.stdlib_module_names) | {"__future__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            if module.split(".")[0] not in allowed:
                message = f"model code imports {module}, which is not among the declared model packages"
                result.findings.append(FOREIGN_IMPORT.finding(path, node.lineno, node.col_offset + 1, message, module))


def _values(data: object, keys: tuple[str, ...]) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in keys and isinstance(value, int) and not isinstance(value, bool):
                found.append((key, value))
            found += _values(value, keys)
    elif isinstance(data, list):
        for item in data:
            found += _values(item, keys)
    return found


def _load_structured(path: Path) -> object:
    import yaml

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix.lower() in {".md", ".markdown"}:
        parts = text.split("---", 2)
        return yaml.safe_load(parts[1]) if text.startswith("---") and len(parts) == 3 else {}
    return yaml.safe_load(text)


def cross_file_mismatches(path: Path, config: Mapping[str, object]) -> list[tuple[str, str]]:
    """(key, message) for every number in a JSON/YAML file or a card's front matter that disagrees with `config`
    (vocab_size, context_length, n_experts, top_k): exact keys must equal, bound keys must not exceed."""
    data = _load_structured(path)
    found: list[tuple[str, str]] = []
    for meaning, keys in _EXACT_KEYS.items():
        for key, value in _values(data, keys):
            if value != config[meaning]:
                found.append((f"{key}={value}", f"{key} is {value}, the model's {meaning} is {config[meaning]}"))
    for meaning, keys in _BOUND_KEYS.items():
        limit = config[meaning]
        assert isinstance(limit, int)
        for key, value in _values(data, keys):
            assert isinstance(value, int)
            if value > limit:
                found.append((f"{key}={value}", f"{key} is {value}, beyond the model's {meaning} {limit}"))
    return found


def flagship_numbers(root: Path) -> dict[str, object]:
    """The shared numbers of the flagship config declared in policies.toml (what cross_file_mismatches compares)."""
    from policies.settings import load_settings

    flagship = load_settings(root).architecture.flagship
    data = json.loads((root / CONFIG_DIR / f"{flagship}.moe.json").read_text(encoding="utf-8"))
    return {key: data[key] for key in _EXACT_KEYS}


def _check_cross_files(ctx: ScanContext, config: dict[str, object], result: PolicyResult) -> None:
    import yaml

    for role, relative in ctx.settings.architecture.consistency_files.items():
        path = ctx.root / relative
        if not path.is_file():
            result.skipped[relative] = f"{role} file not present"
            continue
        result.examined.append(relative)
        try:
            mismatches = cross_file_mismatches(path, config)
        except (ValueError, OSError, yaml.YAMLError) as exc:
            result.findings.append(
                CROSS_FILE_MISMATCH.finding(relative, 0, 0, f"cannot read the {role} file: {exc}", "x")
            )
            continue
        for fingerprint, message in mismatches:
            key = fingerprint.split("=", 1)[0]
            result.findings.append(
                CROSS_FILE_MISMATCH.finding(relative, _line(ctx, relative, key), 1, f"{role}: {message}", fingerprint)
            )


def model_facts(root: Path, configs: list[str], *, flagship: str) -> dict[str, dict[str, object]]:
    """Counts of each config (and the component checks of the flagship), computed by the checkout's own model code
    in one subprocess run from the checkout (`python -m guards.architecture_facts`), always: building the model runs
    the code under review, so it runs under the process policy (no network, no weights file outside the venv, no
    installer: guards.process_policy), never in the gate's own process, which must read every file of the tree,
    weights included."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    if not reads_bytecode():  # a gate whose process stopped reading caches (publish, submit): its child as well
        env.update(PYTHONPYCACHEPREFIX=NO_BYTECODE_PREFIX, PYTHONDONTWRITEBYTECODE="1")
    completed = subprocess.run(
        [sys.executable, "-m", "guards.architecture_facts", flagship, *configs],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,  # `-m` puts the working directory first on sys.path: the checkout's `oracle` must win
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"computing the model facts of {root} failed: {completed.stderr.strip()[-500:]}")
    facts: dict[str, dict[str, object]] = json.loads(completed.stdout)
    return facts


def config_facts(config_path: Path, *, components: bool = True) -> dict[str, object]:
    from oracle.moe850b.config import ConfigError, load_config
    from oracle.moe850b.params import count_parameters

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return {"error": str(exc)}
    count = count_parameters(config)
    return {
        "config": config.model_dump(mode="json"),
        "total": count.total,
        "active": count.active,
        "component_problems": _component_problems(config) if components else [],
    }


def _block_problems(block: object, config: object) -> list[str]:
    from oracle.core.attention import Attention
    from oracle.core.mlp import SwiGLU
    from oracle.core.norm import RMSNorm
    from oracle.moe850b.config import MoEConfig
    from oracle.moe850b.experts import GroupedExperts
    from oracle.moe850b.model import DecoderBlock
    from oracle.moe850b.router import TopKRouter

    assert isinstance(block, DecoderBlock)
    assert isinstance(config, MoEConfig)
    problems = []
    attention = block.attn
    if not isinstance(attention, Attention) or (attention.n_heads, attention.n_kv_heads) != (
        config.n_heads,
        config.n_kv_heads,
    ):
        problems.append(f"attention is missing or not {config.n_heads} heads / {config.n_kv_heads} KV heads")
    if not isinstance(block.attn_norm, RMSNorm) or not isinstance(block.moe_norm, RMSNorm):
        problems.append("pre-norms are not RMSNorm")
    router, experts = block.moe.router, block.moe.experts
    if not isinstance(router, TopKRouter) or (router.n_experts, router.top_k) != (config.n_experts, config.top_k):
        problems.append(f"router is missing or not {config.n_experts} experts top-{config.top_k}")
    if not isinstance(experts, GroupedExperts) or (experts.n_experts, experts.hidden_dim) != (
        config.n_experts,
        config.expert_hidden_size,
    ):
        problems.append(f"experts are missing or not {config.n_experts} SwiGLU of width {config.expert_hidden_size}")
    if config.shared_expert_hidden_size and not isinstance(block.moe.shared_expert, SwiGLU):
        problems.append("the declared shared expert is missing")
    return problems


def _component_problems(config: object) -> list[str]:
    import torch

    from oracle.core.norm import RMSNorm
    from oracle.core.rope import RotaryEmbedding
    from oracle.moe850b.config import MoEConfig
    from oracle.moe850b.model import OracleMoE

    assert isinstance(config, MoEConfig)
    with torch.device("meta"):
        model = OracleMoE(config)
    problems: list[str] = []
    if not isinstance(model.rope, RotaryEmbedding) or model.rope.theta != config.rope_theta:
        problems.append("rotary embeddings missing or built with another theta")
    if not isinstance(model.norm, RMSNorm):
        problems.append("final norm is not RMSNorm")
    by_problem: dict[str, list[int]] = {}  # one finding per kind of problem, naming the layers it affects
    for index, block in enumerate(model.blocks()):
        for problem in _block_problems(block, config):
            by_problem.setdefault(problem, []).append(index)
    for problem, layers in by_problem.items():
        where = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]} ({len(layers)})"
        problems.append(f"{where}: {problem}")
    return problems


POLICY = Policy(NAME, RULES, check)
