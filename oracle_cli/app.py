"""The `oracle` command, the front door of the repository. Nothing imports this module.

Exit codes (the class of the error carries its code, oracle_base.errors; one handler prints it, OracleGroup):
0 success; 1 a check or policy blocks the action (`Refused`, and a command's own "check failed" report such as
`oracle guards run` with findings, `oracle params --check`, `oracle plan` that does not fit); 2 usage, configuration or
internal errors (`UsageError`, `ConfigurationError`, `InternalError`, any other exception: one `internal error:` line,
the traceback with ORACLE_DEBUG=1); 3 an external service failed (`ExternalServiceError`: the cluster or its
scheduler, the Hub, the network; the same command may succeed later); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from guards.commands import guards_app
from guards.trust_commands import keys_app, trust_app
from oracle_base.errors import EXIT_REFUSED, UsageError
from oracle_cli.data import stage_app
from oracle_cli.entry import report_error


class OracleGroup(TyperGroup):
    """The root command: whatever a command raises ends here, once, as one line and an exit code (entry.report_error).
    typer's own exits and usage errors pass through with their codes (a usage error: 2)."""

    def invoke(self, ctx: Any) -> Any:  # typer's click Context (typer._click, private)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            raise typer.Exit(report_error(exc)) from exc


app = typer.Typer(
    name="oracle",
    cls=OracleGroup,
    help="Oracle: the Oracle850B-MoE model and the gates that govern it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


@app.callback()
def _root() -> None:
    """Oracle: the Oracle850B-MoE model and the gates that govern it."""


app.add_typer(guards_app, name="guards")
app.add_typer(trust_app, name="trust")
app.add_typer(keys_app, name="keys")
tokenizer_app = typer.Typer(help="The Oracle tokenizer: byte-level BPE.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
data_app = typer.Typer(
    help="The data pipeline: ingest, clean, dedup, decontaminate, shard, stats.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
data_app.add_typer(stage_app, name="stage")
hub_app = typer.Typer(help="The Hugging Face Hub publish gate: build the files, publish them.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")


@app.command("params")
def params_command(
    config: Annotated[
        str | None, typer.Option("--config", help="Preset name (oracle850b, oracle-mini, oracle-bench) or a path.")
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
    check: Annotated[
        bool,
        typer.Option("--check", help="Exit 1 unless the declared param_total/param_active equal the computed ones."),
    ] = False,
) -> None:
    """Exact parameter counts (total, active per token, by component), computed on the meta device.

    Example: oracle params --config oracle850b --format json

    With --check and no --config, every preset is checked.
    """
    from oracle.moe850b.config import FLAGSHIP, available_presets, load_config
    from oracle.moe850b.params import count_parameters

    names = [config] if config else (available_presets() if check else [FLAGSHIP])
    counts = [count_parameters(load_config(name)) for name in names]

    if output_format is OutputFormat.json:
        payload = [count.as_json() for count in counts]
        for item, count in zip(payload, counts, strict=True):
            if check:
                item["check"] = {"ok": not count.mismatches(), "mismatches": count.mismatches()}
        stdout.print_json(json.dumps(payload[0] if len(payload) == 1 else payload))
    else:
        for count in counts:
            _print_param_table(count)

    failures = [(count.config.name, problem) for count in counts for problem in count.mismatches()]
    if check:
        if failures:
            for name, problem in failures:
                stderr.print(
                    f"[bold red]check failed:[/] {name}: {problem}; the code is the truth: update the declared "
                    "number in the config file or fix the architecture",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(EXIT_REFUSED)
        if output_format is OutputFormat.text:
            stdout.print(f"declared parameter counts match the code for {len(counts)} config(s): {', '.join(names)}")


@app.command("plan")
def plan_command(
    config: Annotated[str, typer.Option("--config", help="Training recipe: a name (oracle850b) or a path.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes.")],
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node.")],
    gpu: Annotated[str, typer.Option("--gpu", help="GPU kind: a100-80gb, h100-80gb, h200-141gb.")] = "h100-80gb",
    expert: Annotated[
        int | None, typer.Option("--expert", help="Expert parallelism instead of the recipe's parallelism.expert.")
    ] = None,
    expert_states: Annotated[
        str,
        typer.Option(
            "--expert-states", help="With --expert > 1: zero (sharded over the expert-data group) or replicated."
        ),
    ] = "zero",
    activation_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--activation-checkpointing/--no-activation-checkpointing",
            help="Plan with or without per-layer activation checkpointing (default: as the trainer runs, without).",
        ),
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """Per-GPU memory, communication per step, step time and MFU of a recipe on a cluster layout; exit 1 when it
    does not fit (the submit gate's SUB005 refuses such a recipe).

    Example: oracle plan --config oracle850b --nodes 32 --gpus-per-node 8 --gpu h200-141gb
    """
    from oracle.train.config import load_train_config
    from oracle.train.plan import describe, model_sizes, plan, remedy

    if expert_states not in ("zero", "replicated"):
        raise UsageError(f"--expert-states {expert_states}: use zero or replicated")
    recipe = load_train_config(config)
    sizes = model_sizes(recipe.moe_config())
    layout = plan(
        recipe,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        gpu=gpu,
        expert=expert,
        expert_states="zero" if expert_states == "zero" else "replicated",
        activation_checkpointing=activation_checkpointing,
        sizes=sizes,
    )
    if output_format is OutputFormat.json:
        print(json.dumps(layout.as_json(), indent=2))
    else:
        print("\n".join(describe(layout)))
    if not layout.fits:
        short = f"{layout.shortfall_gib():.1f} GiB short per GPU"
        stderr.print(
            f"[bold red]does not fit:[/] {short}; {remedy(recipe, layout, sizes)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_REFUSED)


@data_app.command("run")
def data_run_command(
    inputs: Annotated[list[str], typer.Option("--input", help="Paths, globs, https:// URLs or s3:// URIs.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for shards/, stats.json, report.md, manifest.json.")],
    eval_sets: Annotated[Path | None, typer.Option("--eval-sets", help="Folder of evaluation-set JSONL files.")] = None,
    languages: Annotated[str, typer.Option("--languages", help="Comma-separated ISO 639-1 codes to keep.")] = "en,ru",
    max_shard_bytes: Annotated[int, typer.Option("--max-shard-bytes", help="Real size cap of a shard.")] = 512 * 2**20,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="Also write packed token sequences (oracle/data/format.py).")
    ] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", min=8, help="Length of a packed sequence.")] = 2048,
    output_format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.text,
) -> None:
    """Run the whole pipeline and account for every input document.

    Example: oracle data run --input 'raw/*.jsonl.gz' --input s3://corpus/part-0.parquet --output data/out
    """
    from oracle.data.pipeline import config_from_options, run_pipeline

    config = config_from_options(
        inputs,
        output,
        eval_sets=eval_sets,
        languages=languages,
        max_shard_bytes=max_shard_bytes,
        tokenizer=tokenizer,
        seq_len=seq_len,
    )
    stats = run_pipeline(config)
    if output_format is OutputFormat.json:
        stdout.print_json(json.dumps(stats.as_json()))
    else:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.dropped.items())) or "none"
        stdout.print(
            f"{stats.input_docs} documents in, {stats.kept_docs} kept in {len(stats.shards)} shard(s); dropped: "
            f"{dropped}; stats in {output / 'stats.json'}",
            highlight=False,
        )


@tokenizer_app.command("train")
def tokenizer_train_command(
    inputs: Annotated[
        list[Path], typer.Option("--input", help="Text, JSONL(.gz), WebDataset .tar shards, or directories of them.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for tokenizer.json, tokenizer_config.json, ...")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Must equal the model config's vocab_size.")] = 65536,
    config: Annotated[
        str, typer.Option("--config", help="The model config whose vocabulary it serves.")
    ] = "oracle850b",
    min_frequency: Annotated[int, typer.Option("--min-frequency", min=1)] = 2,
    output_format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.text,
) -> None:
    """Train the byte-level BPE tokenizer and save it (loads with tokenizers and transformers).

    Example: oracle tokenizer train --input data/out --vocab-size 65536 --out tokenizer/
    """
    from oracle.moe850b.config import load_config
    from oracle.tokenization.corpus import CorpusError
    from oracle.tokenization.tokenizer import save_tokenizer, train_tokenizer

    model = load_config(config)
    if vocab_size != model.vocab_size:
        raise UsageError(
            f"--vocab-size {vocab_size} differs from {model.name}'s vocab_size {model.vocab_size}; "
            f"use {model.vocab_size}"
        )
    try:
        tokenizer, report = train_tokenizer(inputs, vocab_size, min_frequency=min_frequency)
    except UnicodeDecodeError as exc:  # an input that is not UTF-8 text: the file, not a defect
        raise CorpusError(f"an input is not UTF-8 text ({exc}); pass text, JSONL or WebDataset files") from exc
    save_tokenizer(tokenizer, out, context_length=model.context_length)
    megabytes = report.bytes / 1e6
    summary = {
        "out": str(out),
        "documents": report.documents,
        "megabytes": round(megabytes, 3),
        "seconds": round(report.seconds, 3),
        "mb_per_second": round(megabytes / report.seconds, 3) if report.seconds else None,
        "learned_tokens": report.learned_tokens,
        "vocab_size": report.vocab_size,
        "corrupt_records": report.corrupt,
    }
    if output_format is OutputFormat.json:
        stdout.print_json(json.dumps(summary))
    else:
        stdout.print(
            f"trained on {report.documents} documents ({megabytes:.2f} MB) in {report.seconds:.2f} s; "
            f"{report.learned_tokens} learned tokens, padded to {report.vocab_size} with reserved tokens; "
            f"saved to {out}",
            highlight=False,
        )
        for problem in report.corrupt:
            stderr.print(f"skipped a corrupt record: {problem}", highlight=False, soft_wrap=True)


def _print_param_table(count: object) -> None:
    from oracle.moe850b.params import ParamCount

    assert isinstance(count, ParamCount)
    cfg = count.config
    table = Table(title=f"{cfg.name}: {count.total:,} total, {count.active:,} active per token")
    table.add_column("component")
    table.add_column("total", justify="right")
    table.add_column("active", justify="right")
    for name, numbers in count.by_component.items():
        table.add_row(name, f"{numbers['total']:,}", f"{numbers['active']:,}")
    table.add_row("[bold]all[/]", f"[bold]{count.total:,}[/]", f"[bold]{count.active:,}[/]")
    stdout.print(table)
    stdout.print(
        f"{cfg.n_experts} experts, top-{cfg.top_k}, {cfg.n_layers} layers, hidden {cfg.hidden_size}, "
        f"context {cfg.context_length}, vocabulary {cfg.vocab_size}",
        highlight=False,
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


@app.command("train")
def train_command(
    config: Annotated[
        str, typer.Option("--config", help="Training recipe: a name (oracle850b, oracle-mini, ...) or a YAML path.")
    ],
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="`auto`: the newest complete checkpoint of this run; or a checkpoint folder."),
    ] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Run folder under checkpoint.dir.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Overrides data.path of the recipe.")] = None,
) -> None:
    """Train inside a cluster job started by `oracle submit`; refuses anywhere else, before building anything.

    One process per data-parallel rank (torchrun or srun sets RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS).

    Example (in the job script `oracle submit` renders): srun oracle train --config oracle850b --resume auto
    """
    from guards.runtime import TrainingRefusedError, require_training_allowed

    decision = require_training_allowed()  # refused, or an audit log that cannot record the decision: one line
    from guards.process_policy import allow_and_seal
    from oracle.train.config import load_train_config
    from oracle.train.distributed import placement_from_env
    from oracle.train.trainer import environment_facts, run_directory, run_training

    recipe = load_train_config(config)
    refusal = submitted_recipe_refusal(decision.config_hash, recipe.sha256(), config, data)
    if refusal is not None:
        raise TrainingRefusedError(refusal)
    if data is not None:
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"path": str(data)})})
    # the process policy: weights may be read from this run's folder (the checkpoints it writes and resumes, each
    # verified against its manifest), an explicit --resume folder and the recipe's data, nothing else
    explicit = [resume] if resume not in (None, "auto") else []
    allow_and_seal(read_roots=[run_directory(recipe, run_name), recipe.data.path, *explicit])
    placement = placement_from_env()
    run_dir = run_training(
        recipe,
        resume=resume,
        run_name=run_name,
        facts=environment_facts(decision.job_id, local_override=decision.override, record=decision.record),
        placement=placement,
    )
    if placement.is_main:
        stdout.print(f"training finished: {run_dir}", highlight=False)
    if placement.world_size > 1:
        # Everything is written, sealed and closed, and the process group is destroyed. Native threads of the
        # collectives (gloo, DeepSpeed's shared-memory op) can still abort in C++ static destructors at interpreter
        # exit ("terminate called without an active exception", seen on CPU under load), turning a finished run
        # into exit -6 for torchrun and srun: leave without running them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def submitted_recipe_refusal(submitted: str | None, recipe_hash: str, config: str, data: Path | None) -> str | None:
    """Why a submitted job may not train this recipe (None: it may). `submitted`: the config hash of the verified
    submission record (None outside a submitted job); inside one, exactly what the submit gate checked runs."""
    if submitted is None:
        return None
    if data is not None:
        return (
            "training refused: --data is not allowed in a submitted job (the gate checked the recipe's data.path); "
            "put the path in the recipe and submit it"
        )
    if recipe_hash != submitted:
        return (
            f"training refused: recipe {config} (config hash {recipe_hash[:12]}) is not the one this job was "
            f"submitted with ({submitted[:12]}); submit it with `oracle submit`"
        )
    return None


