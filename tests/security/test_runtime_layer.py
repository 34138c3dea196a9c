"""The runtime layer (guards/process_policy.py) refuses what static analysis let through.

Model code that fetches weights from a Hub (a local HTTP server on 127.0.0.1 stands in for it) or opens a foreign
weights file, with a waiver that makes the static gate let it through, is attested and submitted as usual; the job
on the real one-node SLURM cluster fails with the process policy's refusal, the audit entry names the host or the
file, the stand-in Hub receives no request and no weights are written. A server whose checkpoint folder gains a
weights file after its provenance verified dies on the first request that reaches for it, naming the file; before
that it serves. The honest chain with the hooks on is tests/security/test_legitimate_chain.py.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2 as httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.checkouts import attest, git, make_repository_checkout, oracle
from tests.infra.slurm_cluster import SlurmCluster
from tests.serve.fixtures import make_served_checkpoint, start_server
from tests.trust import session_trust

SUBMIT = ["submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0", "--time", "00:15:00"]
MODEL = Path("oracle/moe850b/model.py")
INIT_END = '        if self.embed_tokens.weight.device.type != "meta":\n            self.init_weights()\n'
FORWARD_START = "        S = input_ids_BS.shape[1]\n"


class StandInHub:
    """Answers any GET with the bytes of a small safetensors file, and counts the requests it received."""

    def __init__(self, payload: bytes) -> None:
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def foreign_weights(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"model.layers.0.mlp.weight": torch.ones(8, 8)}, str(path))
    return path


@pytest.fixture
def stand_in_hub(tmp_path: Path) -> Iterator[StandInHub]:
    hub = StandInHub(foreign_weights(tmp_path / "payload" / "model.safetensors").read_bytes())
    try:
        yield hub
    finally:
        hub.close()


def plant(root: Path, anchor: str, code: str, *, rules: tuple[str, ...]) -> None:
    """Insert `code` after `anchor` in the model and waive what the static gate reports there (path waivers of
    non-critical rules, within the floor's limits), then commit: the static gate passes it."""
    model = root / MODEL
    text = model.read_text()
    assert anchor in text
    model.write_text(text.replace(anchor, anchor + code, 1))
    today = date.today()
    waivers = "".join(
        f'\n[[waiver]]\nrule = "{rule}"\npath = "{MODEL.as_posix()}"\nreason = "the runtime layer\'s test plants it"\n'
        f'owner = "platform@oracle.invalid"\ncreated = {today}\nexpires = {today + timedelta(days=30)}\n'
        for rule in rules
    )
    with (root / "policies" / "waivers.toml").open("a") as handle:
        handle.write(waivers)
    git(root, "commit", "-qam", "model code the static gate was told to let through")


def runtime_refusals(root: Path) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    return [entry for entry in entries if (entry["gate"], entry["result"]) == ("runtime", "refused")]


# Both wait until they run inside a job, as code meant to slip past the gate's own run of the model would.
DOWNLOAD = """        if "SLURM_JOB_ID" in __import__("os").environ:
            from huggingface_hub import constants, hf_hub_download

            constants.HF_HUB_OFFLINE = False  # the offline switch is not what is relied on
            hf_hub_download("meta-llama/Llama-2-7b-hf", "model.safetensors", endpoint="{url}", cache_dir="{cache}")
"""
OPEN = """        if "SLURM_JOB_ID" in __import__("os").environ:
            from safetensors.torch import load_file

            self.load_state_dict(load_file("{path}"), strict=False)
"""


@pytest.mark.parametrize("attack", ["hub download", "foreign weights file"])
def test_a_job_whose_model_code_reaches_for_foreign_weights_fails_with_the_refusal(
    attack: str, tmp_path: Path, slurm_cluster: SlurmCluster, stand_in_hub: StandInHub
) -> None:
    root = make_repository_checkout(tmp_path)
    cache = tmp_path / "hf-cache"
    foreign = foreign_weights(tmp_path / "elsewhere" / "model.safetensors")
    if attack == "hub download":
        plant(root, INIT_END, DOWNLOAD.format(url=stand_in_hub.url, cache=cache), rules=("EXT001", "EXT003", "ARCH005"))
    else:
        plant(root, INIT_END, OPEN.format(path=foreign), rules=("EXT001", "EXT002"))
    key = tmp_path / "signing.pem"
    attest(root, key)  # the ci gate passes: the waivers let the planted lines through
    signer = {"ORACLE_SIGNING_KEY": str(key)}
    done = oracle(root, *SUBMIT, "--format", "json", env={**slurm_cluster.env, **signer, **session_trust().env})
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    state = slurm_cluster.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=600)
    log = root / "runs" / "slurm" / f"oracle-train-oracle-mini-{job_id}.out"
    output = log.read_text() if log.exists() else slurm_cluster.logs()
    assert state == "FAILED", output

    refused = [line for line in output.splitlines() if "refused by the process policy" in line]
    assert refused, output
    assert all(line.startswith("oracle train: RUN004 refused by the process policy: ") for line in refused)
    assert f"{MODEL.as_posix()}:" in refused[0]  # it names the code that asked
    entries = runtime_refusals(root)
    assert entries, "no audit entry for the refusal"
    details = entries[0]["details"]
    assert isinstance(details, dict)
    assert details["command"] == "train"
    if attack == "hub download":
        assert (details["host"], details["port"]) == ("127.0.0.1", int(stand_in_hub.url.rsplit(":", 1)[1]))
        assert stand_in_hub.requests == []  # not one byte left the job
    else:
        assert details["file"] == str(foreign.resolve())
        assert details["format"] == "safetensors"
    # nothing was trained, downloaded or written as weights
    assert not any((root / "runs").rglob("*.safetensors"))
    assert not any(path for path in (root / "runs").rglob("step-*"))
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))


