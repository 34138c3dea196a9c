"""The checks the publish and submit gates make on what the tree does not hold — the files about to be uploaded
(hub/stage.py, PUB001-PUB005) and the job about to reach a scheduler (infra/checks.py, SUB001-SUB005) — the checks
commands make when they run (guards/runtime.py and guards/process_policy.py, RUN001-RUN004) and the trust root's own
checks (guards/attestation.py and guards/audit.py, TRU003-TRU004), as rules of the one catalog, so that `oracle
guards rules`, `oracle guards explain`, SARIF and the docs know them like every other check.

They are not waivable: each refuses something that is about to leave the machine or start running, at the moment
it happens, and no file in the tree (where waivers live) may excuse that. The code that makes each check prefixes
its one-line refusal with the rule's id; a test keeps the two in step.
"""

from __future__ import annotations

from policies.rule import RUNTIME_GATES, Gate, Rule, Severity

PUBLISH = frozenset({Gate.publish})
SUBMIT = frozenset({Gate.submit})


def _rule(rule_id: str, policy: str, gates: frozenset[Gate], **fields: str) -> Rule:
    return Rule(id=rule_id, policy=policy, severity=Severity.error, gates=gates, waivable=False, **fields)


PUBLISH_RULES = (
    _rule(
        "PUB001",
        "publish",
        PUBLISH,
        title="A staged file outside the set Oracle publishes",
        rationale="A model repository is what users download and run: a stray file (a notebook, a script, an "
        "archive, a symbolic link) published beside the weights is shipped under the model's name and never "
        "reviewed by the gates that judged the tree.",
        fix="Remove the file from the staged folder; stage only what `oracle hub build` or `oracle export --format "
        "hf` writes.",
        example="staged/\n  model.safetensors\n  train_notes.ipynb",
        example_fix="staged/\n  model.safetensors",
    ),
    _rule(
        "PUB002",
        "publish",
        PUBLISH,
        title="An environment file among the staged files",
        rationale="`.env` files carry credentials and endpoints of the machine that made them; once public they "
        "cannot be taken back.",
        fix="Remove the file; keep settings out of the model repository.",
        example="staged/.env",
        example_fix="(no .env in the staged folder)",
    ),
    _rule(
        "PUB003",
        "publish",
        PUBLISH,
        title="A secret (token or key) in a staged file",
        rationale="A Hub token, cloud key or private key in a published file gives anyone who downloads the "
        "repository the access it grants; the token in use is looked for by value too.",
        fix="Remove the secret from the file and rotate it.",
        example='README.md: "use token hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"',
        example_fix='README.md: "log in with `huggingface-cli login`"',
    ),
    _rule(
        "PUB004",
        "publish",
        PUBLISH,
        title="Weights the signed provenance does not vouch for",
        rationale="Every weights shard and every file beside it must be the bytes a submitted training job signed "
        "(or an export of them signed again): anything else — a shard swapped after training, a file the record "
        "lists but that is missing, an index naming other shards — is weights of unknown origin.",
        fix="Publish the folder `oracle export --format hf` wrote from a checkpoint whose provenance verifies; do not "
        "edit it afterwards.",
        example="model-00001-of-00002.safetensors (sha256 differs from the export's record)",
        example_fix="oracle export --checkpoint runs/NAME/step-N --format hf --out exports/NAME",
    ),
    _rule(
        "PUB005",
        "publish",
        PUBLISH,
        title="A model card or config that misstates the model",
        rationale="The card's metadata, the numbers across config, tokenizer and generation files, and a "
        "transformers config that loads without remote code are what users rely on to run the model as declared.",
        fix="Regenerate the card and configs with `oracle hub build` / `oracle export`; do not hand-edit them.",
        example="config.json: num_experts 32 (the model has 64)",
        example_fix="config.json as `oracle export` writes it",
    ),
)

