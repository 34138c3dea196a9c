"""The training loop: DeepSpeed ZeRO (stage 3 by default) over the data-parallel ranks, one code path for CPU
(gloo) and GPU (NCCL) jobs.

`run_training` is called by `oracle train` after the runtime gate (guards/runtime.py) allowed this process to train;
nothing here runs before that check. Per optimizer step: set the learning rate from the schedule (a function of the
step, so resuming needs no scheduler state), run `gradient_accumulation` micro-batches (LM loss + the router's
coefficient-weighted aux and z losses), let DeepSpeed reduce, clip and step, update the routers' balancing biases
when aux-loss-free balancing is on, write a metrics line (rank 0), and checkpoint every `checkpoint.interval` steps
and at the end. Packed sequences of `seq_len` tokens give `seq_len - 1` input positions (inputs are the sequence
without its last token, labels without its first).

Expert parallelism (`parallelism.expert` = R > 1, ZeRO-3 only; R divides the data-parallel ranks and the experts):
each MoE layer is an ExpertParallelMoE (expert_parallel.py) over DeepSpeed's expert-parallel groups of R consecutive
ranks, holding E/R experts per rank and moving tokens by all-to-all. Its expert stacks carry DeepSpeed's ZeRO-3
expert placement (the attributes AutoEP gives its own stacks): partitioned over the expert-data-parallel group (the
W/R ranks holding the same experts) instead of all W ranks, gradients reduce-scattered there and averaged over all W
ranks, their norm summed over the expert-parallel group into the one clipping norm, their optimizer state saved and
resumed in each rank's own ZeRO files. Router and shared expert stay ordinary ZeRO-3 parameters. The weight parts
index the stacks by their logical (E, ...) shape with each rank's explicit range (partitioned.expert_parallel_spans).
Tokens per expert are counted on each rank's own tokens and all-reduced, so the metrics stay global.

AutoEP itself (deepspeed.module_inject.auto_ep, DeepSpeed 0.19.8) does not serve our MoE layer: with custom patterns
(router `router`, experts `experts`, w1 `w13` fused gate+up, w2 `w2`, shared expert `shared_expert`) it detects the
layers but fails replacing them, `'TopKRouter' object has no attribute 'weight'` (it reads the router module's own
`weight`; ours is `router.gate.weight`). Past that, its AutoEPMoELayer returns a bare tensor where our blocks need
MoEOutput (the Switch load-balancing loss, the z-loss, which it says it does not implement, and the routing stats),
renames the stacks (`experts.w1/w2/w3`, `shared_experts`) that checkpoints and exports rely on, and has neither
capacity dropping nor our bias balancing (it refuses `load_balance_coeff`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oracle.core.rope import RotaryEmbedding
from oracle.moe850b.config import MoEConfig
from oracle.moe850b.experts import GroupedExperts
from oracle.moe850b.model import OracleMoE, lm_loss
from oracle.moe850b.partitioned import PartitionIndex, own_part
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle.train import checkpoint as ckpt
from oracle.train.config import TrainConfig
from oracle.train.data import PackedDataset, ShardedBatches
from oracle.train.deepspeed_config import deepspeed_config, validate_deepspeed_config
from oracle.train.distributed import Placement, device_for, init_process_group
from oracle.train.schedule import learning_rate
from oracle_base.digests import sha256_file
from oracle_base.errors import ConfigurationError
from oracle_base.records.training import CheckpointManifest, DataPosition, TrainerState
from oracle_base.weight_files import PARTITIONS_FILE, part_file


class TrainError(ConfigurationError):
    """Training cannot start or continue as configured; the message names the setting or file and the fix."""


@dataclass
class RunFacts:
    """What the provenance record binds the weights to (from the gate's decision and the submission record)."""

    job_id: str | None = None
    commit: str | None = None
    attestation_digest: str | None = None
    submission_digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepMetrics:
    step: int
    loss: float
    lm_loss: float
    load_balance_loss: float
    z_loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    tokens_per_s: float
    tokens_per_expert: list[int]
    dropped_tokens: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def _dist() -> Any:
    import deepspeed.comm as dist

    return dist


def _zero3(engine: Any) -> bool:
    return bool(engine.zero_optimization_partition_weights())


@contextmanager
def _gathered(params: list[nn.Parameter], *, enabled: bool, modifier_rank: int | None = None) -> Iterator[None]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank, enabled=enabled):
        yield


