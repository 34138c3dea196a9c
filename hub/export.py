"""`oracle export --format hf`: a checkpoint whose signed provenance verifies, streamed into a folder that
`transformers.AutoModelForCausalLM.from_pretrained` loads as `Qwen2MoeForCausalLM`, with no remote code.

Qwen2MoE expresses our model exactly (DESIGN.md, "Interoperability"): RMSNorm, rotate-half RoPE, grouped-query
attention without q/k/v bias, softmax top-k routing renormalised over the chosen experts (`norm_topk_prob`), SwiGLU
experts whose fused `w13` rows are gate then up, and a shared expert. Qwen2MoE gates its shared expert by
sigmoid(`shared_expert_gate`·x): a zero gate gives 0.5, so the shared expert's down projection is doubled (exact in
any float format). Qwen2MoE always has a shared expert: a model without one gets an all-zero one, whose output is
exactly zero. Capacity dropping is training-only and not exported. Refused, in one line: a router selection bias
(`bias_balancing`), which no Qwen2MoE parameter can hold.

The weights are written as transformers 5 itself saves Qwen2MoE (`save_pretrained` reverts its fused in-memory
experts to one `mlp.experts.{e}.{gate,up,down}_proj.weight` per expert, the layout every Qwen2MoE loader reads),
in shards planned by huggingface_hub's `split_torch_state_dict_into_shards` on meta tensors. Streaming: source
tensors are read lazily (`safetensors.safe_open`, slice by slice, from `model.safetensors` or from the training
ranks' parts, where an expert's slice is one flat range), one output shard is built, written and dropped before the
next, so memory holds at most one shard of converted tensors.

Shapes: E experts, F expert width, D model width.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from guards.checkpoint_files import (
    CONFIG,
    GENERATION_CONFIG,
    PARTITIONS,
    TOKENIZER,
    WEIGHTS,
    UncoveredFileError,
    missing_required,
    read_verified,
    uncovered_files,
    uncovered_message,
)
from guards.provenance import PROVENANCE_FILE, ProvenanceError, derived_facts, verify_provenance, write_provenance
from hub.card import TEMPERATURE, TOP_P
from oracle.moe850b.config import ConfigError, MoEConfig, parse_config
from oracle.moe850b.partitioned import PartitionedReader, parse_index
from oracle.moe850b.weights import CheckpointError
from oracle.tokenization.special_tokens import END_OF_TEXT, END_OF_TURN, PAD, SPECIAL_TOKENS
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle_base.digests import sha256_file
from oracle_base.errors import ConfigurationError, Refused

ARCHITECTURE = "Qwen2MoeForCausalLM"
MODEL_TYPE = "qwen2_moe"
FORMAT = "hf"
DEFAULT_MAX_SHARD_SIZE = "5GB"
INDEX = "model.safetensors.index.json"
# Qwen2MoE always runs a shared expert: a model without one gets an all-zero one of this width (exactly zero out).
ABSENT_SHARED_WIDTH = 8
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class ExportError(ConfigurationError):
    """The checkpoint cannot be exported as asked; one line says what and what to do. `refused`: its provenance or
    the trust root does not allow it (a gate's decision, exit 1), rather than a usage error (exit 2)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        if refused:
            self.exit_code = Refused.exit_code


@dataclass(frozen=True)
class Exported:
    directory: Path
    files: dict[str, str]  # name -> sha256, every exported file (the record's `files`)
    shards: int
    signed: bool
    source_provenance_sha256: str


def inexpressible(config: MoEConfig) -> str | None:
    """Why Qwen2MoeForCausalLM cannot compute what `config` computes, or None."""
    if config.bias_balancing:
        return (
            "bias_balancing is true: the router adds a per-expert selection bias (router.expert_bias) when choosing "
            "experts, and Qwen2MoeForCausalLM has no such bias, so the exported model would route differently; "
            "only models trained without bias_balancing can be exported"
        )
    return None


def token_ids() -> dict[str, Any]:
    """Special token ids: the first ids of every Oracle vocabulary, in SPECIAL_TOKENS order."""
    return {
        "bos_token_id": SPECIAL_TOKENS.index(END_OF_TEXT),
        "eos_token_id": [SPECIAL_TOKENS.index(END_OF_TEXT), SPECIAL_TOKENS.index(END_OF_TURN)],
        "pad_token_id": SPECIAL_TOKENS.index(PAD),
    }


def hf_config(config: MoEConfig, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of the exported folder: Qwen2MoeConfig's fields (transformers 5), ours kept under `oracle`."""
    shared = config.shared_expert_hidden_size or ABSENT_SHARED_WIDTH
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.resolved_head_dim,
        "qkv_bias": False,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range,
        "num_experts": config.n_experts,
        "num_experts_per_tok": config.top_k,
        "norm_topk_prob": True,
        "moe_intermediate_size": config.expert_hidden_size,
        "shared_expert_intermediate_size": shared,
        "intermediate_size": shared,  # dense layers' width: there are none (every layer is MoE)
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.n_layers,
        "attention_dropout": 0.0,
        "router_aux_loss_coef": config.router_aux_loss_coef,
        "output_router_logits": False,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
        **token_ids(),
        "oracle": config.model_dump(mode="json"),  # the source architecture, by our names (transformers ignores it)
    }


def generation_config(config: MoEConfig) -> dict[str, Any]:
    return {**token_ids(), "max_length": config.context_length, "do_sample": True, "temperature": TEMPERATURE,
            "top_p": TOP_P}  # fmt: skip


# --- the tensors ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """One exported tensor: where it comes from and how it is made."""

    name: str  # the transformers name
    shape: tuple[int, ...]
    source: str | None  # our tensor's name; None: all zeros
    expert: int | None = None  # an expert's slice of a stacked (E, ., .) tensor
    rows: tuple[int, int] | None = None  # rows [lo, hi) of that slice (w13: gate rows, then up rows)
    scale: float = 1.0


def plan_tensors(config: MoEConfig) -> list[Planned]:
    """Every tensor of the exported model, in layer order."""
    D, E, F = config.hidden_size, config.n_experts, config.expert_hidden_size
    Hd, V = config.resolved_head_dim, config.vocab_size
    plan = [Planned("model.embed_tokens.weight", (V, D), "embed_tokens.weight")]
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}", f"model.layers.{i}"
        plan += [
            Planned(f"{theirs}.input_layernorm.weight", (D,), f"{ours}.attn_norm.weight"),
            Planned(f"{theirs}.self_attn.q_proj.weight", (config.n_heads * Hd, D), f"{ours}.attn.q_proj.weight"),
            Planned(f"{theirs}.self_attn.k_proj.weight", (config.n_kv_heads * Hd, D), f"{ours}.attn.k_proj.weight"),
            Planned(f"{theirs}.self_attn.v_proj.weight", (config.n_kv_heads * Hd, D), f"{ours}.attn.v_proj.weight"),
            Planned(f"{theirs}.self_attn.o_proj.weight", (D, config.n_heads * Hd), f"{ours}.attn.o_proj.weight"),
            Planned(f"{theirs}.post_attention_layernorm.weight", (D,), f"{ours}.moe_norm.weight"),
            Planned(f"{theirs}.mlp.gate.weight", (E, D), f"{ours}.moe.router.gate.weight"),
        ]
        for e in range(E):
            experts, w13 = f"{theirs}.mlp.experts.{e}", f"{ours}.moe.experts.w13"
            plan += [
                Planned(f"{experts}.gate_proj.weight", (F, D), w13, expert=e, rows=(0, F)),
                Planned(f"{experts}.up_proj.weight", (F, D), w13, expert=e, rows=(F, 2 * F)),
                Planned(f"{experts}.down_proj.weight", (D, F), f"{ours}.moe.experts.w2", expert=e),
            ]
        S = config.shared_expert_hidden_size
        shared = f"{ours}.moe.shared_expert" if S else None
        S = S or ABSENT_SHARED_WIDTH
        plan += [
            Planned(f"{theirs}.mlp.shared_expert.gate_proj.weight", (S, D), shared and f"{shared}.gate_proj.weight"),
            Planned(f"{theirs}.mlp.shared_expert.up_proj.weight", (S, D), shared and f"{shared}.up_proj.weight"),
            Planned(
                f"{theirs}.mlp.shared_expert.down_proj.weight", (D, S), shared and f"{shared}.down_proj.weight", scale=2
            ),
            Planned(f"{theirs}.mlp.shared_expert_gate.weight", (1, D), None),  # sigmoid(0) = 0.5, undone by scale=2
        ]
    plan.append(Planned("model.norm.weight", (D,), "norm.weight"))
    if not config.tie_embeddings:
        plan.append(Planned("lm_head.weight", (V, D), "lm_head.weight"))
    return plan


