# ruff: noqa: E501  (the cases are files as engineers write them: their long lines are part of the snippet)
"""Clean controls: the false positives issue 15 measured (class `realcode-fp`) and a near miss of every violation
class (class = the class it nearly belongs to). None of them may draw a finding or an error."""

from __future__ import annotations

import json

import numpy as np

from tests.policies.corpus import payloads as p
from tests.policies.corpus.model import Case, clean, text

REAL = "realcode-fp"


def _realcode_false_positives() -> list[Case]:
    tokens = p.token_shard(first=0x0280, count=4096, vocab=4096, seed="shard0")  # first bytes 80 02: a PROTO 2 look
    shard_index = {
        "format": "oracle-packed-v1",
        "dtype": "uint16",
        "seq_len": 64,
        "vocab_size": 4096,
        "eos_id": 2,
        "pad_id": 0,
        "files": [{"name": "tokens-000000.bin", "sequences": 64, "sha256": "0" * 64}],
        "tokens": 4096,
        "padded_tokens": 0,
    }
    eval_rows = "\n".join(
        json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "choices": [str(2 * i), str(i)], "answer": 0})
        for i in range(200)
    )
    return [
        clean(
            "pickle-in-memory-roundtrip",
            REAL,
            {
                "tests/test_session.py": text("""
                    import pickle

                    from httpkit import Session


                    def test_session_survives_pickling():
                        s = Session(base_url="https://api.example.com", timeout=3)
                        s.headers["X-Trace"] = "1"
                        clone = pickle.loads(pickle.dumps(s))
                        assert clone.headers == s.headers
                        assert clone.timeout == 3
                """),
                "src/httpkit/structures.py": text("""
                    import copy
                    import pickle


                    class CaseInsensitiveDict(dict):
                        def copy(self):
                            return pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

                        def __deepcopy__(self, memo):
                            return type(self)(copy.deepcopy(dict(self), memo))
                """),
            },
        ),
        clean(
            "library-own-package-imports",
            REAL,
            {
                "pyproject.toml": '[project]\nname = "tuneforge"\nversion = "0.4.0"\n',
                "tuneforge/__init__.py": "",
                "tuneforge/models/__init__.py": "from .llama3 import llama3_8b\nfrom .qwen2 import qwen2_7b\n",
                "tuneforge/models/llama3.py": text("""
                    from tuneforge.modules import TransformerDecoder, build_decoder


                    def llama3_8b() -> TransformerDecoder:
                        return build_decoder(vocab_size=128_256, num_layers=32, num_heads=32, num_kv_heads=8, dim=4096)
                """),
                "tuneforge/models/qwen2.py": text("""
                    from tuneforge.modules import TransformerDecoder, build_decoder


                    def qwen2_7b() -> TransformerDecoder:
                        return build_decoder(vocab_size=152_064, num_layers=28, num_heads=28, num_kv_heads=4, dim=3584)
                """),
                "tuneforge/modules.py": text("""
                    import torch.nn as nn


                    class TransformerDecoder(nn.Module):
                        def __init__(self, layers: nn.ModuleList):
                            super().__init__()
                            self.layers = layers


                    def build_decoder(**shape: int) -> TransformerDecoder:
                        return TransformerDecoder(nn.ModuleList())
                """),
                "tests/test_builders.py": text("""
                    from tuneforge.models import llama3_8b
                    from tuneforge.models.qwen2 import qwen2_7b


                    def test_builders_return_decoders():
                        assert llama3_8b() is not None and qwen2_7b() is not None
                """),
            },
        ),
        clean(
            "local-variable-named-pipeline",
            REAL,
            {
                "src/data/prepare.py": text("""
                    from oracle.data.pipeline import build_steps


                    def prepare(config, shards):
                        pipeline = build_steps(config)
                        for shard in shards:
                            pipeline.run(shard)
                        return pipeline.stats()
                """),
            },
        ),
        clean(
            "adapter-reloaded-from-tmp-path",
            REAL,
            {
                "tests/test_lora_roundtrip.py": text("""
                    import torch
                    from peft import LoraConfig, PeftModel, get_peft_model
                    from torch import nn


                    class Tiny(nn.Module):
                        def __init__(self):
                            super().__init__()
                            self.fc1 = nn.Linear(8, 8)
                            self.fc2 = nn.Linear(8, 2)

                        def forward(self, x):
                            return self.fc2(torch.relu(self.fc1(x)))


                    def test_adapter_roundtrip(tmp_path):
                        torch.manual_seed(0)
                        model = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["fc1"]))
                        model.save_pretrained(tmp_path)
                        torch.manual_seed(0)
                        reloaded = PeftModel.from_pretrained(Tiny(), tmp_path)
                        x = torch.randn(3, 8)
                        assert torch.allclose(model(x), reloaded(x))
                """),
            },
        ),
        clean(
            "hub-logo-url",
            REAL,
            {
                "docs/index.html": text("""
                    <footer>
                      <a href="https://huggingface.co/oracle-ai">
                        <img src="https://huggingface.co/front/assets/huggingface_logo-noborder.svg" alt="Hub" height="24">
                      </a>
                    </footer>
                """),
            },
        ),
        clean(
            "vllm-utility-imports",
            REAL,
            {
                "src/serving/vllm_plugin.py": text("""
                    from vllm.logger import init_logger
                    from vllm.utils import random_uuid

                    logger = init_logger(__name__)


                    def request_id(prefix: str = "oracle") -> str:
                        rid = f"{prefix}-{random_uuid()}"
                        logger.debug("new request %s", rid)
                        return rid
                """),
            },
        ),
        clean(
            "tiktoken-vocabulary",
            REAL,
            {
                "assets/bpe/base.tiktoken": p.tiktoken_vocabulary(3000),
                "src/tok/bpe.py": text("""
                    import tiktoken
                    from tiktoken.load import load_tiktoken_bpe

                    PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s+"


                    def encoding(path: str = "assets/bpe/base.tiktoken") -> tiktoken.Encoding:
                        ranks = load_tiktoken_bpe(path)
                        return tiktoken.Encoding(name="base", pat_str=PAT, mergeable_ranks=ranks, special_tokens={})
                """),
            },
        ),
        clean(
            "runs-checkpoint-path-yaml",
            REAL,
            {
                "configs/eval-mini.yaml": text("""
                    model: oracle-mini
                    checkpoint: runs/oracle-mini/step-00000040
                    resume_from: runs/oracle-mini/step-00000030
                    tasks: [hellaswag, arc_easy]
                """),
            },
        ),
        clean(
            "from-pretrained-path-runs",
            REAL,
            {
                "src/evalkit/checkpoint.py": text("""
                    from __future__ import annotations

                    from pathlib import Path

                    from safetensors.torch import load_file

                    from oracle.moe850b.config import load_config
                    from oracle.moe850b.model import OracleMoE


                    class RunCheckpoint:
                        def __init__(self, model: OracleMoE) -> None:
                            self.model = model

                        @classmethod
                        def from_pretrained(cls, directory: Path, preset: str = "oracle-mini") -> RunCheckpoint:
                            model = OracleMoE(load_config(preset))
                            model.load_state_dict(load_file(directory / "model.safetensors"))
                            return cls(model)
                """),
                "src/evalkit/run.py": text("""
                    from pathlib import Path

                    from .checkpoint import RunCheckpoint


                    def load_step(run: str, step: int) -> RunCheckpoint:
                        return RunCheckpoint.from_pretrained(Path("runs") / run / f"step-{step:08d}")
                """),
            },
        ),
        clean(
            "token-shard-pickle-like-header",
            REAL,
            {
                "data/mini/tokens/tokens-000000.bin": tokens,
                "data/mini/tokens/index.json": json.dumps(shard_index, indent=2) + "\n",
            },
        ),
        clean(
            "zipped-eval-snapshot",
            REAL,
            {
                "evals/snapshots/arith-2024-05.zip": p.zip_archive(
                    {"arith/test.jsonl": eval_rows, "arith/README.md": "Synthetic arithmetic eval, 200 items.\n"}
                ),
            },
        ),
        clean(
            "snapshot-download-dataset",
            REAL,
            {
                "src/data/fetch_fineweb.py": text("""
                    from huggingface_hub import snapshot_download


                    def fetch_sample(dest: str) -> str:
                        return snapshot_download(
                            repo_id="HuggingFaceFW/fineweb-edu",
                            repo_type="dataset",
                            allow_patterns=["sample/10BT/*.parquet"],
                            local_dir=dest,
                        )
                """),
            },
        ),
        clean(
            "pip-install-hashed-lock",
            REAL,
            {
                "scripts/bootstrap.sh": text("""
                    #!/usr/bin/env bash
                    set -euo pipefail
                    python3 -m venv .venv
                    .venv/bin/python -m pip install --require-hashes -r requirements.lock
                    .venv/bin/python -m pip install --no-deps -e .
                """),
            },
        ),
        clean(
            "allow-local-train-false",
            REAL,
            {
                ".env": "ALLOW_LOCAL_TRAIN=false\nWANDB_MODE=offline\n",
                "slurm/mini.sbatch": "#!/bin/bash\n#SBATCH --export=ALL,ALLOW_LOCAL_TRAIN=false\nsrun oracle train --config oracle-mini\n",
                "env/train.csh": "setenv ALLOW_LOCAL_TRAIN false\n",
                "env/dev.fish": "set -gx ALLOW_LOCAL_TRAIN false\n",
            },
        ),
        clean(
            "run-folders-named-after-their-model",
            REAL,
            {
                "docs/finetune.md": text("""
                    After LoRA finetuning, chat with the result and evaluate it:

                    ```bash
                    oracle chat out/finetune/lora-mini/final/
                    oracle evaluate lora_model/final --tasks hellaswag
                    oracle convert out/pretrain/tiny-llama/step-00060500 --output_dir out/hf-tinyllama/converted
                    lm_eval --model hf --model_args pretrained=out/hf-tinyllama/converted
                    ```
                """),
                "examples/random_weights.py": text("""
                    llm = LLM.load("pythia-160m", init="random")
                    llm.save("pythia-160m-random-weights")
                    lit_model = LitLLM(checkpoint_dir="pythia-160m-random-weights")
                """),
            },
        ),
        clean(
            "architecture-pretrained-from-scratch",
            REAL,
            {
                "configs/pretrain/debug.yaml": text("""
                    # The name of the architecture to pretrain.
                    model_name: pythia-14m
                    out_dir: out/pretrain/debug
                    # Optional checkpoint to initialise the model from (continued pretraining).
                    initial_checkpoint_dir:
                    resume: false
                """),
            },
        ),
    ]