class _LossModule(nn.Module):
    """What DeepSpeed wraps: the model plus its loss, returning only tensors (ZeRO-3's hooks find the tensors of
    plain tuples; a dataclass output hides them)."""

    def __init__(self, model: OracleMoE) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs_BS: torch.Tensor, labels_BS: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(inputs_BS)
        lm = lm_loss(out.logits_BSV, labels_BS)
        tokens_per_expert_LE = torch.stack([stats.tokens_per_expert_E for stats in out.routing])
        dropped = torch.stack([stats.dropped_tokens for stats in out.routing]).sum()
        return lm + out.aux_loss, lm, out.load_balance_loss, out.z_loss, tokens_per_expert_LE, dropped


def build_model(
    config: MoEConfig, ds_config: dict[str, Any], *, seed: int, rank: int, expert_parallel: int = 1
) -> OracleMoE:
    """The model, built sharded from the start under ZeRO-3 (zero.Init: no rank ever holds all of it) and
    initialised one module at a time on rank 0, which broadcasts each module's weights as it re-shards them.

    Routed expert stacks are initialised expert by expert, each from its own generator (seeded by `seed`, the
    module's name and the expert's index), so a rank holding some experts builds exactly their slice of what one
    process builds. With `expert_parallel` > 1 every MoE layer becomes an ExpertParallelMoE (expert_parallel.py)
    over DeepSpeed's expert-parallel group, its expert stacks holding this rank's experts only; they stay out of
    zero.Init and are tagged for DeepSpeed's ZeRO-3 expert placement (`_tag_expert_stacks`)."""
    import deepspeed

    stage3 = ds_config["zero_optimization"]["stage"] == 3
    torch.manual_seed(seed)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=stage3):
        model = OracleMoE(config)
    if expert_parallel > 1:
        _shard_experts(model, config, expert_parallel, seed)
    expert_stacks = {name for name, module in model.named_modules() if isinstance(module, GroupedExperts)}
    if stage3:
        # zero.Init makes tensor factories (arange, zeros) produce the training dtype: rebuild the buffers in fp32
        # (bf16 positions would round 4095..4099 to 4096 in the rotary tables; bias steps of 1e-3 would vanish).
        model.rope = RotaryEmbedding(config.resolved_head_dim, config.context_length, config.rope_theta)
        for block in model.blocks():
            block.moe.router.expert_bias = torch.zeros(config.n_experts, dtype=torch.float32)
        for name, module in model.named_modules():
            own = list(module.parameters(recurse=False))
            assert not (own and list(module.buffers(recurse=False))), f"{name}: parameters and buffers together"
            if expert_parallel > 1 and name in expert_stacks:
                continue  # this rank's own experts, initialised and partitioned by _shard_experts
            with _gathered(own, enabled=bool(own), modifier_rank=0):
                if rank == 0:
                    if name in expert_stacks:
                        _init_experts(model, name, seed)
                    else:
                        model.init_module(name, module)
                elif not own:
                    model.init_module(name, module)  # buffers only (router bias): the same on every rank
    else:
        for name in expert_stacks:
            _init_experts(model, name, seed)
    return model


EXPERT_GROUP_NAME = "ep_size_{}"  # DeepSpeed's name of the expert-parallel group (and its expert-data group)


