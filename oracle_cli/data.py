"""`oracle data stage …`: the pipeline's stages one at a time, for a scheduler (oracle/data/pipeline.py).

    oracle data stage init --work W --tasks 2 --input 'raw/*.jsonl.gz' [--eval-sets E] [--tokenizer T]
    oracle data stage prepare --work W --task 0      # and --task 1, anywhere, in any order, or both at once
    oracle data stage cluster --work W               # after every prepare task
    oracle data stage write --work W --task 0        # and --task 1
    oracle data stage finish --work W --output data/out

`--task` defaults to SLURM_ARRAY_TASK_ID, so a job array's script can leave it out. Each stage is a no-op when its
result exists for this plan, and a killed one is simply run again. A stage that cannot run exits 2 with one line, a
submitted job's stage that cannot show it runs what was submitted exits 1 (the front door's handler, oracle_cli.app).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stage_app = typer.Typer(help="The pipeline's stages one at a time (init, prepare, cluster, write, finish).")
_out = Console()

WorkOption = Annotated[Path, typer.Option("--work", help="The run's work folder (shared by every task).")]
TaskOption = Annotated[
    int, typer.Option("--task", envvar="SLURM_ARRAY_TASK_ID", min=0, help="This task's number (0 .. tasks-1).")
]


def _job_check(stage: str, work: Path) -> None:
    """Inside a job `oracle submit --data` started, the runtime check (guards/runtime.py) before anything runs."""
    from guards.runtime import require_data_stage_allowed
    from oracle.data.pipeline import load_plan, plan_digest

    load_plan(work)  # a missing or unreadable plan: the stage's own message
    require_data_stage_allowed(stage, plan_digest(work))


def _run(label: str, stage: str, *args: object) -> None:
    """Run `oracle.data.pipeline.<stage>(*args)` and say whether it did anything."""
    from oracle.data import pipeline

    _job_check(stage, args[0])  # type: ignore[arg-type]
    ran = getattr(pipeline, stage)(*args)
    _out.print(f"{label}: {'done' if ran else 'already done for this plan (nothing to do)'}", highlight=False)


@stage_app.command("init")
def init_command(
    work: WorkOption,
    inputs: Annotated[list[str], typer.Option("--input", help="Paths, globs, https:// URLs or s3:// URIs.")],
    tasks: Annotated[int, typer.Option("--tasks", min=1, help="How many tasks the per-task stages are split into.")],
    eval_sets: Annotated[Path | None, typer.Option("--eval-sets", help="Folder of evaluation-set files.")] = None,
    languages: Annotated[str, typer.Option("--languages", help="Comma-separated ISO 639-1 codes to keep.")] = "en,ru",
    max_shard_bytes: Annotated[int, typer.Option("--max-shard-bytes", help="Real size cap of a shard.")] = 512 * 2**20,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Also write packed token sequences.")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", min=8, help="Length of a packed sequence.")] = 2048,
) -> None:
    """Write the run's plan (WORK/run.json); the same plan again is a no-op."""
    from oracle.data.pipeline import config_from_options, init

    config = config_from_options(
        inputs,
        Path(),
        eval_sets=eval_sets,
        languages=languages,
        max_shard_bytes=max_shard_bytes,
        tokenizer=tokenizer,
        seq_len=seq_len,
    )
    plan = init(work, config, tasks)
    _out.print(f"plan: {len(plan['inputs'])} input(s) in {plan['tasks']} task(s); {work / 'run.json'}", highlight=False)


@stage_app.command("prepare")
def prepare_command(work: WorkOption, task: TaskOption) -> None:
    """Ingest, clean, language ID, decontaminate and sign the task's inputs."""
    _run(f"prepare task {task}", "prepare", work, task)


@stage_app.command("cluster")
def cluster_command(work: WorkOption) -> None:
    """Near-duplicate clusters over every task's documents (after every prepare task)."""
    _run("cluster", "cluster", work)


@stage_app.command("write")
def write_command(work: WorkOption, task: TaskOption) -> None:
    """The task's survivors into shards (and packed token sequences)."""
    _run(f"write task {task}", "write", work, task)


@stage_app.command("finish")
def finish_command(
    work: WorkOption,
    output: Annotated[Path, typer.Option("--output", help="Folder for shards/, stats.json, report.md, manifest.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json.")] = False,
) -> None:
    """Assemble the output folder from every task's results (after every write task)."""
    from oracle.data.pipeline import finish

    _job_check("finish", work)
    stats = finish(work, output)
    if as_json:
        _out.print_json(json.dumps(stats.as_json()))
    else:
        _out.print(
            f"{stats.input_docs} documents in, {stats.kept_docs} kept in {len(stats.shards)} shard(s); "
            f"stats in {output / 'stats.json'}",
            highlight=False,
        )