def test_a_server_refuses_a_weights_file_its_checkpoint_gains_after_the_check(tmp_path: Path) -> None:
    served = make_served_checkpoint(tmp_path / "served")
    extra = served.checkpoint / "adapter.safetensors"
    root = make_repository_checkout(tmp_path)
    code = (
        f'        if __import__("os").path.exists("{extra}"):  # an adapter dropped in later\n'
        "            from safetensors.torch import load_file\n\n"
        f'            self.load_state_dict(load_file("{extra}"), strict=False)\n'
    )
    plant(root, FORWARD_START, code, rules=("EXT001", "EXT002"))
    trust = session_trust()
    server = start_server(served, tmp_path / "serve.log", env={**trust.env, "PYTHONPATH": str(root)})
    try:
        body = {"model": "oracle-mini", "prompt": "The quick brown fox", "max_tokens": 2}
        answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text  # with the hooks on, the verified checkpoint serves
        shutil.copyfile(foreign_weights(tmp_path / "foreign" / "adapter.safetensors"), extra)
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        assert server.process.wait(60) == 1
    finally:
        if server.process.poll() is None:
            server.stop()
    output = server.output()
    (line,) = [line for line in output.splitlines() if "refused by the process policy" in line]
    expected = f"oracle serve: RUN004 refused by the process policy: opening {extra.resolve()}: safetensors"
    assert line.startswith(expected)
    (entry,) = runtime_refusals(served.root)
    details = entry["details"]
    assert isinstance(details, dict)
    assert (details["command"], details["file"]) == ("serve", str(extra.resolve()))


def test_the_gates_own_run_of_the_model_code_is_under_the_process_policy(
    tmp_path: Path, stand_in_hub: StandInHub
) -> None:
    """The architecture policy builds the model with the checkout's code: code that downloads as soon as it runs
    is refused there, in a subprocess under the process policy, and the gate fails instead of attesting."""
    root = make_repository_checkout(tmp_path)
    unconditional = DOWNLOAD.format(url=stand_in_hub.url, cache=tmp_path / "hf-cache").replace(
        'if "SLURM_JOB_ID" in __import__("os").environ:', "if True:"
    )
    plant(root, INIT_END, unconditional, rules=("EXT001", "EXT003", "ARCH005"))
    done = oracle(root, "guards", "run", "--gate", "ci")
    assert done.returncode != 0, done.stdout + done.stderr
    assert "refused by the process policy: connecting to 127.0.0.1" in done.stdout + done.stderr
    assert stand_in_hub.requests == []
    (entry,) = runtime_refusals(root)
    assert entry["details"]["command"] == "guards architecture"  # type: ignore[index]
