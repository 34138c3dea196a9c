"""The training loop: DeepSpeed ZeRO (stage 3 by default) over the data-parallel ranks, one code path for CPU
(gloo) and GPU (NCCL) jobs.

`run_training` is called by `oracle train` after the runtime gate (guards/runtime.py) allowed this process to train;
nothing here runs before that check. Per optimizer step: set the learning rate from the schedule (a function of the
step, so resuming needs no scheduler state), run `gradient_accumulation` micro-batches (LM loss + the router's
coefficient-weighted aux and z losses), let DeepSpeed reduce, clip and step, update the routers' balancing biases
when aux-loss-free balancing is on, write a metrics line (rank 0), and checkpoint every `checkpoint.interval` steps
and at the end. Packed sequences of `seq_len` tokens give `seq_len - 1` input positions (inputs are the sequence
without its last token, labels without its first).
"""

from __future__ import annotations

import json
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
from oracle.moe850b.model import OracleMoE, lm_loss
from oracle.tokenization.tokenizer import TOKENIZER_FILES
from oracle.train import checkpoint as ckpt
from oracle.train.config import TrainConfig
from oracle.train.data import DataPosition, PackedDataset, ShardedBatches
from oracle.train.deepspeed_config import deepspeed_config, validate_deepspeed_config
from oracle.train.distributed import Placement, device_for, init_process_group
from oracle.train.schedule import learning_rate


class TrainError(RuntimeError):
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


