"""The checks the publish and submit gates make on what the tree does not hold — the files about to be uploaded
(hub/stage.py, PUB001-PUB005) and the job about to reach a scheduler (infra/checks.py, SUB001-SUB005) — as rules of
the one catalog, so that `oracle guards rules`, `oracle guards explain`, SARIF and the docs know them like every
other check.

They are not waivable: each refuses something that is about to leave the machine or start running, at the moment
it happens, and no file in the tree (where waivers live) may excuse that. The code that makes each check prefixes
its one-line refusal with the rule's id; a test keeps the two in step.
"""

from __future__ import annotations

from policies.rule import Gate, Rule, Severity

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

RULES = PUBLISH_RULES + SUBMIT_RULES