class SubmitTarget(StrEnum):
    slurm = "slurm"
    k8s = "k8s"
    argo = "argo"


class KillTarget(StrEnum):
    slurm = "slurm"
    k8s = "k8s"
    argo = "argo"


@app.command("submit")
def submit_command(
    target: Annotated[SubmitTarget, typer.Option("--target", help="Where the job runs.")],
    config: Annotated[
        str, typer.Option("--config", help="Training recipe: a name (oracle850b, oracle-mini) or a committed path.")
    ] = "oracle850b",
    nodes: Annotated[int | None, typer.Option("--nodes", help="Nodes (default: the recipe's world / GPUs).")] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs per node; 0 trains on CPU processes.")
    ] = None,
    time: Annotated[str, typer.Option("--time", help="Wall-time limit, HH:MM:SS.")] = "24:00:00",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Run the gate, print the spec, send nothing.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Submit even when the same commit and config is queued or running.")
    ] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Instead of training: the data pipeline's stages over this plan's work folder."),
    ] = None,
    data_output: Annotated[
        Path | None, typer.Option("--output", help="With --data: the folder the pipeline's finish stage writes.")
    ] = None,
) -> None:
    """Submit a training job (or, with --data, the data pipeline's stages) through the submit gate: clean tree,
    attestation for HEAD, spec checks, audit.

    Example: oracle submit --target slurm --config oracle850b --nodes 32 --gpus-per-node 8 --time 72:00:00
    Example: oracle submit --target slurm --data /shared/work --output /shared/data/out
    """
    from infra.submit import SubmitOptions, SubmitRefusedError, describe, submit

    options = SubmitOptions(
        target=target.value,
        config=config,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        time=time,
        dry_run=dry_run,
        force=force,
    )
    if (data is None) != (data_output is None):
        raise UsageError("--data and --output go together: the plan's work folder and the folder the pipeline writes")
    if data is not None and target is not SubmitTarget.slurm:
        raise UsageError(f"--data runs on SLURM only for now (--target slurm); {target.value} fan-out is not built yet")
    try:
        if data is not None and data_output is not None:
            from infra.data_submit import submit_data

            outcome = submit_data(Path.cwd(), data, data_output, time=time, dry_run=dry_run, force=force)
        else:
            outcome = submit(Path.cwd(), options)
    except SubmitRefusedError as exc:
        raise SubmitRefusedError(f"submission refused: {exc}") from exc
    if output_format is OutputFormat.json:
        print(json.dumps(outcome.as_json(), indent=2))
        return
    if outcome.dry_run or not outcome.submitted:
        print(outcome.spec, end="" if outcome.spec.endswith("\n") else "\n")
    if outcome.submitted and target is SubmitTarget.slurm:
        print(outcome.job_id)
    stderr.print(describe(outcome), highlight=False, soft_wrap=True)


