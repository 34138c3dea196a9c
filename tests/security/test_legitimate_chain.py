"""The legitimate chain, end to end, under a trust root made by `oracle trust init` (tests.trust, the session's):

`make guards` (the ci gate, then a signed attestation) → `oracle submit --target slurm` (a signed record) → the job
trains on the real one-node SLURM cluster (the scheduler confirms it) → signed provenance → `oracle serve` loads the
checkpoint (each rank's part of the weights) and answers → `oracle export --format hf` streams it into a transformers
folder → `oracle hub publish --checkpoint` uploads that → `oracle guards audit verify` finds the log intact against
its anchors. Every gate the attacks in this folder are refused by lets the honest path through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx2 as httpx

from guards.attestation import verify_attestation
from guards.provenance import verify_provenance
from guards.submission import load_record
from guards.trust import load_trust_root
from oracle.tokenization.tokenizer import save_tokenizer, train_tokenizer
from tests.checkouts import REPO, git, make_repository_checkout, oracle
from tests.hub.hub_server import HubServer
from tests.infra.slurm_cluster import SlurmCluster
from tests.serve.fixtures import ServedCheckpoint, start_server
from tests.train.conftest import write_corpus
from tests.trust import session_trust

SUBMIT = ["submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0", "--time", "00:15:00"]
REPO_ID = "oracle-ai/oracle-mini"


def trust_root_keys(role: str) -> set[str]:
    return set(load_trust_root(REPO).keys_for(role))


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_make_guards_attest_submit_train_serve_publish(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    trust = session_trust()
    assert "trust root OK" in _ok(oracle(REPO, "trust", "verify"))  # the file `oracle trust init` wrote verifies
    root = make_repository_checkout(tmp_path)
    # the corpus as `oracle data run --tokenizer` leaves it: token shards with the tokenizer they were encoded with,
    # which the job copies into each checkpoint and `oracle serve` loads from there
    (tmp_path / "text.txt").write_text("A few words to learn merges from, again and again.\n" * 50)
    tokenizer, _ = train_tokenizer([tmp_path / "text.txt"], 4096)
    save_tokenizer(tokenizer, tmp_path / "tokenizer", context_length=512)
    shutil.rmtree(root / "data" / "mini")
    write_corpus(root / "data" / "mini", tokenizer=tmp_path / "tokenizer")
    signer = {"ORACLE_SIGNING_KEY": str(tmp_path / "signing.pem")}

    # make guards: the README's command, in the checkout, with the project's venv (linked in; not rebuilt)
    stamp = (root / ".venv" / ".requirements.lock.sha256").read_text().split()[0]
    assert stamp == hashlib.sha256((root / "requirements.lock").read_bytes()).hexdigest(), "the venv would rebuild"
    env = {**os.environ, "PYTHONPATH": str(root), **trust.env, **signer}
    guards = subprocess.run(["make", "guards"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert guards.returncode == 0, guards.stdout + guards.stderr
    attestation = verify_attestation(root)
    assert attestation.keyid in trust_root_keys("attestation")  # signed by the trust root's attestation key
    assert attestation.development is False
    assert attestation.statement["predicate"]["trust"]["development"] is False
    _ok(oracle(root, "guards", "verify"))

    # submit: a record signed by the submitter's key; the job runs from an export of the commit
    answer = json.loads(_ok(oracle(root, *SUBMIT, "--format", "json", env={**slurm_cluster.env, **signer})))
    record = load_record(Path(answer["record"]))
    assert (record.commit, record.attestation_digest) == (git(root, "rev-parse", "HEAD"), attestation.digest)
    job_id = answer["job_id"]
    state = slurm_cluster.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=600)
    log = root / "runs" / "slurm" / f"oracle-train-oracle-mini-{job_id}.out"
    assert state == "COMPLETED", log.read_text() if log.exists() else slurm_cluster.logs()

    # the job's checkpoint: provenance signed, naming the job the scheduler confirmed
    checkpoint = root / "runs" / f"oracle-mini-{job_id}" / "step-00000040"
    provenance = verify_provenance(checkpoint, root)
    assert (provenance["job_id"], provenance["submission_digest"]) == (job_id, answer["digest"])
    assert provenance["local_override"] is False
    audit = [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    allowed = [e for e in audit if e["gate"] == "train" and e["result"] == "allowed"]
    assert len(allowed) == 2  # one decision per rank, inside the job
    assert all("confirmed by the scheduler" in e["details"]["reason"] for e in allowed)

    # serve: the checkpoint as the job left it (weights, config, the data's tokenizer) under the trust root
    served = ServedCheckpoint(root, checkpoint, checkpoint, tmp_path / "signing.pem")
    server = start_server(served, tmp_path / "serve.log", env=trust.env)
    try:
        assert httpx.get(f"{server.url}/ready", timeout=30).status_code == 200
        reply = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "oracle-mini", "prompt": "Numbers 0 1 2", "max_tokens": 4},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] is not None
    finally:
        server.stop()

    # export: the job's per-rank parts streamed into the folder transformers loads, with its own signed record
    exported = root / "exports" / "oracle-mini-hf"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(exported), "--max-shard-size", "4MB"]
    assert "signed" in _ok(oracle(root, *args, env=signer))
    shards = sorted(p.name for p in exported.glob("model-*.safetensors"))
    assert len(shards) > 1, shards
    assert verify_provenance(exported, root)["source"]["job_id"] == job_id

    # publish: that folder to a Hub (the strict stand-in server; the real huggingface_hub client sends it, the
    # shards through Git LFS)
    token = "hf_" + os.urandom(17).hex()
    with HubServer({token: "alice"}) as hub:
        hub.orgs["oracle-ai"] = {"alice"}
        args = ["hub", "publish", "--repo-id", REPO_ID, "--config", "oracle-mini", "--checkpoint", str(exported)]
        _ok(oracle(root, *args, "--endpoint", hub.url, env={"HF_TOKEN": token, "HF_HUB_OFFLINE": "0"}))
        files = hub.files(REPO_ID)
        for name in shards:
            assert files[name] == (exported / name).read_bytes(), name
        assert json.loads(files["provenance.json"]) == json.loads((exported / "provenance.json").read_text())

    decisions = [(e["gate"], e["result"]) for e in map(json.loads, (root / ".oracle" / "audit.jsonl").open())]
    assert {("submit", "submitted"), ("serve", "allowed"), ("export", "allowed"), ("publish", "published")} <= set(
        decisions
    )
    verify = _ok(oracle(root, "guards", "audit", "verify"))
    assert "intact" in verify
    assert git(root, "status", "--porcelain") == ""  # nothing the chain wrote is in git's view