def read_planned(weights: SourceWeights, item: Planned, dtype: torch.dtype) -> torch.Tensor:
    """The tensor `item` describes, read from the checkpoint's weights (only the slice it needs)."""
    if item.source is None:
        return torch.zeros(item.shape, dtype=dtype)
    tensor = weights.fetch(item.source, item.expert, item.rows).to(dtype).contiguous()
    if tuple(tensor.shape) != item.shape:
        raise ExportError(f"{item.source}: shape {tuple(tensor.shape)}, the config expects {item.shape}")
    return tensor * item.scale if item.scale != 1.0 else tensor


def write_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """One output shard (a module-level function so tests can watch what each write holds)."""
    save_file(tensors, str(path), metadata={"format": "pt"})


def stream_shards(
    weights: SourceWeights, plan: list[Planned], out: Path, dtype: torch.dtype, max_shard_size: int | str
) -> list[str]:
    """Write the planned tensors as shards (and the index when there are several); returns the files written."""
    from huggingface_hub import split_torch_state_dict_into_shards

    by_name = {item.name: item for item in plan}
    meta = {item.name: torch.empty(item.shape, dtype=dtype, device="meta") for item in plan}
    split = split_torch_state_dict_into_shards(
        meta, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    del meta
    for filename, names in split.filename_to_tensors.items():
        shard = {name: read_planned(weights, by_name[name], dtype) for name in names}
        write_shard(shard, out / filename)
        del shard  # before the next shard is read
    written = list(split.filename_to_tensors)
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(math.prod(item.shape) * dtype.itemsize for item in plan)},
            "weight_map": split.tensor_to_filename,
        }
        (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(INDEX)
    return written


# --- the source ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    checkpoint: Path
    record: dict[str, Any]  # its verified provenance record
    provenance_sha256: str
    config: MoEConfig
    contributed: dict[str, bytes]  # verified bytes of the signed tokenizer files and generation config


def verified_source(checkpoint: Path, root: Path) -> Source:
    """The checkpoint, once its provenance verifies against the configured trust root (never the development
    default), it signs its weights and config, and its folder holds nothing the record does not cover. Small files
    are returned as the verified bytes; the weights are hashed when they are opened (SourceWeights)."""
    from guards.trust import TrustError, load_trust_root, require_trusted

    try:
        trust = load_trust_root(root)
        require_trusted(trust, f"exporting {checkpoint}")
        # the signature only: every file the export reads is hashed on the very bytes it uses (read_verified,
        # PinnedFile), so the weights are read once to hash and once to convert, not twice to hash
        record = verify_provenance(checkpoint, root, only=[], trust=trust)
    except (TrustError, ProvenanceError) as exc:
        raise ExportError(
            f"--checkpoint {checkpoint}: {exc}; only checkpoints with verifying provenance are exported", refused=True
        ) from exc
    files: dict[str, Any] = record["files"]
    unlisted = [name for name in missing_required(files) if name != TOKENIZER]  # a checkpoint may lack a tokenizer
    if unlisted:
        raise ExportError(f"--checkpoint {checkpoint}: its provenance lists no {', '.join(unlisted)}", refused=True)
    uncovered = uncovered_files(checkpoint, files)
    if uncovered:
        raise ExportError(uncovered_message(checkpoint, uncovered), refused=True)
    signed_tokenizer = [name for name in TOKENIZER_FILES if name in files]
    if signed_tokenizer and len(signed_tokenizer) != len(TOKENIZER_FILES):
        raise ExportError(
            f"--checkpoint {checkpoint}: its provenance signs only {', '.join(signed_tokenizer)} of the tokenizer "
            f"({', '.join(TOKENIZER_FILES)}); export a checkpoint `oracle train` wrote",
            refused=True,
        )
    try:
        contributed = {
            name: read_verified(checkpoint / name, files[name])
            for name in (CONFIG, *signed_tokenizer, GENERATION_CONFIG)
            if name in files
        }
        config = parse_config(contributed.pop(CONFIG).decode("utf-8"), checkpoint / CONFIG)
    except (UncoveredFileError, ConfigError, UnicodeDecodeError) as exc:
        raise ExportError(f"--checkpoint {checkpoint}: {exc}", refused=True) from exc
    provenance = sha256_file(checkpoint / PROVENANCE_FILE)
    return Source(checkpoint, record, provenance, config, contributed)


class PinnedFile:
    """A signed file opened once and held: hashed through its own descriptor and read by safetensors through
    /proc/self/fd (the same file whatever its path names later), then proved unchanged by its ctime, which every write,
    truncation or rename-in-place bumps and no user can set. So the bytes converted are the bytes hashed: a swap of the
    path, or a write restored before a second hash, cannot slip other weights into a signed export."""

    def __init__(self, path: Path, sha256: str) -> None:
        import stat

        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            message = f"{path}: cannot open it ({exc.strerror}); it must be a regular file"
            raise ExportError(message, refused=True) from exc
        try:
            self.stat = os.fstat(self.fd)
            if not stat.S_ISREG(self.stat.st_mode):
                raise ExportError(f"{path}: not a regular file; export a checkpoint `oracle train` wrote", refused=True)
            self.opened = f"/proc/self/fd/{self.fd}"
            if not os.path.exists(self.opened):
                raise ExportError(f"{path}: exporting needs /proc/self/fd (Linux) to read exactly the file it hashed")
            # hashed through the descriptor's own file, as safetensors reads it
            if sha256_file(Path(self.opened)) != sha256:
                raise ExportError(f"{path}: its sha256 is not the one its signed provenance lists", refused=True)
        except BaseException:
            os.close(self.fd)
            raise

    def unchanged(self) -> bool:
        now, was = os.fstat(self.fd), self.stat
        fields = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
        return all(getattr(now, f) == getattr(was, f) for f in fields)

    def close(self) -> None:
        os.close(self.fd)


class SourceWeights:
    """The checkpoint's weights as the export reads them, lazily: `model.safetensors`, or the parts a training job's
    ranks wrote (oracle.moe850b.partitioned), whose index is read from its verified bytes. Every weights file is
    pinned (PinnedFile): hashed once through its own descriptor, read through it, checked unchanged at the end
    (`check_unchanged`). Use as a context manager."""

    def __init__(self, checkpoint: Path, source: Source) -> None:
        from contextlib import ExitStack

        self._stack = ExitStack()
        self.pinned: list[PinnedFile] = []
        signed = source.record["files"]
        try:
            if WEIGHTS in signed:
                self.files = [WEIGHTS]
                single = self._pin(checkpoint / WEIGHTS, signed[WEIGHTS])
                self._handle: Any = self._stack.enter_context(safe_open(single.opened, framework="pt"))
                self._reader: PartitionedReader | None = None
            else:
                try:
                    data = read_verified(checkpoint / PARTITIONS, signed[PARTITIONS])
                    index = parse_index(data, checkpoint / PARTITIONS)
                except (UncoveredFileError, CheckpointError) as exc:
                    raise ExportError(f"--checkpoint {checkpoint}: {exc}", refused=True) from exc
                unsigned = [name for name in index.files() if name not in signed]
                if unsigned:
                    raise ExportError(
                        f"--checkpoint {checkpoint}: its provenance does not sign {unsigned[0]}, which {PARTITIONS} "
                        "names",
                        refused=True,
                    )
                self.files = [PARTITIONS, *index.files()]
                sources = {name: self._pin(checkpoint / name, signed[name]).opened for name in index.files()}
                self._reader = self._stack.enter_context(PartitionedReader(checkpoint, index, sources))
        except BaseException:
            self._stack.close()
            raise

    def _pin(self, path: Path, sha256: str) -> PinnedFile:
        pinned = PinnedFile(path, sha256)
        self._stack.callback(pinned.close)
        self.pinned.append(pinned)
        return pinned

    def check_unchanged(self) -> None:
        for pinned in self.pinned:
            if not pinned.unchanged():
                raise ExportError(
                    f"{pinned.path} changed while it was exported (written, truncated or replaced since it was "
                    "hashed); nothing was exported",
                    refused=True,
                )

    def __enter__(self) -> SourceWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def shapes(self) -> tuple[dict[str, tuple[int, ...]], str | None]:
        """({tensor: shape}, the embedding's safetensors dtype), from the headers (and the index) only."""
        if self._reader is not None:
            self._reader.check_headers()
            layouts = self._reader.index.tensors
            embedding = layouts.get("embed_tokens.weight")
            return {n: tuple(t.shape) for n, t in layouts.items()}, embedding.dtype if embedding else None
        found = {name: tuple(self._handle.get_slice(name).get_shape()) for name in self._handle.keys()}  # noqa: SIM118
        dtype = self._handle.get_slice("embed_tokens.weight").get_dtype() if "embed_tokens.weight" in found else None
        return found, dtype

    def fetch(self, name: str, expert: int | None, rows: tuple[int, int] | None) -> torch.Tensor:
        """Tensor `name`, or expert `expert`'s slice of it (rows [lo, hi) of that slice when `rows` is given)."""
        if self._reader is None:
            if expert is None:
                return self._handle.get_tensor(name)  # type: ignore[no-any-return]
            view = self._handle.get_slice(name)
            return view[expert] if rows is None else view[expert, rows[0] : rows[1]]  # type: ignore[no-any-return]
        if expert is None:
            return self._reader.read_tensor(name)
        _, height, width = self._reader.index.tensors[name].shape  # (E, rows, columns), row-major: a slice is a range
        lo, hi = rows if rows is not None else (0, height)
        begin = (expert * height + lo) * width
        return self._reader.read(name, begin, begin + (hi - lo) * width).view(hi - lo, width)


def checked_weights(weights: SourceWeights, config: MoEConfig, checkpoint: Path) -> torch.dtype:
    """The dtype the model is exported in (its embedding's), once the weights hold exactly the tensors of `config`
    with their shapes (read from the headers only)."""
    from oracle.moe850b.model import OracleMoE

    with torch.device("meta"):
        model = OracleMoE(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")  # stored once, as the embedding
    try:
        found, dtype_name = weights.shapes()
    except CheckpointError as exc:
        raise ExportError(f"--checkpoint {checkpoint}: {exc}") from exc
    if found != expected:
        differing = sorted(name for name in set(found) | set(expected) if found.get(name) != expected.get(name))
        raise ExportError(
            f"{checkpoint / weights.files[0]}: its tensors do not match its config.json ({', '.join(differing[:3])}); "
            "the checkpoint is not one model"
        )
    dtype = _DTYPES.get(dtype_name) if dtype_name else None
    if dtype is None:
        raise ExportError(f"{checkpoint / weights.files[0]}: embed_tokens.weight is not float32, bfloat16 or float16")
    return dtype


# --- the folder ------------------------------------------------------------------------------------------------------
def partial_dir(out: Path) -> Path:
    """Where an export into `out` is written before it is renamed into place (a fixed sibling: the process policy
    names it at start-up, and a second export into the same --out finds it)."""
    return out.parent / f".{out.name}.partial"


def _check_out(out: Path, checkpoint: Path, force: bool) -> None:
    if out == checkpoint or out.is_relative_to(checkpoint):
        raise ExportError(f"--out {out} is inside --checkpoint {checkpoint}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} is not empty; choose an empty or new folder, or pass --force to replace it")
    partial = partial_dir(out)
    if partial.exists() and not force:
        raise ExportError(
            f"{partial} exists: another export into --out is running, or one was interrupted; remove it (or --force)"
        )


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    root: Path,
    *,
    force: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    signing_key: Any = None,
) -> Exported:
    """Export `checkpoint` into `out` (written into a partial sibling folder, renamed into place at the end): the
    transformers files, the checkpoint's signed tokenizer when it has one, and a provenance record over every file
    that names the source checkpoint, signed with `signing_key` (a provenance key of the trust root) when given.
    Everything that can be refused is refused before anything is written."""
    if out.is_symlink():
        raise ExportError(f"--out {out} is a symbolic link; name the folder itself")
    checkpoint, out = checkpoint.resolve(), out.resolve()
    source = verified_source(checkpoint, root)
    problem = inexpressible(source.config)
    if problem:
        raise ExportError(f"--checkpoint {checkpoint}: config.json: {problem}")
    _check_out(out, checkpoint, force)
    partial = partial_dir(out)
    with SourceWeights(checkpoint, source) as weights:
        dtype = checked_weights(weights, source.config, checkpoint)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            _write_files(partial, source, weights, dtype, max_shard_size)
            weights.check_unchanged()  # the bytes converted are the bytes hashed
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    try:
        facts = derived_facts(checkpoint, source.record, export={"format": FORMAT, "architecture": ARCHITECTURE})
        write_provenance(partial, [p.name for p in partial.iterdir()], facts, signing_key)
        if signing_key is not None:
            try:
                verify_provenance(partial, root)
            except ProvenanceError as exc:
                raise ExportError(f"the export's own provenance does not verify: {exc}") from exc
        _replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    digests = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.name != PROVENANCE_FILE}
    shards = sum(1 for name in digests if name.endswith(".safetensors"))
    return Exported(out, digests, shards, signing_key is not None, source.provenance_sha256)