@app.command("kill")
def kill_command(
    target: Annotated[
        KillTarget, typer.Option("--target", help="The scheduler whose jobs to cancel: slurm, k8s or argo.")
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """The kill switch: cancel every queued or running job of this project (and only this project's).

    Example: oracle kill --target slurm --yes
    Example: oracle kill --target argo
    """
    from infra.kill_switch import kill
    from infra.spec import PartialCancelError

    def confirm(found: list[str]) -> bool:
        if yes:
            return True
        stderr.print(f"{len(found)} job(s) of this project:\n  " + "\n  ".join(found), highlight=False)
        if not sys.stdin.isatty():
            stderr.print("not confirmed (no terminal to ask on): pass --yes to cancel them", highlight=False)
            return False
        return typer.confirm("cancel them all?", default=False)

    try:
        report = kill(Path.cwd(), target.value, confirm=confirm)
    except PartialCancelError as exc:  # what was cancelled goes to stdout before the error
        if exc.cancelled:
            stdout.print(f"cancelled {len(exc.cancelled)} job(s): {', '.join(exc.cancelled)}", highlight=False)
        raise
    if output_format is OutputFormat.json:
        print(json.dumps({"target": report.target, "found": report.found, "cancelled": report.cancelled}, indent=2))
    elif not report.found:
        stdout.print(f"no queued or running {report.target} job of project {report.project!r}", highlight=False)
    elif report.cancelled:
        stdout.print(f"cancelled {len(report.cancelled)} job(s): {', '.join(report.cancelled)}", highlight=False)
    if report.found and not report.confirmed:
        raise typer.Exit(EXIT_REFUSED)


DEFAULT_REPO_ID = "oracle-ai/oracle850b-moe"


@hub_app.command("build")
def hub_build_command(
    out: Annotated[Path | None, typer.Option("--out", help="Where to stage (default .oracle/hub/staged).")] = None,
    repo_id: Annotated[str, typer.Option("--repo-id", help="The repository the card names.")] = DEFAULT_REPO_ID,
    config: Annotated[str, typer.Option("--config", help="The model preset the card describes.")] = "oracle850b",
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="The folder `oracle export --format hf` wrote (its signed provenance verifies)."
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="A saved tokenizer folder (default: the committed one, if any).")
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """Stage exactly the files to publish — model card, config, generation config, prompts, tokenizer, attestation,
    weights with verifying provenance — validated offline. Sends nothing.

    Example: oracle hub build --out /tmp/oracle-card
    """
    from guards.attestation import AttestationError
    from hub.stage import StageError, build

    try:
        staged = build(
            Path.cwd(), repo_id=repo_id, out=out, checkpoint=checkpoint, tokenizer=tokenizer, config_name=config
        )
    except (AttestationError, StageError) as exc:
        raise StageError(f"hub build refused: {exc}") from exc
    if output_format is OutputFormat.json:
        print(json.dumps(staged.manifest(), indent=2))
        return
    for name, digest in staged.files.items():
        stdout.print(f"{name:32} sha256:{digest[:16]}", highlight=False)
    stdout.print(f"staged {len(staged.files)} files in {staged.directory} (validated; nothing sent)", highlight=False)


@hub_app.command("publish")
def hub_publish_command(
    repo_id: Annotated[str, typer.Option("--repo-id", help="ORG/NAME on the Hub.")],
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Hub URL (default $HF_ENDPOINT or https://huggingface.co).")
    ] = None,
    private: Annotated[bool, typer.Option("--private/--public", help="Visibility of a new repository.")] = True,
    config: Annotated[str, typer.Option("--config", help="The model preset the card describes.")] = "oracle850b",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would change; send nothing.")] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Publish the folder `oracle export --format hf` wrote (signed provenance)."),
    ] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="A saved tokenizer folder.")] = None,
    staged: Annotated[
        Path | None, typer.Option("--staged", help="Publish a folder `oracle hub build --out` staged (re-checked).")
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """Publish through the publish gate: attestation for HEAD on a clean tree, the staged files checked, one commit.

    The token comes from HF_TOKEN (or HUGGINGFACE_TOKEN); it is never printed, logged or published.

    Example: HF_TOKEN=hf_… oracle hub publish --repo-id oracle-ai/oracle850b-moe --dry-run
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # the client's retry chatter would bury our one line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if endpoint:
        os.environ["HF_ENDPOINT"] = endpoint.rstrip("/")  # read by huggingface_hub when it is imported
    from hub.publish import publish

    publication = publish(
        Path.cwd(),
        repo_id=repo_id,
        endpoint=endpoint,
        private=private,
        dry_run=dry_run,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        staged_dir=staged,
        config_name=config,
    )
    if output_format is OutputFormat.json:
        print(json.dumps(publication.as_json(), indent=2))
        return
    for change in publication.changes:
        stdout.print(f"{change.action:10} {change.path}", highlight=False)
    if publication.dry_run:
        stdout.print(f"dry run: nothing sent to {publication.endpoint}", highlight=False)
    elif publication.commit_oid is None:
        stdout.print(f"{repo_id} already holds exactly these files: no commit made", highlight=False)
    else:
        stdout.print(f"published {repo_id} commit {publication.commit_oid} ({publication.commit_url})", highlight=False)


@app.command("serve")
def serve_command(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", help="A checkpoint folder (with provenance.json) or a run folder (newest one)."),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).", min=0, max=65535)] = 8000,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="Requests generated together (KV-cache slots).", min=1)
    ] = 16,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests that may wait for a slot; beyond them: 429.", min=0)
    ] = 64,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="Tokenizer folder (default: the checkpoint's, else committed).")
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="Model id for clients (default: the config's name).")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda when present).")
    ] = None,
    shutdown_timeout: Annotated[
        int, typer.Option("--shutdown-timeout", help="Seconds to let in-flight requests finish on SIGTERM.", min=0)
    ] = 30,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="CPU threads for the model's operators (default: torch's, all cores).", min=1),
    ] = None,
) -> None:
    """Serve a checkpoint through an OpenAI-compatible API; refuses weights whose signed provenance does not verify.

    With ORACLE_SERVE_API_KEY set, every route but /health, /ready and /metrics requires
    `Authorization: Bearer <that key>`.

    Example: oracle serve --checkpoint runs/oracle-mini-42/step-00000040 --tokenizer tokenizer/ --port 8000
    """
    import logging

    from oracle.serve.loading import ServeLoadError, ServeOptions
    from oracle.serve.server import api_key_from_env, serve

    try:
        api_key = api_key_from_env(os.environ)
    except ValueError as exc:  # a key no HTTP header can carry: a setting to fix
        raise ServeLoadError(str(exc)) from exc
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = ServeOptions(
        checkpoint=checkpoint,
        root=Path.cwd(),
        tokenizer=tokenizer,
        name=served_model_name,
        max_batch=max_concurrency,
        max_queue=max_queue,
        device=device,
    )
    failure = serve(options, host=host, port=port, shutdown_timeout=shutdown_timeout, api_key=api_key)
    if failure is not None:
        raise ServeLoadError(f"loading {checkpoint} failed: {failure}")


class ExportFormat(StrEnum):
    hf = "hf"


SHARD_SIZE = re.compile(r"\d+(\.\d+)?\s*[KMGT]B", re.IGNORECASE)  # what huggingface_hub's shard splitter parses


@app.command("export")
def export_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A checkpoint folder (step-NNNNNNNN) whose signed provenance verifies.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The folder to write (new or empty; --force replaces it).")],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="hf: transformers' Qwen2MoeForCausalLM.")
    ] = ExportFormat.hf,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest weights shard, e.g. 5GB.")] = "5GB",
) -> None:
    """Export a checkpoint for the ecosystem: a folder transformers loads with AutoModelForCausalLM (no remote code),
    its tokenizer, and a provenance record over every file naming the source checkpoint (signed with
    ORACLE_SIGNING_KEY when set).

    Example: oracle export --checkpoint runs/oracle-mini-42/step-00000040 --out exports/oracle-mini-hf
    """
    from guards.keys import load_signing_key
    from hub.export import ExportError, audited_export

    if not SHARD_SIZE.fullmatch(max_shard_size.strip()):
        raise UsageError(f"--max-shard-size {max_shard_size}: use a number and a unit (KB, MB, GB or TB), e.g. 5GB")
    try:
        exported = audited_export(
            checkpoint, out, Path.cwd(), force=force, max_shard_size=max_shard_size, signing_key=load_signing_key()
        )
    except ExportError as exc:
        if exc.refused:
            raise ExportError(f"export refused: {exc}", refused=True) from exc
        raise
    signed = "signed" if exported.signed else "unsigned (set ORACLE_SIGNING_KEY to sign it)"
    stdout.print(
        f"exported {checkpoint} as {export_format.value} ({exported.shards} weights shard(s), "
        f"{len(exported.files)} files) into {exported.directory}; provenance {signed}",
        highlight=False,
    )