def _shard_experts(model: OracleMoE, config: MoEConfig, expert_parallel: int, seed: int) -> None:
    """Replace every MoE layer by an ExpertParallelMoE over DeepSpeed's expert-parallel group of `expert_parallel`
    consecutive ranks, keeping the layer's router and shared expert (ZeRO parameters) and giving it this rank's
    experts: built without storage, initialised (`_init_experts`), tagged for the expert placement and partitioned
    over the expert-data-parallel group (the ranks with the same experts) one layer at a time, as AutoEP converts its
    replacements, so no rank ever holds more than one layer's experts whole."""
    from deepspeed.utils import groups, set_z3_leaf_modules

    from oracle.train.expert_parallel import ExpertParallelMoE

    name = EXPERT_GROUP_NAME.format(expert_parallel)
    groups._create_expert_and_data_parallel(expert_parallel_size_=expert_parallel)
    ep_group = groups._get_expert_parallel_group(name)
    edp_group = groups._get_expert_data_parallel_group(name)
    if torch.distributed.get_rank(ep_group) != torch.distributed.get_rank() % expert_parallel:
        raise TrainError(f"DeepSpeed's expert-parallel group {name} is not the consecutive ranks this trainer expects")
    # zero.Init's conversion of parameters made outside it (what deepspeed.initialize would call later)
    convert = next((getattr(p, "convert_to_zero_parameters", None) for p in model.parameters()), None)
    if convert is None:
        raise TrainError("expert parallelism needs a model built under ZeRO-3 (parallelism.zero_stage: 3)")
    n_local = config.n_experts // expert_parallel
    dtype, device = model.embed_tokens.weight.dtype, model.embed_tokens.weight.device
    for index, block in enumerate(model.blocks()):
        moe = block.moe
        with torch.device("meta"):
            experts = GroupedExperts(n_local, config.hidden_size, config.expert_hidden_size)
        experts.to_empty(device=device).to(dtype=dtype)
        layer = ExpertParallelMoE(
            moe.router, experts, moe.shared_expert, capacity_factor=moe.capacity_factor, impl=moe.impl, group=ep_group
        )
        setattr(block, "moe", layer)  # noqa: B010 (DecoderBlock.moe is typed MoE; the layer is its drop-in)
        _init_experts(model, f"layers.{index}.moe.experts", seed)
        _tag_expert_stacks(experts, name, edp_group, expert_parallel)
        convert(param_list=list(experts.parameters()))
        del moe
        gc.collect()  # the replaced layer's ZeRO parameters hold closures in cycles: free its experts now
    # ZeRO-3 gathers a module's own parameters before its forward; the layer reads its experts' stacks directly
    set_z3_leaf_modules(model, [ExpertParallelMoE])


def _tag_expert_stacks(experts: nn.Module, group_name: str, edp_group: Any, expert_parallel: int) -> None:
    """DeepSpeed's ZeRO-3 expert placement (what AutoEP sets on its own expert stacks): partitioned over the
    expert-data-parallel group, gradients reduce-scattered there and averaged over the whole data-parallel world,
    the gradient norm summed over the expert-parallel group; and our own mark for the weight parts' layout."""
    from oracle.moe850b.partitioned import EP_SIZE_ATTR

    for param in experts.parameters():
        tagged: Any = param
        tagged.allreduce = False
        tagged.group_name = group_name
        tagged.ds_zero_placement_family = "autoep_expert"
        tagged.ds_zero_partition_group_name = group_name
        tagged.ds_zero_partition_process_group = edp_group
        setattr(tagged, EP_SIZE_ATTR, expert_parallel)