def _near_misses() -> list[Case]:
    return [
        # hub access
        clean(
            "own-namespace-snapshot",
            "hub-access",
            {
                "src/fetch_own.py": text("""
                    from huggingface_hub import snapshot_download

                    path = snapshot_download("oracle-ai/oracle-mini", revision="v0.3.0")
                """),
            },
        ),
        clean(
            "own-namespace-url",
            "hub-access",
            {"docs/release.md": "Weights: https://huggingface.co/oracle-ai/oracle-850b/resolve/main/config.json\n"},
        ),
        clean(
            "hub-docs-link",
            "hub-access",
            {
                "README.md": text("""
                    # Serving

                    The server speaks the chat template format described in
                    <https://huggingface.co/docs/transformers/main/en/chat_templating>.
                """),
            },
        ),
        clean(
            "dataset-shard-wget",
            "hub-access",
            {
                "scripts/get_c4.sh": "wget -q https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-train.00000-of-01024.json.gz\n",
            },
        ),
        clean(
            "hf-datasets-fsspec-parquet",
            "hub-access",
            {
                "src/data/gsm8k.py": text("""
                    import pandas as pd

                    df = pd.read_parquet("hf://datasets/openai/gsm8k/main/train-00000-of-00001.parquet")
                """),
            },
        ),
        clean(
            "load-dataset-streaming",
            "hub-access",
            {
                "src/data/c4.py": 'from datasets import load_dataset\n\nds = load_dataset("allenai/c4", "en", streaming=True)\n'
            },
        ),
        clean(
            "github-code-clone",
            "hub-access",
            {
                "scripts/eval_harness.sh": "git clone --depth 1 https://github.com/EleutherAI/lm-evaluation-harness third_party/lm-eval\n"
            },
        ),
        # cli downloads
        clean(
            "hf-upload-own-namespace",
            "cli-download",
            {"scripts/publish.sh": "huggingface-cli upload oracle-ai/oracle-mini runs/oracle-mini/step-00000040 .\n"},
        ),
        clean(
            "s3-sync-our-checkpoints",
            "cli-download",
            {
                "scripts/backup.sh": text("""
                    #!/usr/bin/env bash
                    aws s3 sync runs/ s3://oracle-ai-checkpoints/runs/ --exclude "*.tmp"
                    aws s3 cp s3://oracle-ai-artifacts/evals/results-2024-05.json evals/
                """),
            },
        ),
        clean(
            "ollama-serve-own-gguf",
            "cli-download",
            {
                "serve/Modelfile": "FROM ./runs/oracle-mini/export/oracle-mini.gguf\nPARAMETER temperature 0.7\n",
                "serve/ollama.sh": "ollama create oracle-mini -f serve/Modelfile\nollama run oracle-mini 'hello'\n",
            },
        ),
        clean(
            "hf-auth-login-docs-ci",
            "cli-download",
            {
                ".github/workflows/publish.yml": text("""
                    name: publish
                    on: {release: {types: [published]}}
                    jobs:
                      publish:
                        runs-on: ubuntu-latest
                        steps:
                          - uses: actions/checkout@v4
                          - run: make venv
                          - run: .venv/bin/hf auth login --token "${{ secrets.HF_TOKEN }}"
                          - run: .venv/bin/hf upload oracle-ai/oracle-mini dist/oracle-mini
                """),
            },
        ),
        # other loaders
        clean(
            "timm-utility-imports",
            "other-loaders",
            {
                "src/layers/init.py": text("""
                    from timm.layers import trunc_normal_
                    from timm.scheduler import CosineLRScheduler
                    from torch import nn


                    def init_linear(module: nn.Module) -> None:
                        if isinstance(module, nn.Linear):
                            trunc_normal_(module.weight, std=0.02)
                            nn.init.zeros_(module.bias)


                    def scheduler(optimizer, steps: int) -> CosineLRScheduler:
                        return CosineLRScheduler(optimizer, t_initial=steps, warmup_t=steps // 50)
                """),
            },
        ),
        clean(
            "torchvision-transforms-only",
            "other-loaders",
            {
                "src/data/images.py": text("""
                    import torch
                    from torchvision.io import read_image
                    from torchvision.transforms import v2 as T

                    AUGMENT = T.Compose([T.RandomResizedCrop(224, antialias=True), T.ToDtype(torch.float32, scale=True)])


                    def load(path: str) -> torch.Tensor:
                        return AUGMENT(read_image(path))
                """),
            },
        ),
        clean(
            "keras-own-model",
            "other-loaders",
            {
                "src/tfvision/scratch.py": text("""
                    import keras


                    def probe(dim: int, classes: int) -> keras.Model:
                        inputs = keras.Input(shape=(dim,))
                        hidden = keras.layers.Dense(256, activation="gelu")(inputs)
                        return keras.Model(inputs, keras.layers.Dense(classes)(hidden))
                """),
            },
        ),
        clean(
            "torch-load-weights-only-local",
            "other-loaders",
            {
                "src/resume.py": text("""
                    from pathlib import Path

                    import torch


                    def optimizer_state(run_dir: Path) -> dict:
                        return torch.load(run_dir / "optimizer.pt", map_location="cpu", weights_only=True)
                """),
            },
        ),
        clean(
            "safetensors-local-run",
            "other-loaders",
            {
                "src/inspect_ckpt.py": text("""
                    from safetensors.torch import load_file

                    state = load_file("runs/oracle-mini/step-00000040/model.safetensors")
                    print(sum(t.numel() for t in state.values()))
                """),
            },
        ),
        clean(
            "whisper-like-own-load-model",
            "other-loaders",
            {
                "src/oracle_asr/api.py": text("""
                    from pathlib import Path

                    from .model import AsrModel


                    def load_model(checkpoint: Path) -> AsrModel:
                        return AsrModel.from_checkpoint(checkpoint)
                """),
            },
        ),
        # indirect loaders
        clean(
            "getattr-own-module",
            "indirect-loader",
            {
                "src/factory.py": text("""
                    import oracle.moe850b.model as models

                    def build(name: str = "OracleMoE", config=None):
                        return getattr(models, name)(config)
                """),
            },
        ),
        clean(
            "dispatch-table-own-builders",
            "indirect-loader",
            {
                "src/presets.py": text("""
                    from oracle.moe850b.config import load_config
                    from oracle.moe850b.model import OracleMoE

                    PRESETS = {"mini": "oracle-mini", "bench": "oracle-bench", "full": "oracle850b"}
                    BUILDERS = {name: (lambda preset=preset: OracleMoE(load_config(preset))) for name, preset in PRESETS.items()}


                    def build(name: str) -> OracleMoE:
                        return BUILDERS[name]()
                """),
            },
        ),
        clean(
            "partial-of-own-loader",
            "indirect-loader",
            {
                "src/partials.py": text("""
                    from functools import partial

                    from safetensors.torch import load_file

                    load_cpu = partial(load_file, device="cpu")
                    state = load_cpu("runs/oracle-mini/step-00000010/model.safetensors")
                """),
            },
        ),
        # config model ids
        clean(
            "vllm-serving-own-model",
            "config-model-id",
            {
                "serve/vllm.yaml": "model: oracle-ai/oracle-850b\ntensor-parallel-size: 8\nmax-model-len: 8192\n",
            },
        ),
        clean(
            "peft-adapter-on-own-run",
            "config-model-id",
            {
                "adapters/sql/adapter_config.json": json.dumps(
                    {"base_model_name_or_path": "runs/oracle-mini/step-00000040", "peft_type": "LORA", "r": 8},
                    indent=2,
                )
                + "\n",
            },
        ),
        clean(
            "dotenv-local-paths",
            "config-model-id",
            {
                ".env": "MODEL_DIR=/mnt/checkpoints/oracle-mini\nHF_HOME=/scratch/hf\nTOKENIZER=oracle-ai/oracle-tokenizer-v2\n"
            },
        ),
        clean(
            "terraform-own-model",
            "config-model-id",
            {"infra/prod.tfvars": 'model_id = "oracle-ai/oracle-850b"\ninstance_type = "ml.p5.48xlarge"\n'},
        ),
        clean(
            "yaml-flow-own-preset",
            "config-model-id",
            {
                "configs/distill.yaml": "student: {preset: oracle-mini, init: random}\nteacher: {path: runs/oracle-bench/step-00001000}\n"
            },
        ),
        clean(
            "dataset-keys-not-models",
            "config-model-id",
            {
                "configs/sft.yaml": text("""
                    model: oracle-mini
                    datasets:
                      - {path: HuggingFaceH4/ultrachat_200k, split: train_sft}
                      - path: allenai/tulu-3-sft-mixture
                        type: chat_template
                    dataset_name: HuggingFaceH4/ultrafeedback_binarized
                """),
            },
        ),
        clean(
            "auto-map-local-module",
            "config-model-id",
            {
                "export/config.json": json.dumps(
                    {
                        "architectures": ["OracleMoEForCausalLM"],
                        "auto_map": {"AutoModelForCausalLM": "modeling_oracle.OracleMoEForCausalLM"},
                        "model_type": "oracle_moe",
                    },
                    indent=2,
                )
                + "\n",
                "export/modeling_oracle.py": "from oracle.moe850b.model import OracleMoE as OracleMoEForCausalLM\n",
            },
        ),
        # weights content
        clean(
            "metrics-npz",
            "weights-content",
            {
                "runs_summary/mini-loss.npz": p.npz(
                    {
                        "step": np.arange(40, dtype="int64"),
                        "loss": np.linspace(8.3, 3.1, 40),
                        "lr": np.linspace(3e-3, 3e-4, 40),
                    }
                )
            },
        ),
        clean(
            "lfs-pointer-to-dataset-parquet",
            "weights-content",
            {
                "data/eval/arith.parquet": p.lfs_pointer("parquet", 1_203_441),
                ".gitattributes": "*.parquet filter=lfs diff=lfs merge=lfs -text\n",
            },
        ),
        clean(
            "ignored-untracked-weights",
            "weights-content",
            {".gitignore": "checkpoints/\n", "README.md": "# tree\n"},
            untracked={"checkpoints/base/model.safetensors": p.safetensors(p.llama_shapes())},
        ),
        clean(
            "symlink-to-local-data",
            "weights-content",
            {"data/2024-06-01/README.md": "snapshot\n"},
            symlinks={"data/current": "2024-06-01"},
        ),
        clean(
            "png-and-pdf-assets",
            "weights-content",
            {
                "docs/img/loss.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
                "docs/paper.pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n",
            },
        ),
        # vendored MoE
        clean(
            "own-moe-mentions-mixtral",
            "vendored-moe",
            {
                "src/layers/router.py": text('''
                    """Top-k router. Unlike Mixtral we keep a shared expert and balance with a bias, not an aux loss."""
                    import torch
                    from torch import nn


                    class TopKRouter(nn.Module):
                        def __init__(self, dim: int, n_experts: int, k: int) -> None:
                            super().__init__()
                            self.proj = nn.Linear(dim, n_experts, bias=False)
                            self.register_buffer("bias", torch.zeros(n_experts))
                            self.k = k

                        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                            scores = self.proj(x).float().sigmoid()
                            _, idx = (scores + self.bias).topk(self.k, dim=-1)
                            weights = scores.gather(-1, idx)
                            return idx, weights / weights.sum(-1, keepdim=True)
                '''),
            },
        ),
        # venv
        clean(
            "uv-pip-compile-lock",
            "venv-escape",
            {"scripts/relock.sh": "uv pip compile pyproject.toml --extra dev --generate-hashes -o requirements.lock\n"},
        ),
        clean(
            "sys-path-own-folder",
            "venv-escape",
            {
                "docs/conf.py": text("""
                    import os
                    import sys

                    sys.path.insert(0, os.path.abspath(".."))
                    project = "oracle"
                """),
            },
        ),
        clean(
            "pip-version-and-list",
            "venv-escape",
            {
                "scripts/doctor.sh": "#!/bin/sh\n.venv/bin/python -m pip --version\n.venv/bin/python -m pip list --format=freeze\n"
            },
        ),
        # local train
        clean(
            "reads-allow-local-train",
            "local-train",
            {
                "src/diag.py": text("""
                    import os

                    def describe() -> str:
                        return f"ALLOW_LOCAL_TRAIN={os.environ.get('ALLOW_LOCAL_TRAIN', '<unset>')}"
                """),
            },
        ),
        clean(
            "powershell-utf16-false",
            "local-train",
            {
                "scripts/dev.ps1": '\ufeff$env:ALLOW_LOCAL_TRAIN = "false"\r\noracle submit --target slurm\r\n'.encode(
                    "utf-16-le"
                )
            },
        ),
        clean(
            "guarded-entry-point",
            "local-train",
            {
                "scripts/sweep_entry.py": text("""
                    from guards.runtime import require_training_allowed


                    def main() -> None:
                        require_training_allowed()
                        from oracle.train.config import load_train_config
                        from oracle.train.distributed import placement_from_env
                        from oracle.train.trainer import environment_facts, run_training

                        config = load_train_config("oracle-mini")
                        run_training(config, resume="auto", run_name=None, facts=environment_facts(), placement=placement_from_env())


                    if __name__ == "__main__":
                        main()
                """),
            },
        ),
        clean(
            "trainer-config-only",
            "local-train",
            {
                "tools/show_recipe.py": text("""
                    from oracle.train.config import load_train_config

                    print(load_train_config("oracle-mini").model_dump_json(indent=2))
                """),
            },
        ),
        # fail-open near misses: files of the same kinds that can be analysed, and nothing foreign in them
        clean(
            "notebook-bash-cell-clean",
            "fail-open",
            {
                "notebooks/inspect.ipynb": p.notebook(
                    [
                        ("code", "%%bash\nls -la runs/\ndu -sh runs/*\n"),
                        (
                            "code",
                            "%env WANDB_MODE offline\nimport json\nprint(json.load(open('runs/mini/metrics.json')))\n",
                        ),
                    ]
                )
            },
        ),
        clean(
            "nbformat-3-clean",
            "fail-open",
            {"notebooks/old.ipynb": p.notebook_v3([("code", "import numpy as np\nprint(np.arange(3))\n")])},
        ),
        clean(
            "python-311-match",
            "fail-open",
            {
                "src/dispatch.py": text("""
                    def describe(event: dict) -> str:
                        match event:
                            case {"kind": "step", "loss": float(loss)}:
                                return f"loss {loss:.3f}"
                            case {"kind": "eval", **rest}:
                                return f"eval {sorted(rest)}"
                            case _:
                                return "?"
                """),
            },
        ),
        clean(
            "extensionless-script-clean",
            "fail-open",
            {"bin/report": "#!/usr/bin/env python3\nimport sys\n\nprint(' '.join(sys.argv[1:]))\n"},
        ),
        clean(
            "untracked-venv-with-loader",
            "fail-open",
            {".gitignore": ".venv/\n", "src/app.py": "print('ok')\n"},
            untracked={
                ".venv/lib/python3.11/site-packages/transformers/hub_demo.py": (
                    'from transformers import AutoModel\nAutoModel.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
                )
            },
        ),
        clean(
            "utf16-yaml-clean",
            "fail-open",
            {"configs/win_export.yaml": "\ufeffmodel: oracle-mini\r\nlr: 1e-4\r\n".encode("utf-16-le")},
        ),
    ]


def clean_controls() -> list[Case]:
    return [*_realcode_false_positives(), *_near_misses()]