SUBMIT_RULES = (
    _rule(
        "SUB001",
        "submit",
        SUBMIT,
        title="A job spec that does not set ALLOW_LOCAL_TRAIN=false, or sets it otherwise",
        rationale="Every container and batch script of a job carries `ALLOW_LOCAL_TRAIN=false`, so the training "
        "runtime check can only be passed by the job's submission record, never by the local override.",
        fix="Render the spec with `oracle submit`; do not edit it.",
        example="export ALLOW_LOCAL_TRAIN=true",
        example_fix="export ALLOW_LOCAL_TRAIN=false",
    ),
    _rule(
        "SUB002",
        "submit",
        SUBMIT,
        title="A job that does not run the locked environment",
        rationale="On SLURM the job's virtualenv must be built from the lock of its machines (the GPU lock for GPU "
        "jobs) and checked against it file by file before anything runs; on Kubernetes and Argo the image is the one "
        "tagged with the GPU lock's digest. Anything else runs packages nobody reviewed.",
        fix="Run `make venv` (with `ORACLE_ACCELERATOR=cuda` for GPU jobs) in the checkout, or build and push the "
        "image with `make image`, then submit.",
        example="venv stamp names requirements.lock for a job with --gpus-per-node 8",
        example_fix="ORACLE_ACCELERATOR=cuda make venv && oracle submit --target slurm --gpus-per-node 8",
    ),
    _rule(
        "SUB003",
        "submit",
        SUBMIT,
        title="Foreign weights among the job's inputs",
        rationale="The data folder of a job may hold only the token shards our packed format's index lists with "
        "their sha256; a weights file there (by content, whatever its name) would be loaded by nothing we wrote "
        "and trained on by no decision anyone made.",
        fix="Point data.path at the folder `oracle data run --tokenizer` wrote, and nothing else.",
        example="data/pretrain/tokens/base-model.bin (a pickle of tensors)",
        example_fix="data/pretrain/tokens/tokens-000000.bin listed in index.json",
    ),
    _rule(
        "SUB004",
        "submit",
        SUBMIT,
        title="A job spec without the runtime layer",
        rationale="Every process of a job starts as `oracle …`, which installs the process policy (no downloads, "
        "no foreign weights, no unpickling) before anything else, with the Hub clients' offline switches; on "
        "Kubernetes and Argo an Egress NetworkPolicy selects every pod.",
        fix="Render the spec with `oracle submit`; do not edit it.",
        example="srun python train.py",
        example_fix='srun "$venv/bin/torchrun" ... -m oracle train --config NAME',
    ),
    _rule(
        "SUB005",
        "submit",
        SUBMIT,
        title="A recipe whose plan does not fit the cluster's GPUs",
        rationale="A job that cannot fit its GPUs fails after queueing for hours on hundreds of GPUs; its plan "
        "(oracle/train/plan.py: parameters, gradients, optimizer states, the largest gathered layer, activations "
        "and buffers per GPU) is checked against the cluster's GPU (policies.toml cluster.gpu, held by the floor).",
        fix="Follow the refusal's remedy (expert parallelism, activation_checkpointing, more GPUs); `oracle plan` "
        "shows the figures.",
        example="oracle850b with expert: 1 and no activation checkpointing on 32 x 8 GPUs",
        example_fix="parallelism.expert: 64 and activation_checkpointing: true",
    ),
)