@torch.no_grad()
def _init_experts(model: OracleMoE, name: str, seed: int) -> None:
    """Initialise the experts the GroupedExperts `name` holds (the layer's experts from its `first_expert` on: 0
    unless the layer is expert-parallel) with the model's scheme, each from a generator of its own, drawn in fp32
    and then cast: the same values whichever rank holds the expert and whatever the training dtype."""
    experts = model.get_submodule(name)
    assert isinstance(experts, GroupedExperts)
    first = int(getattr(model.get_submodule(name.rpartition(".")[0]), "first_expert", 0))
    std = model.config.initializer_range
    out_std = std / math.sqrt(2 * model.config.n_layers)  # as OracleMoE.init_module: w2 writes into the residual
    for index, (w13, w2) in enumerate(zip(experts.w13.unbind(0), experts.w2.unbind(0), strict=True)):
        digest = hashlib.sha256(f"{seed}/{name}/{first + index}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        w13.copy_(torch.empty(w13.shape).normal_(0.0, std, generator=generator))
        w2.copy_(torch.empty(w2.shape).normal_(0.0, out_std, generator=generator))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (and expert stacks) only; norms and other vectors are not decayed. Expert-parallel
    expert stacks form a group of their own: ZeRO-3 partitions them over another process group, and a sub-group of
    its optimizer must not mix the two."""
    from oracle.moe850b.partitioned import EP_SIZE_ATTR

    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    experts: list[nn.Parameter] = []
    for param in model.parameters():
        shape = getattr(param, "ds_shape", param.shape)
        if getattr(param, EP_SIZE_ATTR, 1) > 1:
            experts.append(param)
        else:
            (decay if len(shape) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups + ([{"params": experts, "weight_decay": weight_decay}] if experts else [])


def initialise_engine(config: TrainConfig, placement: Placement) -> tuple[Any, OracleMoE]:
    import deepspeed

    ds_config = deepspeed_config(config)
    validate_deepspeed_config(ds_config, config)  # after the process group exists: batch sizes vs world size
    model = build_model(
        config.moe_config(), ds_config, seed=config.seed, rank=placement.rank, expert_parallel=config.parallelism.expert
    )
    model.activation_checkpointing = config.activation_checkpointing
    engine, _, _, _ = deepspeed.initialize(
        model=_LossModule(model), model_parameters=_param_groups(model, config.optimizer.weight_decay), config=ds_config
    )
    return engine, model


def allow_deepspeed_state() -> None:
    """Let torch's weights-only unpickler build the two classes of DeepSpeed's own that a ZeRO checkpoint holds
    besides tensors and plain containers (found with `torch.serialization.get_unsafe_globals_in_checkpoint` on the
    checkpoints of this trainer). DeepSpeed asks torch.load for `weights_only=False`; the process policy forces the
    weights-only unpickler anyway (guards.process_policy: nothing is unpickled with arbitrary globals), and a class
    missing here fails the load with torch's one-line error naming it."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.serialization.add_safe_globals([LossScaler, ZeroStageEnum])


class _RecordingCheckpointEngine:
    """DeepSpeed's checkpoint engine, with the files this rank saves recorded: each rank hashes exactly what it
    wrote (the manifest names the writer), and nothing it did not write."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.saved: list[Path] = []
        self.allowed: set[Path] = set()  # what a resume may load: the files the chosen checkpoint's manifest lists

    def save(self, state_dict: Any, path: str) -> None:
        self._inner.save(state_dict, path)
        self.saved.append(Path(path))

    def load(self, path: str, map_location: Any = None) -> Any:
        self.require_listed(Path(path))
        return self._inner.load(path, map_location=map_location)

    def require_listed(self, path: Path) -> None:
        if path not in self.allowed:
            raise TrainError(f"{path}: a resume asked for a file the checkpoint's manifest does not list")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Trainer:
    def __init__(
        self, config: TrainConfig, placement: Placement, *, run_dir: Path, data_dir: Path, facts: RunFacts
    ) -> None:
        self.config, self.placement, self.run_dir, self.facts = config, placement, run_dir, facts
        if placement.world_size != config.parallelism.data:
            raise TrainError(
                f"parallelism.data is {config.parallelism.data} but this job has {placement.world_size} processes; "
                "launch as many processes as data-parallel ranks, or change parallelism.data (and the batch sizes)"
            )
        self.model_config = config.moe_config()
        self.dataset = PackedDataset(
            data_dir,
            seq_len=config.data.seq_len,
            vocab_size=self.model_config.vocab_size,
            verify=config.data.verify_checksums,
        )
        from guards.keys import load_signing_key

        self.signing_key = load_signing_key()  # now, not at the first save hours later
        self.device = device_for(placement)
        self.backend = init_process_group(placement)
        self.dist = _dist()
        self.engine, self.model = initialise_engine(config, placement)
        self.checkpoint_files = _RecordingCheckpointEngine(self.engine.checkpoint_engine)
        self.engine.checkpoint_engine = self.checkpoint_files
        self.step = 0
        self.batches = self._batches(None)

    def _batches(self, position: DataPosition | None) -> ShardedBatches:
        b = self.config.batch
        return ShardedBatches(
            self.dataset,
            seed=self.config.seed,
            global_batch=b.global_batch,
            micro_batch=b.micro_batch,
            rank=self.placement.rank,
            world_size=self.placement.world_size,
            position=position,
        )

    # --- resume -----------------------------------------------------------------------------------------------

    def choose_checkpoint(self, resume: str | None) -> Path | None:
        """The checkpoint to continue from, verified by all ranks together: rank 0 lists the candidates (and checks
        every file's size), then every rank hashes the files it wrote and no other; a candidate any rank finds
        altered is set aside (`--resume auto`) or refused (`--resume PATH`). None: start fresh."""
        plan: dict[str, Any] = {"candidates": [], "explicit": False, "error": None}
        if self.placement.is_main:
            signed_by = Path.cwd() if self.signing_key is not None else None
            plan = _candidates(self.run_dir, resume, self.placement.world_size, signed_by=signed_by)
        plan = self._broadcast(plan)  # every rank learns the candidates, or the error, from rank 0
        if plan["error"]:
            raise TrainError(plan["error"])
        for candidate in plan["candidates"]:
            directory = Path(candidate)
            error, listed = None, []
            try:
                manifest = ckpt.read_manifest(directory)
                listed = list(manifest.files)
                ckpt.verify_own(directory, manifest, self.placement.rank)
            except ckpt.CheckpointCorruptError as exc:
                error = str(exc)
            errors: list[Any] = [None] * self.placement.world_size
            torch.distributed.all_gather_object(errors, error)
            bad = [e for e in errors if e]
            if not bad:
                self.checkpoint_files.allowed = {directory / name for name in listed}
                return directory
            if plan["explicit"]:
                raise TrainError(f"--resume {resume}: {bad[0]}; pass a complete checkpoint or `auto`")
            if self.placement.is_main:
                aside = ckpt.set_aside(directory)
                print(f"oracle train: skipping checkpoint: {bad[0]} (moved to {aside.name})", file=sys.stderr)
        if plan["candidates"]:
            raise TrainError(f"{self.run_dir}: no checkpoint verifies; nothing to resume from")
        return None

    def resume(self, directory: Path) -> None:
        """Continue from `directory`, which the ranks verified when choosing it (choose_checkpoint): not hashed
        again; DeepSpeed may load only files the manifest lists."""
        box: dict[str, Any] = {}
        path = directory / ckpt.TRAINER_STATE
        self._main_only(f"reading {path}", lambda: box.update(ckpt.read_trainer_state(directory).model_dump()))
        state = TrainerState.model_validate(self._broadcast(box))
        for key, had, have in (
            ("config_sha256", state.config_sha256, self.config.sha256()),
            ("data_manifest_sha256", state.data_manifest_sha256, self.dataset.manifest_sha256),
        ):
            if had != have:
                raise TrainError(
                    f"{path}: {key} is {had}, this run's is {have}; resume only with the training config and data "
                    "the checkpoint was made with (or start a new run name)"
                )
        allow_deepspeed_state()
        loaded, _ = self.engine.load_checkpoint(
            str(directory / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise TrainError(f"{directory / 'deepspeed'}: DeepSpeed could not load its checkpoint")
        from safetensors.torch import load_file

        rng_path = directory / "rng" / f"rank-{self.placement.rank:05d}.safetensors"
        self.checkpoint_files.require_listed(rng_path)
        rng = load_file(str(rng_path))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = state.step
        self.batches = self._batches(state.data_position)
        self._main_only("cutting back metrics.jsonl", lambda: ckpt.truncate_metrics(self.run_dir, self.step))

    def _main_only(self, what: str, work: Callable[[], None]) -> None:
        """Run `work` on rank 0 only; every rank learns whether it failed, so none waits forever in a collective
        for a rank that has died."""
        error = None
        if self.placement.is_main:
            try:
                work()
            except Exception as exc:
                error = f"{what}: {exc}"
        error = self._broadcast({"error": error})["error"]
        if error:
            raise TrainError(error)

    def _broadcast(self, obj: dict[str, Any]) -> dict[str, Any]:
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    # --- one step ---------------------------------------------------------------------------------------------

    def train_step(self) -> StepMetrics:
        cfg, engine = self.config, self.engine
        lr = learning_rate(
            self.step,
            lr=cfg.optimizer.lr,
            min_lr=cfg.optimizer.min_lr,
            warmup_steps=cfg.schedule.warmup_steps,
            total_steps=cfg.schedule.total_steps,
        )
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        n_experts, pad_id = self.model_config.n_experts, self.dataset.pad_id
        # on the device: NCCL reduces device tensors only
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # lm, load balance, z, dropped tokens
        per_expert = torch.zeros(self.model_config.n_layers, n_experts, dtype=torch.int64, device=self.device)
        micro_batches = self.batches.next_step()
        for batch in micro_batches:
            batch = batch.to(self.device)
            inputs, labels = batch[:, :-1], batch[:, 1:].masked_fill(batch[:, 1:] == pad_id, -100)
            loss, lm, load_balance, z, tokens_per_expert_LE, dropped = engine(inputs, labels)
            engine.backward(loss)
            engine.step()
            sums += torch.stack([lm.float(), load_balance.float(), z.float(), dropped.float()]).detach().double()
            per_expert += tokens_per_expert_LE
        self.dist.all_reduce(sums)
        self.dist.all_reduce(per_expert)
        if self.model_config.bias_balancing:
            self.model.update_router_biases_from_counts(per_expert)
        sums, per_expert = sums.cpu(), per_expert.cpu()
        self.step += 1
        elapsed = time.perf_counter() - started
        world, accumulation = self.placement.world_size, len(micro_batches)
        means = (sums[:3] / (world * accumulation)).tolist()
        tokens = cfg.batch.global_batch * (cfg.data.seq_len - 1)
        grad_norm = engine.get_global_grad_norm()
        return StepMetrics(
            step=self.step,
            loss=means[0]
            + self.model_config.router_aux_loss_coef * means[1]
            + self.model_config.router_z_loss_coef * means[2],
            lm_loss=means[0],
            load_balance_loss=means[1],
            z_loss=means[2],
            lr=lr,
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens=tokens,
            tokens_per_s=tokens / elapsed,
            tokens_per_expert=per_expert.sum(dim=0).tolist(),
            dropped_tokens=int(sums[3]),
        )

    # --- checkpoints ------------------------------------------------------------------------------------------

    def save(self) -> Path:
        """Every rank writes and hashes its own files (DeepSpeed's partitions, its RNG state, its part of the weights);
        rank 0 gathers the digests, writes the shared files, signs one provenance record and seals the folder."""
        rank, world = self.placement.rank, self.placement.world_size
        partial = ckpt.partial_dir(self.run_dir, self.step)

        def prepare() -> None:
            if partial.exists():
                import shutil

                shutil.rmtree(partial)  # left by a run that died while saving
            partial.mkdir(parents=True)

        self._main_only(f"preparing {partial}", prepare)
        report: dict[str, Any] = {"rank": rank, "error": None, "entries": {}, "index": None}
        index: PartitionIndex | None = None
        try:
            index, written = self._write_own(partial)
            report["entries"] = ckpt.describe(partial, written, rank)
            report["index"] = index.to_json()
        except Exception as exc:  # reported to rank 0, so no rank waits in a collective for one that failed
            report["error"] = f"rank {rank}: {exc}"
        reports: list[Any] = [None] * world
        torch.distributed.all_gather_object(reports, report)
        final = self.run_dir / ckpt.step_dir_name(self.step)
        self._main_only(f"saving {final}", lambda: self._finish(partial, final, reports, index))
        return final

    def _write_own(self, partial: Path) -> tuple[PartitionIndex, list[Path]]:
        from safetensors.torch import save_file

        from oracle_base.atomic_write import write_atomically

        rank, world = self.placement.rank, self.placement.world_size
        self.checkpoint_files.saved.clear()
        self.engine.save_checkpoint(str(partial / "deepspeed"), tag="state", save_latest=False)
        written = list(self.checkpoint_files.saved)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rng_path = partial / "rng" / f"rank-{rank:05d}.safetensors"
        write_atomically(rng_path, lambda tmp: save_file(rng, str(tmp)))
        index, parts = own_part(self.model, rank=rank, world_size=world, zero3=_zero3(self.engine))
        part_path = partial / part_file(rank, world)
        write_atomically(part_path, lambda tmp: save_file(parts, str(tmp), metadata={"format": "pt"}))
        parts.clear()
        return index, [*written, rng_path, part_path]

    def _finish(self, partial: Path, final: Path, reports: list[Any], index: PartitionIndex | None) -> None:
        """Rank 0: the shared files, the signed provenance over every rank's part, the manifest and the rename."""
        from oracle.moe850b.weights import CONFIG_FILE
        from oracle_base.atomic_write import write_atomically

        failed = [r["error"] for r in reports if r["error"]]
        if failed:
            raise TrainError("; ".join(failed))
        if index is None or any(r["index"] != index.to_json() for r in reports):
            raise TrainError("the ranks disagree on the model's layout; every rank must build the same model")
        written: dict[str, dict[str, Any]] = {}
        for r in reports:
            written |= r["entries"]
        write_atomically(partial / PARTITIONS_FILE, index.to_json())
        config_json = json.dumps(self.model_config.model_dump(mode="json"), indent=2) + "\n"
        write_atomically(partial / CONFIG_FILE, config_json)
        trainer_state = TrainerState(
            step=self.step,
            data_position=self.batches.position,
            seed=self.config.seed,
            world_size=self.placement.world_size,
            config_sha256=self.config.sha256(),
            data_manifest_sha256=self.dataset.manifest_sha256,
            train_config=self.config.model_dump(mode="json"),
        )
        write_atomically(partial / ckpt.TRAINER_STATE, trainer_state.to_json())
        served = [PARTITIONS_FILE, *index.files(), CONFIG_FILE]
        tokenizer = self.dataset.tokenizer_dir
        if tokenizer is not None:  # the tokenizer the data was encoded with travels with the weights
            for name in TOKENIZER_FILES:
                write_atomically(partial / name, (tokenizer / name).read_bytes())
            served += TOKENIZER_FILES
        digests = {name: written[name]["sha256"] for name in index.files()}  # hashed by the rank that wrote each
        # what a resume loads (DeepSpeed's partitions, the RNG states, the trainer state) is bound into the signed
        # record too, so a resume that will sign its own checkpoints never continues from state nobody signed
        state: dict[str, str] = {}
        for path in sorted(p for p in partial.rglob("*") if p.is_file()):
            name = path.relative_to(partial).as_posix()
            if ckpt.is_training_state(name) or name == ckpt.TRAINER_STATE:  # rank 0's own when no rank reported it
                state[name] = written[name]["sha256"] if name in written else sha256_file(path)
        self._write_provenance(partial, served, digests, state)
        ckpt.seal(partial, final, written=written, world_size=self.placement.world_size)
        ckpt.prune(self.run_dir, self.config.checkpoint.keep_last, current=self.step)

    def _write_provenance(
        self, directory: Path, files: list[str], digests: dict[str, str], training_state: dict[str, str]
    ) -> None:
        from guards.provenance import write_provenance

        facts = {
            "commit": self.facts.commit,
            "attestation_digest": self.facts.attestation_digest,
            "submission_digest": self.facts.submission_digest,
            "job_id": self.facts.job_id,
            "step": self.step,
            "run": self.run_dir.name,
            "train_config_sha256": self.config.sha256(),
            "data_manifest_sha256": self.dataset.manifest_sha256,
            "training_state": training_state,
            **self.facts.extra,
        }
        write_provenance(directory, files, facts, self.signing_key, digests=digests)

    # --- the loop ---------------------------------------------------------------------------------------------

    def fit(self) -> None:
        cfg = self.config
        total = cfg.schedule.total_steps
        metrics_path = self.run_dir / ckpt.METRICS
        progress = _Progress(total, self.step, enabled=self.placement.is_main)
        while self.step < total:
            metrics = self.train_step()
            if self.step % cfg.logging.interval == 0 or self.step == total:

                def append(line: str = metrics.to_json()) -> None:
                    with metrics_path.open("a", encoding="utf-8") as handle:
                        handle.write(line + "\n")

                self._main_only(f"writing {metrics_path}", append)
            if self.placement.is_main:
                progress.update(metrics)
            if self.step % cfg.checkpoint.interval == 0 or self.step == total:
                self.save()
        progress.close()


class _Progress:
    """A progress bar on rank 0 when stderr is a terminal; one plain line per step otherwise (batch logs)."""

    def __init__(self, total: int, done: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=done, info="")

    def update(self, m: StepMetrics) -> None:
        info = f"loss {m.loss:.4f} lr {m.lr:.2e} {m.tokens_per_s:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=m.step, info=info)
        elif self.enabled:
            print(f"step {m.step}: {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_directory(config: TrainConfig, run_name: str | None) -> Path:
    """The run's folder: `<checkpoint.dir>/<run name or the recipe's name>`."""
    return (Path(config.checkpoint.dir) / (run_name or config.name)).absolute()


def run_training(
    config: TrainConfig, *, resume: str | None, run_name: str | None, facts: RunFacts, placement: Placement
) -> Path:
    """Train (or continue) the run; returns its directory. Resume: "auto" (the newest complete checkpoint of the run,
    none: start fresh) or the path of a checkpoint folder."""
    run_dir = run_directory(config, run_name)
    data_dir = Path(config.data.path).absolute()
    if placement.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, placement, run_dir=run_dir, data_dir=data_dir, facts=facts)
    try:
        target = trainer.choose_checkpoint(resume)
        if target is not None:
            trainer.resume(target)
            if placement.is_main:
                print(f"oracle train: resumed from {target} at step {trainer.step}", file=sys.stderr)
        trainer.fit()
    finally:
        from oracle.train.distributed import destroy_process_group

        destroy_process_group()
    return run_dir


def _candidates(run_dir: Path, resume: str | None, world_size: int, *, signed_by: Path | None = None) -> dict[str, Any]:
    """Rank 0: the checkpoints to try, newest first, each with its manifest read and every file's size checked
    (nothing hashed: each rank hashes its own files next), or the error every rank raises. `signed_by` (the root
    whose trust root verifies provenance; given when this run signs its checkpoints): a candidate's provenance must
    verify there and sign the very state the manifest lists (ckpt.require_signed_state), so signed output never
    continues from unsigned state."""

    def checked(directory: Path) -> CheckpointManifest:
        manifest = ckpt.read_manifest(directory)
        if signed_by is not None:
            ckpt.require_signed_state(directory, manifest, signed_by)
        return manifest

    plan: dict[str, Any] = {"candidates": [], "explicit": resume not in (None, "auto"), "error": None}

    def same_world(directory: Path, manifest: CheckpointManifest) -> None:
        if manifest.world_size != world_size:
            raise TrainError(
                f"{directory} was written by {manifest.world_size} processes and this job has {world_size}: "
                "DeepSpeed's ZeRO files are per-rank partitions, so resume with the same number of processes "
                "(re-sharding needs DeepSpeed's universal checkpoint conversion, which `oracle train` does not run)"
            )

    try:
        if resume is None:
            if ckpt.checkpoint_dirs(run_dir):
                plan["error"] = (
                    f"{run_dir} already holds checkpoints; continue it with --resume auto, or start a new run with "
                    "--run-name"
                )
                return plan
            ckpt.truncate_metrics(run_dir, 0)
            return plan
        if resume == "auto":
            found = ckpt.checkpoint_dirs(run_dir)
            for directory in found:
                try:
                    manifest = checked(directory)
                except ckpt.CheckpointCorruptError as exc:
                    aside = ckpt.set_aside(directory)
                    print(f"oracle train: skipping checkpoint: {exc} (moved to {aside.name})", file=sys.stderr)
                    continue
                same_world(directory, manifest)
                plan["candidates"].append(str(directory))
            if not found:
                ckpt.truncate_metrics(run_dir, 0)
            elif not plan["candidates"]:
                plan["error"] = f"{run_dir}: no checkpoint verifies; nothing to resume from"
            return plan
        directory = Path(resume)
        same_world(directory, checked(directory))
        plan["candidates"].append(resume)
    except ckpt.CheckpointCorruptError as exc:
        plan["error"] = f"--resume {resume}: {exc}; pass a complete checkpoint or `auto`"
    except TrainError as exc:
        plan["error"] = str(exc)
    except Exception as exc:
        plan["error"] = f"choosing a checkpoint in {run_dir}: {exc}"
    return plan


def environment_facts(decision_job_id: str | None, *, local_override: bool = False, record: Any = None) -> RunFacts:
    """The facts of the submitted job this process runs in, from its submission record as the runtime check verified
    it (`record`: the object, never the file read again, which the user could have swapped since), and the audit
    log's head just after the runtime check recorded its decision (guards.audit), which provenance carries. A run
    the ALLOW_LOCAL_TRAIN override let through says so (`local_override`) and names no commit: nothing attested the
    code it ran."""
    from guards.audit import current_anchor
    from guards.submission import DIGEST_ENV

    facts = RunFacts(job_id=decision_job_id, submission_digest=os.environ.get(DIGEST_ENV) if record else None)
    facts.extra["audit"] = current_anchor(Path.cwd())  # the log require_training_allowed wrote to
    facts.extra["local_override"] = local_override
    if record is not None:
        facts.commit, facts.attestation_digest = record.commit, record.attestation_digest
    return facts
