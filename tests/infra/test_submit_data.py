"""`oracle submit --target slurm --data WORK --output OUT` against the real one-node SLURM cluster: the data
pipeline's stages as gated jobs (a two-task array, the global stage, a second array, finish), ending with the same
stats.json as the one-process `oracle data run`; a failed task is resubmitted and only what was left runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

from guards.submission import load_record
from tests.checkouts import oracle
from tests.data.test_pipeline import EN, _doc
from tests.infra.slurm_cluster import SlurmCluster


def _corpus(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    rng = random.Random(21)
    texts = [_doc(EN, rng) for _ in range(18)]
    texts += [texts[0].upper(), texts[5] + " and one more sentence here."]  # an exact and a near duplicate
    paths = []
    for number in range(3):
        path = folder / f"part-{number}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[number::3]))
        paths.append(str(path))
    return paths


def _audit(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]


def test_the_pipeline_runs_as_gated_jobs_and_a_failed_task_is_resubmitted(
    repository_checkout: Path, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    root = repository_checkout
    inputs = _corpus(tmp_path / "in")
    reference = tmp_path / "reference"
    done = oracle(root, "data", "run", *(a for p in inputs for a in ("--input", p)), "--output", str(reference))
    assert done.returncode == 0, done.stderr
    work, out = tmp_path / "work", tmp_path / "out"
    done = oracle(
        root, "data", "stage", "init", "--work", str(work), "--tasks", "2", *(a for p in inputs for a in ("--input", p))
    )
    assert done.returncode == 0, done.stderr
    env = {**slurm_cluster.env, "ORACLE_SIGNING_KEY": str(root.parent / "signing.pem")}
    submit = ["submit", "--target", "slurm", "--data", str(work), "--output", str(out), "--time", "00:15:00"]

    # task 1 (inputs 1) cannot read its input: its prepare fails, and nothing after it runs
    hidden = Path(inputs[1]).rename(tmp_path / "hidden.jsonl")
    done = oracle(root, *submit, "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    record = load_record(Path(first["record"]))
    assert (record.kind, record.target) == ("data", "slurm")
    assert record.config_hash == __import__("hashlib").sha256((work / "run.json").read_bytes()).hexdigest()
    assert slurm_cluster.wait_for_state(first["job_id"], {"CANCELLED"}, timeout=600) == "CANCELLED"
    assert (work / "prepare" / "task-00000" / "result.json").exists()
    assert not (work / "prepare" / "task-00001").exists()
    assert not out.exists()

    # resubmitted with the input back: task 0 is not done again, the rest runs to the end
    hidden.rename(inputs[1])
    stamp = (work / "prepare" / "task-00000" / "result.json").stat().st_mtime_ns
    done = oracle(root, *submit, "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    state = slurm_cluster.wait_for_state(second["job_id"], {"COMPLETED"}, timeout=600)
    logs = "\n".join(p.read_text() for p in sorted((root / "runs" / "slurm").glob("*data*.out")))
    assert state == "COMPLETED", logs[-4000:]
    assert (work / "prepare" / "task-00000" / "result.json").stat().st_mtime_ns == stamp
    assert "prepare task 0: already done" in logs
    assert (out / "stats.json").read_bytes() == (reference / "stats.json").read_bytes()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}

    # every stage ran under the runtime check, in the job the scheduler confirmed, and said so in the audit log
    allowed = [e for e in _audit(root) if e["gate"] == "data" and e["result"] == "allowed"]
    stages = sorted(str(e["details"]["stage"]) for e in allowed)  # type: ignore[index]
    assert stages.count("prepare") == 4  # tasks 0 and 1 (which failed reading), then 0 (a no-op) and 1 again
    assert {"cluster", "write", "finish"} <= set(stages)
    assert all(e["details"]["plan"] == record.config_hash for e in allowed)  # type: ignore[index]


def test_the_plans_inputs_are_judged_at_submit() -> None:
    """Red team helper-39: the plan is where outside content enters a data job, so its inputs are judged like a
    reference in the tree (EXT002, any host spelling) and none is fetched in plain text."""
    import pytest

    from infra.data_submit import _check_inputs
    from infra.submit import SubmitRefusedError
    from policies.settings import Settings

    hub = "hugging" + "face.co"  # assembled: the tree's own scan would (rightly) flag the literal URL
    settings = Settings()
    short = "HF" + ".CO"  # mixed case: hosts are compared whatever their case
    for uri in (
        f"https://{hub}/acme/some-model/resolve/main/part-0.jsonl",
        f"https://{short}/acme/m/resolve/main/a.txt",
    ):
        with pytest.raises(SubmitRefusedError, match="EXT002 the plan's input"):
            _check_inputs([uri], settings)
    with pytest.raises(SubmitRefusedError, match="plain text"):
        _check_inputs(["http://data.example.org/a.jsonl"], settings)
    _check_inputs(["https://data.example.org/a.jsonl", "s3://corpus/a.jsonl", "/shared/raw/a.jsonl"], settings)