RUNTIME_RULES = (
    _rule(
        "RUN001",
        "runtime",
        frozenset({Gate.train}),
        title="Training outside a job submitted through the gate",
        rationale="ALLOW_LOCAL_TRAIN=false: training runs only on a cluster, through the submit gate. `oracle train` "
        "(and the trainer called from Python) starts only inside the scheduler job an `oracle submit` made: the "
        "job's submission record must verify against a submission key of the trust root and name the commit, "
        "tree, attestation and lock of the code that runs, and the scheduler itself, not the environment, must "
        "confirm that the process runs inside that job. An environment variable or a copied record is not enough.",
        fix="Submit the run: `oracle submit --target slurm|k8s|argo --config NAME`. A local run needs a trust root "
        "whose floor allows the override (local_train.allow_override), never a setting in the tree.",
        example="ALLOW_LOCAL_TRAIN=true oracle train --config oracle-mini    # on a workstation",
        example_fix="oracle submit --target slurm --config oracle-mini --nodes 1 --gpus-per-node 8",
    ),
    _rule(
        "RUN002",
        "runtime",
        frozenset({Gate.serve}),
        title="Serving weights their signed provenance does not vouch for",
        rationale="A server answers users with whatever weights it loads. `oracle serve` loads a checkpoint only "
        "when a trust root is configured, the checkpoint's provenance record verifies against the trust root's "
        "provenance keys, and every file in the folder is one the record names with its sha256 (or the trainer's "
        "own state); the process may then read those weights and no others.",
        fix="Serve a checkpoint `oracle train` wrote inside a submitted job, unaltered; to serve another tokenizer, "
        "train or export with it.",
        example="oracle serve --checkpoint downloads/some-model/",
        example_fix="oracle serve --checkpoint runs/oracle850b-4711/step-00100000",
    ),
    _rule(
        "RUN003",
        "runtime",
        frozenset({Gate.data}),
        title="A data stage outside its submitted data job, or with another plan",
        rationale="Inside a cluster job, `oracle data stage` runs only under the signed record of a data job "
        "(`oracle submit --data`): the record must verify, the scheduler must confirm the job, and the work "
        "folder's plan must be the one the job was submitted with, so that a job cannot be pointed at other inputs "
        "after the gate judged them.",
        fix="Submit the data job again with the plan you mean to run: `oracle submit --target slurm --data WORK "
        "--output OUT`.",
        example="a training job's record, or an edited WORK/run.json, in a data stage",
        example_fix="the data job's own record and the plan it was submitted with",
    ),
    _rule(
        "RUN004",
        "runtime",
        RUNTIME_GATES | frozenset({Gate.publish}),
        title="An action the process policy does not allow",
        rationale="The gated commands (train, serve, data, export, hub publish) install a process policy before "
        "anything else is imported: no network beyond the endpoints the command line names, no package "
        "installer, no weights file outside what the command's own checks vouched for, no unpickling outside "
        "torch's weights-only loader, no bytecode cache that differs from its source. Code under review, a "
        "dependency or a plug-in that tries one is stopped at the call, whatever path it takes to it.",
        fix="Remove the download, install or load from the code path; weights come from signed checkpoints, "
        "packages from the locked venv.",
        example="snapshot_download(...) inside a training callback",
        example_fix="load the signed checkpoint `oracle train` wrote",
    ),
)

TRUST_RULES = (
    _rule(
        "TRU003",
        "trust",
        frozenset({Gate.publish, Gate.submit, Gate.train}),
        title="No attestation of the ci gate vouches for this checkout",
        rationale="What leaves the machine (a publish, a cluster job) must be code the ci gate passed: the "
        "attestation `make guards` writes names HEAD's commit and tree, the lock, the policy bundle and the model "
        "config, and is signed by an attestation key of the trust root. A missing, unsigned, forged or malformed "
        "attestation, one of another commit, a dirty tree, a changed lock, policy or model config, or a start-up "
        "hazard (a .pth, sitecustomize or bytecode cache that would run first) refuses the action.",
        fix="Commit everything and run `make guards` (nox -s guards), which attests on a passing ci gate; on a "
        "machine with a trust root, with the attestation key of that trust root.",
        example="git commit -am wip && oracle hub publish ...    # no `make guards` since the commit",
        example_fix="git commit -am wip && make guards && oracle hub publish ...",
    ),
    _rule(
        "TRU004",
        "trust",
        frozenset(Gate),
        title="The audit log is missing, cut or rewritten",
        rationale="Every gate and run-time check appends its decision to a hash-chained, signed audit log whose "
        "head is kept beside it (and anchored where the trust root says): a log deleted, truncated, edited or "
        "re-chained no longer matches its head, and no gate extends it until it is restored, so a decision cannot "
        "be made to disappear.",
        fix="Run `oracle guards audit verify` to see where the chain breaks, then restore .oracle/audit.jsonl and "
        "its head from a backup.",
        example="rm .oracle/audit.jsonl    # then any gate",
        example_fix="restore .oracle/audit.jsonl and .oracle/audit.head from a backup",
    ),
)

RULES = PUBLISH_RULES + SUBMIT_RULES + RUNTIME_RULES + TRUST_RULES