def _write_files(
    directory: Path, source: Source, weights: SourceWeights, dtype: torch.dtype, max_shard_size: int | str
) -> None:
    config = source.config
    _write_json(directory / CONFIG, hf_config(config, dtype))
    generation = source.contributed.get(GENERATION_CONFIG)
    if generation is not None:
        (directory / GENERATION_CONFIG).write_bytes(generation)
    else:
        _write_json(directory / GENERATION_CONFIG, generation_config(config))
    for name in TOKENIZER_FILES:
        if name in source.contributed:
            (directory / name).write_bytes(source.contributed[name])
    stream_shards(weights, plan_tensors(config), directory, dtype, max_shard_size)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _replace(partial: Path, out: Path) -> None:
    """Put `partial` at `out`; a previous export (--force) is removed only once the new one is in place."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)


def audited_export(checkpoint: Path, out: Path, root: Path, **options: Any) -> Exported:
    """`export_checkpoint`, its decision appended to the audit log either way (gate `export`)."""
    from guards import git
    from guards.audit import append_entry

    details: dict[str, object] = {"checkpoint": str(checkpoint), "out": str(out), "format": FORMAT}
    try:
        exported = export_checkpoint(checkpoint, out, root, **options)
    except ExportError as exc:
        details["reason"] = str(exc)
        append_entry(root, gate="export", result="refused", commit=git.head_commit_or_none(root), details=details)
        raise
    details.update(
        files=len(exported.files), signed=exported.signed, source_provenance=exported.source_provenance_sha256
    )
    append_entry(root, gate="export", result="allowed", commit=git.head_commit_or_none(root), details=details)
    return exported