def build_model(config: MoEConfig, ds_config: dict[str, Any], *, seed: int, rank: int) -> OracleMoE:
    """The model, built sharded from the start under ZeRO-3 (zero.Init: no rank ever holds all of it) and
    initialised one module at a time on rank 0, which broadcasts each module's weights as it re-shards them."""
    import deepspeed

    stage3 = ds_config["zero_optimization"]["stage"] == 3
    torch.manual_seed(seed)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=stage3):
        model = OracleMoE(config)
    if stage3:
        # zero.Init makes tensor factories (arange, zeros) produce the training dtype: rebuild the buffers in fp32
        # (bf16 positions would round 4095..4099 to 4096 in the rotary tables; bias steps of 1e-3 would vanish).
        model.rope = RotaryEmbedding(config.resolved_head_dim, config.context_length, config.rope_theta)
        for block in model.blocks():
            block.moe.router.expert_bias = torch.zeros(config.n_experts, dtype=torch.float32)
        for name, module in model.named_modules():
            own = list(module.parameters(recurse=False))
            assert not (own and list(module.buffers(recurse=False))), f"{name}: parameters and buffers together"
            with _gathered(own, enabled=bool(own), modifier_rank=0):
                if rank == 0:
                    model.init_module(name, module)
                elif not own:
                    model.init_module(name, module)  # buffers only (router bias): the same on every rank
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (and expert stacks) only; norms and other vectors are not decayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        shape = getattr(param, "ds_shape", param.shape)
        (decay if len(shape) >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initialise_engine(config: TrainConfig, placement: Placement) -> tuple[Any, OracleMoE]:
    import deepspeed

    ds_config = deepspeed_config(config)
    validate_deepspeed_config(ds_config, config)  # after the process group exists: batch sizes vs world size
    model = build_model(config.moe_config(), ds_config, seed=config.seed, rank=placement.rank)
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


def consolidated_state(engine: Any, model: OracleMoE, *, rank: int) -> dict[str, torch.Tensor]:
    """Full tensors of every parameter and persistent buffer, on rank 0 (empty elsewhere); gathered one parameter
    at a time under ZeRO-3, so no rank holds more than one full tensor beyond its shard."""
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():  # tied weights appear once
        with _gathered([param], enabled=_zero3(engine)):
            if rank == 0:
                state[name] = param.detach().to("cpu", copy=True).contiguous()
    if rank == 0:
        persistent = set(model.state_dict())
        for name, buffer in model.named_buffers():
            if name in persistent:
                state[name] = buffer.detach().to("cpu", copy=True).contiguous()
    return state


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
        if config.parallelism.expert != 1:
            raise TrainError(
                f"parallelism.expert is {config.parallelism.expert}: the trainer runs expert parallelism 1 for now "
                "(experts are sharded by ZeRO instead); see oracle/train/expert_parallel.py and the README"
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

    def resume(self, directory: Path) -> None:
        """Continue from `directory`, which rank 0 verified when choosing it (_choose_checkpoint): not hashed again."""
        box: dict[str, Any] = {}
        path = directory / ckpt.TRAINER_STATE
        self._main_only(f"reading {path}", lambda: box.update(json.loads(path.read_text(encoding="utf-8"))))
        state = self._broadcast(box)
        for key, have in (
            ("config_sha256", self.config.sha256()),
            ("data_manifest_sha256", self.dataset.manifest_sha256),
        ):
            if state.get(key) != have:
                raise TrainError(
                    f"{directory / ckpt.TRAINER_STATE}: {key} is {state.get(key)}, this run's is {have}; resume only "
                    "with the training config and data the checkpoint was made with (or start a new run name)"
                )
        allow_deepspeed_state()
        loaded, _ = self.engine.load_checkpoint(
            str(directory / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise TrainError(f"{directory / 'deepspeed'}: DeepSpeed could not load its checkpoint")
        from safetensors.torch import load_file

        rng = load_file(str(directory / "rng" / f"rank-{self.placement.rank:05d}.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self.batches = self._batches(DataPosition.from_dict(state["data_position"]))
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
        from safetensors.torch import save_file

        from oracle.atomic_write import write_atomically
        from oracle.moe850b.weights import CONFIG_FILE, WEIGHTS_FILE

        rank = self.placement.rank
        partial = ckpt.partial_dir(self.run_dir, self.step)

        def prepare() -> None:
            if partial.exists():
                import shutil

                shutil.rmtree(partial)  # left by a run that died while saving
            partial.mkdir(parents=True)

        self._main_only(f"preparing {partial}", prepare)
        self.engine.save_checkpoint(str(partial / "deepspeed"), tag="state", save_latest=False)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rng_path = partial / "rng" / f"rank-{rank:05d}.safetensors"
        write_atomically(rng_path, lambda tmp: save_file(rng, str(tmp)))
        state = consolidated_state(self.engine, self.model, rank=rank)
        self.dist.barrier()
        final = self.run_dir / ckpt.step_dir_name(self.step)

        def finish() -> None:
            write_atomically(partial / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
            config_json = json.dumps(self.model_config.model_dump(mode="json"), indent=2) + "\n"
            write_atomically(partial / CONFIG_FILE, config_json)
            trainer_state = {
                "step": self.step,
                "data_position": self.batches.position.to_dict(),
                "seed": self.config.seed,
                "config_sha256": self.config.sha256(),
                "data_manifest_sha256": self.dataset.manifest_sha256,
                "train_config": self.config.model_dump(mode="json"),
            }
            write_atomically(partial / ckpt.TRAINER_STATE, json.dumps(trainer_state, indent=2) + "\n")
            served = [WEIGHTS_FILE, CONFIG_FILE]
            tokenizer = self.dataset.tokenizer_dir
            if tokenizer is not None:  # the tokenizer the data was encoded with travels with the weights
                for name in TOKENIZER_FILES:
                    write_atomically(partial / name, (tokenizer / name).read_bytes())
                served += TOKENIZER_FILES
            self._write_provenance(partial, served)
            ckpt.seal(partial, final)
            ckpt.prune(self.run_dir, self.config.checkpoint.keep_last, current=self.step)

        self._main_only(f"saving {final}", finish)
        return final

    def _write_provenance(self, directory: Path, files: list[str]) -> None:
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
            **self.facts.extra,
        }
        write_provenance(directory, files, facts, self.signing_key)

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
        choice: dict[str, Any] = {"target": None, "error": None}
        if placement.is_main:
            choice = _choose_checkpoint(run_dir, resume)
        choice = trainer._broadcast(choice)  # every rank learns the choice, or the error, from rank 0
        if choice["error"]:
            raise TrainError(choice["error"])
        target = choice["target"]
        if target is not None:
            trainer.resume(Path(target))
            if placement.is_main:
                print(f"oracle train: resumed from {target} at step {trainer.step}", file=sys.stderr)
        trainer.fit()
    finally:
        from oracle.train.distributed import destroy_process_group

        destroy_process_group()
    return run_dir


def _choose_checkpoint(run_dir: Path, resume: str | None) -> dict[str, Any]:
    """Which checkpoint to continue from (rank 0 decides), or the error every rank raises."""
    try:
        if resume is None:
            if ckpt.checkpoint_dirs(run_dir):
                return {
                    "target": None,
                    "error": f"{run_dir} already holds checkpoints; continue it with --resume auto, or start a new "
                    "run with --run-name",
                }
            ckpt.truncate_metrics(run_dir, 0)
            return {"target": None, "error": None}
        if resume == "auto":
            found = ckpt.newest_complete(run_dir)
            if found is None:
                if ckpt.checkpoint_dirs(run_dir):
                    return {"target": None, "error": f"{run_dir}: no checkpoint verifies; nothing to resume from"}
                ckpt.truncate_metrics(run_dir, 0)
                return {"target": None, "error": None}
            for directory, reason in found.skipped:
                aside = ckpt.set_aside(directory)
                print(f"oracle train: skipping checkpoint: {reason} (moved to {aside.name})", file=sys.stderr)
            return {"target": str(found.directory), "error": None}
        ckpt.verify_complete(Path(resume))
        return {"target": resume, "error": None}
    except ckpt.CheckpointCorruptError as exc:
        return {"target": None, "error": f"--resume {resume}: {exc}; pass a complete checkpoint or `auto`"}
    except Exception as exc:
        return {"target": None, "error": f"choosing a checkpoint in {run_dir}: {exc}"}


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
