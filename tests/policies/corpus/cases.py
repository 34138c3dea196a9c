# ruff: noqa: E501  (the cases are files as engineers write them: their long lines are part of the snippet)
"""The corpus: violation cases of every bypass class issue 15 names (Recall and Fail-open) and clean controls
(Precision and near misses of every class), generated as data. `all_cases()` is what the test and
`python -m tests.policies.corpus` run.

Classes (the `klass` of a case):
  hub-access       hub access without a loader name (file-system clients, assembled URLs, CDN, odd hosts, git remotes)
  cli-download     command-line downloads in shell, Makefiles, Dockerfiles, compose files, CI YAML
  other-loaders    other libraries' weight loaders (vision, audio, Keras, kagglehub, adapters, cache helpers, ...)
  indirect-loader  loaders reached through aliases, constant getattr, dispatch tables, factories
  config-model-id  model ids under serving/fine-tuning config keys, flow-style YAML, auto_map remote code
  weights-content  weights in archives, pointers, unsniffed formats, ignored folders, symlinks into a hub cache
  vendored-moe     a foreign MoE block copied in under another name
  venv-escape      installs and interpreter paths that leave the locked venv
  local-train      ALLOW_LOCAL_TRAIN set in other shells/files, or the trainer called around the CLI
  fail-open        files the gate cannot fully analyse (each holds a real violation): finding or error, never a pass
  root             a --root that is missing, empty or not a repository: exit 2
  realcode-fp      (clean only) the false positives issue 15 measured on real repositories and our own controls
"""

from __future__ import annotations

from functools import cache

from tests.policies.corpus import payloads as p
from tests.policies.corpus.controls import clean_controls
from tests.policies.corpus.model import Case, text, violation

HUB = "hub-access"
CLI = "cli-download"
LOADERS = "other-loaders"
INDIRECT = "indirect-loader"
CONFIG = "config-model-id"
WEIGHTS = "weights-content"
MOE = "vendored-moe"
VENV = "venv-escape"
TRAIN = "local-train"
FAIL_OPEN = "fail-open"
ROOT = "root"


def _hub_access() -> list[Case]:
    return [
        violation(
            "hffilesystem-open-shard",
            HUB,
            {
                "tools/peek_shard.py": text('''
                    """Stream one shard of a reference checkpoint to compare layer norms against ours."""
                    from huggingface_hub import HfFileSystem
                    from safetensors import safe_open

                    fs = HfFileSystem()
                    SHARD = "meta-llama/Meta-Llama-3-8B/model-00001-of-00004.safetensors"


                    def reference_norms() -> dict[str, float]:
                        local = "/tmp/ref-shard.safetensors"
                        fs.get(SHARD, local)
                        with safe_open(local, framework="pt") as f:
                            return {k: f.get_tensor(k).norm().item() for k in f.keys() if k.endswith("norm.weight")}
                '''),
            },
        ),
        violation(
            "fsspec-hf-protocol",
            HUB,
            {
                "src/evalkit/reference.py": text("""
                    import fsspec
                    import torch


                    def load_reference(device="cpu"):
                        # hf:// works with any fsspec consumer once huggingface_hub is installed
                        with fsspec.open("hf://mistralai/Mistral-7B-v0.1/pytorch_model-00001-of-00002.bin", "rb") as fh:
                            return torch.load(fh, map_location=device)
                """),
            },
        ),
        violation(
            "endpoint-constant-fstring",
            HUB,
            {
                "scripts/fetch_ref.py": text("""
                    import os
                    import pathlib

                    import requests

                    HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
                    REPO = "Qwen/Qwen2-7B"
                    FILES = ["config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors"]


                    def main(out: pathlib.Path = pathlib.Path("ref")) -> None:
                        out.mkdir(exist_ok=True)
                        for name in FILES:
                            url = f"{HF_ENDPOINT}/{REPO}/resolve/main/{name}"
                            with requests.get(url, stream=True, timeout=60) as r:
                                r.raise_for_status()
                                with open(out / name, "wb") as fh:
                                    for chunk in r.iter_content(1 << 20):
                                        fh.write(chunk)


                    if __name__ == "__main__":
                        main()
                """),
            },
        ),
        violation(
            "hub-constants-endpoint-urlretrieve",
            HUB,
            {
                "bench/baseline.py": text("""
                    from urllib.request import urlretrieve

                    from huggingface_hub.constants import ENDPOINT

                    GEMMA = "google/gemma-2b"

                    def fetch_baseline(dest):
                        urlretrieve("/".join([ENDPOINT, GEMMA, "resolve", "main", "model.safetensors"]), dest)
                        return dest
                """),
            },
        ),
        violation(
            "presigned-cdn-link",
            HUB,
            {
                "scripts/pull_ckpt.py": text("""
                    import httpx

                    # copied from the browser's network tab; valid for a week
                    SIGNED = (
                        "https://cdn-lfs-us-1.hf.co/repos/5c/2e/5c2e1a7d0f9b3e6a4c8d1f2b7a9e0c3d5f6a8b1c2d3e4f5a6b7c8d9e0f1a2b3c"
                        "/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                        "?response-content-disposition=attachment%3B+filename*%3DUTF-8%27%27model.safetensors"
                        "&Expires=1718000000&Policy=eyJTdGF0ZW1lbnQiOlt7fV19&Signature=Zm9vYmFy&Key-Pair-Id=K3ESJI6DHPFC7"
                    )

                    with httpx.stream("GET", SIGNED, follow_redirects=True) as resp, open("model.safetensors", "wb") as out:
                        for block in resp.iter_bytes():
                            out.write(block)
                """),
            },
        ),
        violation(
            "xet-cas-bridge-url",
            HUB,
            {
                "configs/mirror.json": text("""
                    {
                      "artifact": "base-weights",
                      "source": "https://cas-bridge.xethub.hf.co/xet-bridge-us/66a1b2c3d4e5f6a7b8c9d0e1/2b7e15162?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&response-content-disposition=inline%3B+filename%3D%22model-00003-of-00004.safetensors%22",
                      "sha256": "0b3a4e7d0f7c4c1b9e2a6d5f8c1e3b7a9d2f4c6e8a0b1d3f5e7c9a2b4d6f8e0a"
                    }
                """),
            },
        ),
        violation(
            "schemeless-host-in-yaml",
            HUB,
            {
                "deploy/assets.yaml": text("""
                    # fetched by the init container with curl -L
                    assets:
                      - name: draft-model
                        url: huggingface.co/bigscience/bloom-560m/resolve/main/model.safetensors
                        dest: /models/draft/model.safetensors
                """),
            },
        ),
        violation(
            "mixed-case-host",
            HUB,
            {
                "src/warmstart.py": text("""
                    import torch

                    PYTHIA_160M = "HTTPS://HuggingFace.CO/EleutherAI/pythia-160m/resolve/main/pytorch_model.bin"


                    def warm_start(model):
                        state = torch.hub.load_state_dict_from_url(PYTHIA_160M, map_location="cpu", progress=False)
                        missing, unexpected = model.load_state_dict(state, strict=False)
                        return missing, unexpected
                """),
            },
        ),
        violation(
            "short-domain-hf-co",
            HUB,
            {
                "notes/reproduce.sh": text("""
                    #!/usr/bin/env bash
                    set -euo pipefail
                    mkdir -p ref/phi-2 && cd ref/phi-2
                    for i in 1 2; do
                      curl -fsSLO "https://hf.co/microsoft/phi-2/resolve/main/model-0000${i}-of-00002.safetensors"
                    done
                """),
            },
        ),
        violation(
            "hub-mirror-host",
            HUB,
            {
                "scripts/cn_mirror.py": text("""
                    import os
                    import subprocess

                    MIRROR = "https://hf-mirror.com"
                    for shard in range(1, 8):
                        name = f"pytorch_model-{shard:05d}-of-00007.bin"
                        subprocess.run(["wget", "-c", f"{MIRROR}/THUDM/chatglm3-6b/resolve/main/{name}"], check=True)
                """),
            },
        ),
        violation(
            "ssh-remote-clone",
            HUB,
            {
                "scripts/get_base.sh": text("""
                    #!/bin/sh
                    # needs an ssh key registered on the hub
                    git clone --depth 1 git@hf.co:mistralai/Mistral-7B-Instruct-v0.2 third_party/mistral-instruct
                """),
            },
        ),
        violation(
            "git-submodule-of-hub-repo",
            HUB,
            {
                ".gitmodules": text("""
                    [submodule "third_party/tinyllama"]
                    \tpath = third_party/tinyllama
                    \turl = https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0
                    \tbranch = main
                """),
                "README.md": "# distill\n\nRun `git submodule update --init` first.\n",
            },
            gitlinks={"third_party/tinyllama": "fe8a4ea1ffedaf415f4da2f062534de366a451e6"},
        ),
        violation(
            "ssh-url-submodule",
            HUB,
            {
                ".gitmodules": text("""
                    [submodule "weights/base"]
                    \tpath = weights/base
                    \turl = ssh://git@hf.co/openai-community/gpt2-large
                """),
            },
            gitlinks={"weights/base": "32b71b12589c2f8d625668d2335a01cac3249519"},
        ),
        violation(
            "typescript-fetch",
            HUB,
            {
                "web/src/model.ts": text("""
                    const BASE = "https://huggingface.co";
                    const REPO = "Xenova/distilgpt2";

                    export async function loadOnnx(): Promise<ArrayBuffer> {
                      const res = await fetch(`${BASE}/${REPO}/resolve/main/onnx/decoder_model_merged_quantized.onnx`);
                      if (!res.ok) throw new Error(`download failed: ${res.status}`);
                      return res.arrayBuffer();
                    }
                """),
            },
        ),
        violation(
            "makefile-url-variable",
            HUB,
            {
                "Makefile": text("""
                    HUB := https://huggingface.co
                    TEACHER := $(HUB)/meta-llama/Llama-2-13b-hf/resolve/main

                    teacher/%.safetensors:
                    \tmkdir -p teacher
                    \tcurl -fL -H "Authorization: Bearer $$HF_TOKEN" -o $@ $(TEACHER)/$*.safetensors
                """),
            },
        ),
        violation(
            "aiohttp-resolve-url-built",
            HUB,
            {
                "src/distill/teacher.py": text("""
                    import asyncio

                    import aiohttp

                    ORG, NAME, REV = "tiiuae", "falcon-7b", "main"


                    async def grab(session: aiohttp.ClientSession, filename: str) -> bytes:
                        url = "https://" + "huggingface.co" + "/" + ORG + "/" + NAME + "/resolve/" + REV + "/" + filename
                        async with session.get(url) as response:
                            return await response.read()


                    async def main() -> None:
                        async with aiohttp.ClientSession() as session:
                            blob = await grab(session, "model-00001-of-00002.safetensors")
                            open("teacher.safetensors", "wb").write(blob)


                    asyncio.run(main())
                """),
            },
        ),
    ]


def _cli_downloads() -> list[Case]:
    return [
        violation(
            "huggingface-cli-shell",
            CLI,
            {
                "scripts/setup_models.sh": text("""
                    #!/usr/bin/env bash
                    set -euo pipefail
                    : "${MODELS_DIR:=/scratch/$USER/models}"
                    huggingface-cli download meta-llama/Meta-Llama-3-8B \\
                        --include "*.safetensors" "*.json" \\
                        --local-dir "$MODELS_DIR/llama3-8b"
                """),
            },
        ),
        violation(
            "hf-download-new-cli",
            CLI,
            {
                "tools/bootstrap.sh": text("""
                    #!/bin/bash
                    pip --version >/dev/null
                    hf auth whoami || exit 1
                    hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir ./models/qwen-0.5b
                """),
            },
        ),
        violation(
            "ollama-pull-shell",
            CLI,
            {
                "scripts/judge.sh": text("""
                    #!/usr/bin/env bash
                    # local LLM-as-judge for the eval reports
                    ollama serve >/tmp/ollama.log 2>&1 &
                    sleep 3
                    ollama pull llama3.1:8b-instruct-q4_K_M
                    python -m evals.judge --endpoint http://localhost:11434
                """),
            },
        ),
        violation(
            "git-lfs-clone",
            CLI,
            {
                "scripts/clone_ref.sh": text("""
                    git lfs install
                    git clone https://huggingface.co/mistralai/Mistral-7B-v0.1 /data/ref/mistral
                """),
            },
        ),
        violation(
            "git-lfs-pull-include",
            CLI,
            {
                "scripts/partial.sh": text("""
                    #!/bin/sh -e
                    GIT_LFS_SKIP_SMUDGE=1 git clone https://huggingface.co/google/gemma-7b ref/gemma
                    cd ref/gemma
                    git lfs pull --include="model-0000[1-2]-of-00004.safetensors"
                """),
            },
        ),
        violation(
            "aws-s3-cp-weights",
            CLI,
            {
                "infra/stage_weights.sh": text("""
                    #!/usr/bin/env bash
                    set -e
                    aws s3 cp s3://ml-public-mirror/llama-2-7b/consolidated.00.pth /fsx/ref/llama-2-7b/ --no-progress
                    aws s3 cp s3://ml-public-mirror/llama-2-7b/params.json /fsx/ref/llama-2-7b/
                """),
            },
        ),
        violation(
            "gsutil-safetensors-glob",
            CLI,
            {
                "infra/gcs_sync.sh": text("""
                    gsutil -m cp "gs://vertex-model-garden-public-us/llama3/Meta-Llama-3-8B/*.safetensors" /mnt/disks/ref/
                """),
            },
        ),
        violation(
            "rclone-r2-gguf",
            CLI,
            {
                "scripts/fetch_quant.sh": text("""
                    rclone copy r2:community-models/mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf ./quant/ --progress
                """),
            },
        ),
        violation(
            "makefile-target-cli",
            CLI,
            {
                "Makefile": text("""
                    .PHONY: models eval

                    MODELS ?= models

                    models: $(MODELS)/phi-3/config.json

                    $(MODELS)/phi-3/config.json:
                    \thuggingface-cli download microsoft/Phi-3-mini-4k-instruct --local-dir $(MODELS)/phi-3

                    eval: models
                    \tpython -m evals.run --model $(MODELS)/phi-3
                """),
            },
        ),
        violation(
            "dockerfile-run-cli",
            CLI,
            {
                "docker/Dockerfile.serve": text("""
                    FROM nvidia/cuda:12.1.1-runtime-ubuntu22.04
                    ARG HF_TOKEN
                    ENV HF_HUB_ENABLE_HF_TRANSFER=1
                    RUN --mount=type=secret,id=hf_token \\
                        HF_TOKEN=$(cat /run/secrets/hf_token) \\
                        huggingface-cli download TheBloke/Mistral-7B-Instruct-v0.2-AWQ --local-dir /models/mistral-awq
                    CMD ["python3", "-m", "serve", "--model-dir", "/models/mistral-awq"]
                """),
            },
        ),
        violation(
            "dockerfile-add-url",
            CLI,
            {
                "Dockerfile": text("""
                    FROM python:3.11-slim
                    WORKDIR /app
                    ADD https://huggingface.co/openai/whisper-small/resolve/main/model.safetensors /app/weights/whisper-small.safetensors
                    COPY . .
                """),
            },
        ),
        violation(
            "compose-ollama-entrypoint",
            CLI,
            {
                "docker-compose.yml": text("""
                    services:
                      llm:
                        image: ollama/ollama:0.3.12
                        volumes:
                          - ollama:/root/.ollama
                        entrypoint: ["/bin/sh", "-c", "ollama serve & sleep 4 && ollama pull qwen2:7b && wait"]
                        ports: ["11434:11434"]
                    volumes:
                      ollama: {}
                """),
            },
        ),
        violation(
            "github-actions-run-block",
            CLI,
            {
                ".github/workflows/eval.yml": text("""
                    name: nightly-eval
                    on:
                      schedule:
                        - cron: "0 3 * * *"
                    jobs:
                      eval:
                        runs-on: [self-hosted, gpu]
                        steps:
                          - uses: actions/checkout@v4
                          - name: Fetch reference model
                            env:
                              HF_TOKEN: ${{ secrets.HF_TOKEN }}
                            run: |
                              python -m pip --version
                              huggingface-cli download google/gemma-2-2b-it --local-dir ref/gemma
                          - run: python -m evals.compare --ref ref/gemma
                """),
            },
        ),
        violation(
            "gitlab-ci-hf-download",
            CLI,
            {
                ".gitlab-ci.yml": text("""
                    stages: [prepare, eval]

                    prepare-models:
                      stage: prepare
                      image: python:3.11
                      script:
                        - hf download deepseek-ai/deepseek-coder-1.3b-base --local-dir models/coder
                      artifacts:
                        paths: [models/]
                """),
            },
        ),
        violation(
            "llama-cpp-hf-repo-flag",
            CLI,
            {
                "scripts/smoke_gguf.sh": text("""
                    #!/usr/bin/env bash
                    ./build/bin/llama-cli \\
                      --hf-repo bartowski/Meta-Llama-3.1-8B-Instruct-GGUF \\
                      --hf-file Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf \\
                      -p "The capital of France is" -n 16
                """),
            },
        ),
        violation(
            "tune-download",
            CLI,
            {
                "recipes/run_lora.sh": text("""
                    tune download meta-llama/Llama-2-7b-hf --output-dir /tmp/Llama-2-7b-hf --hf-token "$HF_TOKEN"
                    tune run lora_finetune_single_device --config llama2/7B_lora_single_device
                """),
            },
        ),
        violation(
            "litgpt-download",
            CLI,
            {
                "Taskfile.yml": text("""
                    version: "3"
                    tasks:
                      base:
                        cmds:
                          - litgpt download microsoft/phi-2
                          - litgpt finetune_lora checkpoints/microsoft/phi-2 --data Alpaca
                """),
            },
        ),
        violation(
            "python-c-in-shell",
            CLI,
            {
                "ci/prefetch.sh": text("""
                    #!/usr/bin/env bash
                    python - <<'PY'
                    from huggingface_hub import snapshot_download
                    snapshot_download("bigcode/starcoder2-3b", allow_patterns=["*.safetensors", "*.json"])
                    PY
                """),
            },
        ),
        violation(
            "jenkinsfile-sh-step",
            CLI,
            {
                "Jenkinsfile": text("""
                    pipeline {
                      agent { label 'gpu' }
                      stages {
                        stage('Models') {
                          steps {
                            sh 'huggingface-cli download sentence-transformers/all-mpnet-base-v2 --local-dir models/mpnet'
                          }
                        }
                      }
                    }
                """),
            },
        ),
        violation(
            "kaggle-cli-model-download",
            CLI,
            {
                "scripts/kaggle_gemma.sh": text("""
                    kaggle models instances versions download google/gemma/pyTorch/2b-it/3 -p ./gemma
                    tar -xzf ./gemma/model.tar.gz -C ./gemma
                """),
            },
        ),
    ]


def _other_loaders() -> list[Case]:
    return [
        violation(
            "timm-pretrained",
            LOADERS,
            {
                "src/vision/backbone.py": text("""
                    import timm
                    import torch.nn as nn


                    class Encoder(nn.Module):
                        def __init__(self, name: str = "vit_base_patch16_224.augreg_in21k", dim: int = 768):
                            super().__init__()
                            self.trunk = timm.create_model(name, pretrained=True, num_classes=0)
                            self.proj = nn.Linear(self.trunk.num_features, dim)
                """),
            },
        ),
        violation(
            "torchvision-weights-enum",
            LOADERS,
            {
                "src/vision/feats.py": text("""
                    import torch.nn as nn
                    from torchvision.models import ResNet50_Weights, resnet50

                    def feature_extractor():
                        net = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)
                        net.fc = nn.Identity()
                        return net.eval()
                """),
            },
        ),
        violation(
            "torchvision-get-model-default",
            LOADERS,
            {
                "src/vision/zoo.py": text("""
                    import torchvision

                    def build(arch: str = "vit_b_16"):
                        return torchvision.models.get_model(arch, weights="DEFAULT")
                """),
            },
        ),
        violation(
            "torch-hub-dinov2",
            LOADERS,
            {
                "src/vision/dino.py": text("""
                    import torch

                    _MODEL = None

                    def dino():
                        global _MODEL
                        if _MODEL is None:
                            _MODEL = torch.hub.load("facebookresearch/dinov2", "dinov2_vits14").eval()
                        return _MODEL
                """),
            },
        ),
        violation(
            "open-clip-pretrained-tag",
            LOADERS,
            {
                "src/retrieval/clip.py": text("""
                    import open_clip

                    model, _, preprocess = open_clip.create_model_and_transforms(
                        "ViT-B-32", pretrained="laion2b_s34b_b79k"
                    )
                    tokenizer = open_clip.get_tokenizer("ViT-B-32")
                """),
            },
        ),
        violation(
            "keras-applications-imagenet",
            LOADERS,
            {
                "src/tfvision/model.py": text("""
                    import keras

                    def make(num_classes: int):
                        base = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", pooling="avg")
                        base.trainable = False
                        head = keras.layers.Dense(num_classes, activation="softmax")(base.output)
                        return keras.Model(base.input, head)
                """),
            },
        ),
        violation(
            "keras-hub-from-preset",
            LOADERS,
            {
                "src/tfnlp/gemma.py": text("""
                    import keras_hub

                    causal_lm = keras_hub.models.GemmaCausalLM.from_preset("gemma2_2b_en")
                    causal_lm.generate("Keras is a", max_length=30)
                """),
            },
        ),
        violation(
            "tensorflow-hub-keraslayer",
            LOADERS,
            {
                "src/tfnlp/embed.py": text("""
                    import tensorflow as tf
                    import tensorflow_hub as hub

                    encoder = hub.KerasLayer(
                        "https://www.kaggle.com/models/google/universal-sentence-encoder/TensorFlow2/large/2",
                        trainable=False,
                    )
                    embeddings = encoder(tf.constant(["hello world"]))
                """),
            },
        ),
        violation(
            "whisper-load-model",
            LOADERS,
            {
                "src/asr/transcribe.py": text("""
                    import whisper

                    def transcribe(path: str, size: str = "large-v3") -> str:
                        model = whisper.load_model(size, device="cuda")
                        return model.transcribe(path, language="en")["text"]
                """),
            },
        ),
        violation(
            "faster-whisper-model",
            LOADERS,
            {
                "src/asr/fast.py": text("""
                    from faster_whisper import WhisperModel

                    model = WhisperModel("distil-large-v3", device="cuda", compute_type="float16")
                    segments, info = model.transcribe("meeting.wav", beam_size=5)
                """),
            },
        ),
        violation(
            "torchaudio-pipeline-bundle",
            LOADERS,
            {
                "src/asr/w2v.py": text("""
                    import torchaudio

                    bundle = torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H
                    model = bundle.get_model()
                    labels = bundle.get_labels()
                """),
            },
        ),
        violation(
            "speechbrain-from-hparams",
            LOADERS,
            {
                "src/asr/speaker.py": text("""
                    from speechbrain.inference.speaker import EncoderClassifier

                    classifier = EncoderClassifier.from_hparams(
                        source="speechbrain/spkrec-ecapa-voxceleb", savedir="pretrained_models/spkrec"
                    )
                """),
            },
        ),
        violation(
            "nemo-asr-from-pretrained",
            LOADERS,
            {
                "src/asr/nemo_asr.py": text("""
                    import nemo.collections.asr as nemo_asr

                    asr_model = nemo_asr.models.ASRModel.from_pretrained(model_name="nvidia/parakeet-tdt-1.1b")
                """),
            },
        ),
        violation(
            "kagglehub-model-download",
            LOADERS,
            {
                "src/baselines/kaggle.py": text("""
                    import kagglehub

                    path = kagglehub.model_download("google/gemma-2/transformers/gemma-2-2b-it")
                    print("Path to model files:", path)
                """),
            },
        ),
        violation(
            "peft-adapter-on-base",
            LOADERS,
            {
                "src/serve/lora.py": text("""
                    from peft import PeftModel


                    def attach(base):
                        return PeftModel.from_pretrained(base, "tloen/alpaca-lora-7b", is_trainable=False)
                """),
            },
        ),
        violation(
            "load-adapter-method",
            LOADERS,
            {
                "src/serve/multi_lora.py": text("""
                    ADAPTERS = {
                        "sql": "defog/sqlcoder-7b-2-lora",
                        "chat": "timdettmers/guanaco-7b",
                    }


                    def install(model):
                        for name, repo in ADAPTERS.items():
                            model.load_adapter(repo, adapter_name=name)
                        model.set_adapter("chat")
                """),
            },
        ),
        violation(
            "transformers-cached-file",
            LOADERS,
            {
                "src/compat/config_probe.py": text("""
                    import json

                    from transformers.utils import cached_file


                    def rope_scaling_of(repo: str = "meta-llama/Llama-3.1-8B") -> dict:
                        index = cached_file(repo, "model.safetensors.index.json")
                        config = cached_file(repo, "config.json")
                        return json.load(open(config))["rope_scaling"], index
                """),
            },
        ),
        violation(
            "safetensors-from-hub-cache-layout",
            LOADERS,
            {
                "src/compat/compare.py": text("""
                    from pathlib import Path

                    from safetensors.torch import load_file

                    CACHE = Path.home() / ".cache" / "huggingface" / "hub"
                    SNAP = CACHE / "models--mistralai--Mistral-7B-v0.1" / "snapshots"


                    def reference_tensors():
                        (snapshot,) = SNAP.iterdir()
                        return load_file(snapshot / "model-00001-of-00002.safetensors")
                """),
            },
        ),
        violation(
            "sentence-transformers-name",
            LOADERS,
            {
                "src/dedup/embed.py": text("""
                    from sentence_transformers import SentenceTransformer

                    encoder = SentenceTransformer("all-MiniLM-L6-v2")

                    def embed(texts):
                        return encoder.encode(texts, batch_size=256, normalize_embeddings=True)
                """),
            },
        ),
        violation(
            "llama-cpp-python-from-pretrained",
            LOADERS,
            {
                "src/serve/gguf.py": text("""
                    from llama_cpp import Llama

                    llm = Llama.from_pretrained(repo_id="Qwen/Qwen2-0.5B-Instruct-GGUF", filename="*q8_0.gguf", verbose=False)
                """),
            },
        ),
        violation(
            "ultralytics-yolo",
            LOADERS,
            {
                "src/vision/detect.py": text("""
                    from ultralytics import YOLO

                    detector = YOLO("yolov8n.pt")  # fetched from the release assets on first use
                    results = detector("bus.jpg")
                """),
            },
        ),
        violation(
            "mlx-lm-load",
            LOADERS,
            {
                "tools/mac_chat.py": text("""
                    from mlx_lm import generate, load

                    model, tokenizer = load("mlx-community/Mistral-7B-Instruct-v0.3-4bit")
                    print(generate(model, tokenizer, prompt="hello", verbose=True))
                """),
            },
        ),
        violation(
            "vllm-llm-python",
            LOADERS,
            {
                "src/offline/batch_infer.py": text("""
                    from vllm import LLM, SamplingParams

                    llm = LLM(model="meta-llama/Llama-3.1-8B-Instruct", tensor_parallel_size=2, dtype="bfloat16")
                    outs = llm.generate(["Hello"], SamplingParams(max_tokens=64))
                """),
            },
        ),
        violation(
            "modelscope-snapshot",
            LOADERS,
            {
                "src/baselines/ms.py": text("""
                    from modelscope import snapshot_download

                    model_dir = snapshot_download("qwen/Qwen-7B-Chat", revision="v1.1.9")
                """),
            },
        ),
        violation(
            "gensim-downloader",
            LOADERS,
            {
                "src/features/w2v.py": text("""
                    import gensim.downloader as api

                    vectors = api.load("word2vec-google-news-300")
                """),
            },
        ),
        violation(
            "diffusers-single-file-url",
            LOADERS,
            {
                "src/imagegen/pipe.py": text("""
                    import torch
                    from diffusers import StableDiffusionPipeline

                    pipe = StableDiffusionPipeline.from_single_file(
                        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/blob/main/v1-5-pruned-emaonly.safetensors",
                        torch_dtype=torch.float16,
                    )
                """),
            },
        ),
    ]


def _indirect_loaders() -> list[Case]:
    return [
        violation(
            "class-alias-bound-method",
            INDIRECT,
            {
                "src/baseline.py": text("""
                    from transformers import AutoModelForCausalLM as AMCL

                    load = AMCL.from_pretrained

                    def baseline():
                        return load("mistralai/Mistral-7B-v0.1", torch_dtype="auto")
                """),
            },
        ),
        violation(
            "module-alias",
            INDIRECT,
            {
                "src/ref.py": text("""
                    import transformers as tfm

                    def reference(name="EleutherAI/gpt-neox-20b"):
                        tok = tfm.AutoTokenizer.from_pretrained(name)
                        return tfm.GPTNeoXForCausalLM.from_pretrained(name), tok
                """),
            },
        ),
        violation(
            "getattr-constant-class",
            INDIRECT,
            {
                "src/auto.py": text("""
                    import transformers

                    ARCH = "AutoModelForSeq2SeqLM"

                    def build(checkpoint: str = "google/flan-t5-large"):
                        cls = getattr(transformers, ARCH)
                        return cls.from_pretrained(checkpoint)
                """),
            },
        ),
        violation(
            "getattr-constant-method",
            INDIRECT,
            {
                "src/lazy.py": text("""
                    from transformers import AutoModel

                    loader = getattr(AutoModel, "from_pretrained")
                    encoder = loader("intfloat/e5-large-v2")
                """),
            },
        ),
        violation(
            "dispatch-table-classes",
            INDIRECT,
            {
                "src/zoo/registry.py": text("""
                    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

                    MODELS = {
                        "llama": (LlamaForCausalLM, "meta-llama/Llama-2-7b-hf"),
                        "mistral": (MistralForCausalLM, "mistralai/Mistral-7B-v0.1"),
                        "qwen": (Qwen2ForCausalLM, "Qwen/Qwen2-7B"),
                    }


                    def make(kind: str):
                        cls, checkpoint = MODELS[kind]
                        return cls.from_pretrained(checkpoint)
                """),
            },
        ),
        violation(
            "dispatch-table-functions",
            INDIRECT,
            {
                "src/fetch.py": text("""
                    from pathlib import Path

                    from huggingface_hub import hf_hub_download

                    FETCHERS = {"local": lambda repo, f: Path(repo) / f, "hub": hf_hub_download}


                    def fetch(source: str = "hub"):
                        return FETCHERS[source]("openai-community/gpt2-xl", "model.safetensors")
                """),
            },
        ),
        violation(
            "for-model-factory",
            INDIRECT,
            {
                "src/arch/build.py": text("""
                    from transformers import AutoConfig, AutoModelForCausalLM

                    def build_random(model_type: str = "mixtral", **overrides):
                        config = AutoConfig.for_model(model_type, num_local_experts=8, num_experts_per_tok=2, **overrides)
                        return AutoModelForCausalLM.from_config(config)
                """),
            },
        ),
        violation(
            "importlib-import-module",
            INDIRECT,
            {
                "src/plugins.py": text("""
                    import importlib

                    hub = importlib.import_module("huggingface_hub")
                    local_dir = hub.snapshot_download(repo_id="microsoft/phi-1_5")
                """),
            },
        ),
        violation(
            "dunder-import",
            INDIRECT,
            {
                "src/quick.py": text("""
                    snap = __import__("huggingface_hub", fromlist=["snapshot_download"]).snapshot_download
                    snap("stabilityai/stablelm-2-1_6b")
                """),
            },
        ),
        violation(
            "functools-partial",
            INDIRECT,
            {
                "src/partials.py": text("""
                    from functools import partial

                    from transformers import AutoModelForCausalLM

                    load_teacher = partial(AutoModelForCausalLM.from_pretrained, "meta-llama/Llama-2-13b-hf", device_map="auto")
                    teacher = load_teacher()
                """),
            },
        ),
        violation(
            "methodcaller",
            INDIRECT,
            {
                "src/mc.py": text("""
                    import operator

                    from transformers import AutoModelForCausalLM

                    load = operator.methodcaller("from_pretrained", "google/gemma-7b")
                    model = load(AutoModelForCausalLM)
                """),
            },
        ),
        violation(
            "class-attribute-repo",
            INDIRECT,
            {
                "src/cfg.py": text("""
                    from dataclasses import dataclass

                    from transformers import AutoModelForSequenceClassification


                    @dataclass
                    class RewardConfig:
                        base_model: str = "OpenAssistant/reward-model-deberta-v3-large-v2"
                        num_labels: int = 1


                    def reward_model(cfg: RewardConfig = RewardConfig()):
                        return AutoModelForSequenceClassification.from_pretrained(cfg.base_model, num_labels=cfg.num_labels)
                """),
            },
        ),
        violation(
            "repo-id-from-other-module",
            INDIRECT,
            {
                "src/pkg/__init__.py": "",
                "src/pkg/constants.py": 'TEACHER = "mistralai/Mixtral-8x7B-Instruct-v0.1"\nMAX_LEN = 4096\n',
                "src/pkg/distill.py": text("""
                    from transformers import AutoModelForCausalLM

                    from .constants import MAX_LEN, TEACHER


                    def teacher():
                        model = AutoModelForCausalLM.from_pretrained(TEACHER, device_map="auto")
                        model.config.max_position_embeddings = MAX_LEN
                        return model
                """),
            },
        ),
        violation(
            "registry-decorator",
            INDIRECT,
            {
                "src/registry.py": text("""
                    from collections.abc import Callable

                    from huggingface_hub import snapshot_download

                    REGISTRY: dict[str, Callable[[], str]] = {}


                    def register(name: str):
                        def wrap(fn):
                            REGISTRY[name] = fn
                            return fn
                        return wrap


                    @register("falcon")
                    def _falcon() -> str:
                        return snapshot_download("tiiuae/falcon-7b-instruct")
                """),
            },
        ),
    ]


def _config_model_ids() -> list[Case]:
    return [
        violation(
            "vllm-yaml-config",
            CONFIG,
            {
                "serve/vllm.yaml": text("""
                    # vllm serve --config serve/vllm.yaml
                    model: meta-llama/Llama-3.1-8B-Instruct
                    tensor-parallel-size: 2
                    max-model-len: 16384
                    gpu-memory-utilization: 0.92
                """),
            },
        ),
        violation(
            "k8s-vllm-args-flow",
            CONFIG,
            {
                "deploy/k8s/vllm.yaml": text("""
                    apiVersion: apps/v1
                    kind: Deployment
                    metadata: {name: vllm}
                    spec:
                      template:
                        spec:
                          containers:
                            - name: vllm
                              image: vllm/vllm-openai:v0.6.3
                              args: ["--model", "mistralai/Mistral-7B-Instruct-v0.3", "--max-model-len", "8192"]
                """),
            },
        ),
        violation(
            "peft-adapter-config",
            CONFIG,
            {
                "adapters/sql/adapter_config.json": text("""
                    {
                      "alpha_pattern": {},
                      "base_model_name_or_path": "codellama/CodeLlama-7b-hf",
                      "bias": "none",
                      "inference_mode": true,
                      "lora_alpha": 32,
                      "lora_dropout": 0.05,
                      "peft_type": "LORA",
                      "r": 16,
                      "target_modules": ["q_proj", "v_proj"],
                      "task_type": "CAUSAL_LM"
                    }
                """),
            },
        ),
        violation(
            "tgi-compose-env",
            CONFIG,
            {
                "compose.yaml": text("""
                    services:
                      tgi:
                        image: ghcr.io/huggingface/text-generation-inference:2.2.0
                        shm_size: 1g
                        environment:
                          - MODEL_ID=tiiuae/falcon-7b-instruct
                          - NUM_SHARD=1
                        ports:
                          - "8080:80"
                """),
            },
        ),
        violation(
            "tgi-launcher-flag",
            CONFIG,
            {
                "serve/tgi.sh": text("""
                    #!/usr/bin/env bash
                    exec text-generation-launcher --model-id bigcode/starcoder2-15b --num-shard 4 --port 8080
                """),
            },
        ),
        violation(
            "k8s-env-list-model-id",
            CONFIG,
            {
                "deploy/tgi-deployment.yaml": text("""
                    apiVersion: apps/v1
                    kind: Deployment
                    metadata:
                      name: tgi
                    spec:
                      template:
                        spec:
                          containers:
                            - name: tgi
                              image: ghcr.io/huggingface/text-generation-inference:latest
                              env:
                                - name: MODEL_ID
                                  value: "HuggingFaceH4/zephyr-7b-beta"
                                - name: QUANTIZE
                                  value: bitsandbytes-nf4
                """),
            },
        ),
        violation(
            "ollama-modelfile",
            CONFIG,
            {
                "serve/Modelfile": text('''
                    FROM llama3.1:8b
                    PARAMETER temperature 0.2
                    PARAMETER num_ctx 8192
                    SYSTEM """You are the release-notes assistant."""
                '''),
            },
        ),
        violation(
            "litgpt-checkpoint-dir",
            CONFIG,
            {
                "configs/finetune_lora.yaml": text("""
                    checkpoint_dir: checkpoints/meta-llama/Meta-Llama-3-8B-Instruct
                    out_dir: out/finetune/lora-llama3
                    precision: bf16-true
                    lora_r: 16
                    lora_alpha: 32
                    data:
                      class_path: litgpt.data.Alpaca
                    train:
                      epochs: 2
                      micro_batch_size: 4
                """),
            },
        ),
        violation(
            "dotenv-base-model",
            CONFIG,
            {
                ".env": text("""
                    WANDB_PROJECT=sft
                    BASE_MODEL=Qwen/Qwen2.5-7B-Instruct
                    MAX_SEQ_LEN=4096
                """),
            },
        ),
        violation(
            "dotenv-production-suffix",
            CONFIG,
            {
                ".env.production": 'HF_MODEL_ID="microsoft/Phi-3.5-mini-instruct"\nPORT=8000\n',
            },
        ),
        violation(
            "terraform-variable-default",
            CONFIG,
            {
                "infra/sagemaker/variables.tf": text("""
                    variable "hf_model_id" {
                      description = "Model served by the endpoint"
                      type        = string
                      default     = "meta-llama/Llama-3.1-70B-Instruct"
                    }

                    variable "instance_type" {
                      type    = string
                      default = "ml.p4d.24xlarge"
                    }
                """),
            },
        ),
        violation(
            "terraform-tfvars",
            CONFIG,
            {
                "infra/prod.tfvars": 'region      = "us-east-1"\nmodel_id    = "mistralai/Mixtral-8x7B-Instruct-v0.1"\n',
            },
        ),
        violation(
            "terraform-sagemaker-env",
            CONFIG,
            {
                "infra/endpoint.tf": text("""
                    resource "aws_sagemaker_model" "llm" {
                      name               = "chat-llm"
                      execution_role_arn = aws_iam_role.sm.arn
                      primary_container {
                        image = var.tgi_image
                        environment = {
                          HF_MODEL_ID      = "google/gemma-2-9b-it"
                          SM_NUM_GPUS      = "4"
                        }
                      }
                    }
                """),
            },
        ),
        violation(
            "yaml-flow-mapping",
            CONFIG,
            {
                "configs/distill.yaml": text("""
                    student: {preset: oracle-mini, init: random}
                    teacher: {model: mistralai/Mixtral-8x7B-v0.1, revision: main, dtype: bfloat16}
                    temperature: 2.0
                """),
            },
        ),
        violation(
            "yaml-flow-sequence-mergekit",
            CONFIG,
            {
                "merge/config.yml": text("""
                    merge_method: slerp
                    slices:
                      - sources:
                          - {model: NousResearch/Hermes-2-Pro-Mistral-7B, layer_range: [0, 32]}
                          - {model: mistralai/Mistral-7B-Instruct-v0.2, layer_range: [0, 32]}
                    parameters:
                      t: 0.5
                    dtype: bfloat16
                """),
            },
        ),
        violation(
            "auto-map-remote-code",
            CONFIG,
            {
                "export/config.json": text("""
                    {
                      "architectures": ["DeepseekV2ForCausalLM"],
                      "auto_map": {
                        "AutoConfig": "deepseek-ai/DeepSeek-V2-Lite--configuration_deepseek.DeepseekV2Config",
                        "AutoModelForCausalLM": "deepseek-ai/DeepSeek-V2-Lite--modeling_deepseek.DeepseekV2ForCausalLM"
                      },
                      "hidden_size": 2048,
                      "model_type": "deepseek_v2"
                    }
                """),
            },
        ),
        violation(
            "axolotl-base-model",
            CONFIG,
            {
                "sft/axolotl.yml": text("""
                    base_model: NousResearch/Meta-Llama-3.1-8B
                    model_type: LlamaForCausalLM
                    tokenizer_type: AutoTokenizer
                    load_in_8bit: false
                    adapter: qlora
                    sequence_len: 4096
                    datasets:
                      - path: data/sft.jsonl
                        type: chat_template
                """),
            },
        ),
        violation(
            "toml-pretrained-key",
            CONFIG,
            {
                "configs/rm.toml": text("""
                    [model]
                    pretrained = "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
                    dtype = "bfloat16"

                    [train]
                    lr = 1e-5
                """),
            },
        ),
        violation(
            "ini-cfg-name-or-path",
            CONFIG,
            {
                "configs/classifier.cfg": text("""
                    [model]
                    name_or_path = distilbert/distilbert-base-uncased-finetuned-sst-2-english
                    max_length = 256

                    [data]
                    train = data/reviews.csv
                """),
            },
        ),
        violation(
            "lm-eval-model-args",
            CONFIG,
            {
                "evals/harness.sh": text("""
                    lm_eval --model hf \\
                      --model_args pretrained=EleutherAI/pythia-1.4b,dtype=bfloat16 \\
                      --tasks hellaswag,arc_easy --batch_size 16
                """),
            },
        ),
        violation(
            "sbatch-model-name-flag",
            CONFIG,
            {
                "slurm/sft.sbatch": text("""
                    #!/bin/bash
                    #SBATCH --job-name=sft
                    #SBATCH --gres=gpu:8
                    srun python -m sft.train \\
                        --model_name_or_path meta-llama/Llama-2-7b-hf \\
                        --output_dir /fsx/out/sft
                """),
            },
        ),
        violation(
            "json-training-args",
            CONFIG,
            {
                "configs/trainer_args.json": '{"model_name_or_path": "EleutherAI/gpt-neox-20b", "bf16": true,'
                ' "per_device_train_batch_size": 2, "learning_rate": 2e-5}\n',
            },
        ),
        violation(
            "helm-values-model",
            CONFIG,
            {
                "charts/llm/values.yaml": text("""
                    replicaCount: 2
                    image:
                      repository: vllm/vllm-openai
                      tag: v0.6.3
                    model:
                      name: "Qwen/Qwen2.5-Coder-7B-Instruct"
                      maxLen: 32768
                """),
            },
        ),
    ]


def _weights_content() -> list[Case]:
    llama = p.llama_shapes()
    gpt2_tf = {
        "model/wte": (128, 32),
        "model/h0/attn/c_attn/w": (1, 32, 96),
        "model/h0/mlp/c_fc/w": (1, 32, 128),
    }
    flax = {"transformer/h_0/attn/c_attn/kernel": (32, 96), "transformer/wte/embedding": (128, 32)}
    return [
        violation(
            "zip-with-safetensors",
            WEIGHTS,
            {"artifacts/export-2024-05.zip": p.zip_archive({"model/model.safetensors": p.safetensors(llama)})},
        ),
        violation(
            "tar-gz-with-torch-bin",
            WEIGHTS,
            {
                "releases/base-model.tar.gz": p.tar_gz(
                    {
                        "base/config.json": '{"model_type": "llama", "hidden_size": 32}',
                        "base/pytorch_model.bin": p.torch_checkpoint(dict(list(llama.items())[:6])),
                    }
                )
            },
        ),
        violation("npz-gpt2-tf-layout", WEIGHTS, {"assets/params.npz": p.npz(gpt2_tf)}),
        violation(
            "lfs-pointer-safetensors",
            WEIGHTS,
            {
                "models/base/model-00001-of-00002.safetensors": p.lfs_pointer("a", 4_943_162_336),
                "models/base/model-00002-of-00002.safetensors": p.lfs_pointer("b", 2_563_789_144),
                ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
            },
        ),
        violation(
            "lfs-pointer-pth",
            WEIGHTS,
            {"ckpt/consolidated.00.pth": p.lfs_pointer("c", 13_476_839_424)},
        ),
        violation(
            "dvc-pointer",
            WEIGHTS,
            {
                "models/llama-7b.pt.dvc": p.dvc_pointer("llama-7b.pt", "d", 13_476_839_424),
                "models/.gitignore": "/llama-7b.pt\n",
                ".dvc/config": "[core]\n    remote = storage\n['remote \"storage\"']\n    url = s3://team-dvc/cache\n",
            },
        ),
        violation("flax-msgpack-named", WEIGHTS, {"ref/flax_model.msgpack": p.flax_msgpack(flax)}),
        violation("flax-msgpack-unsuggestive-name", WEIGHTS, {"data/cache/state.bin": p.flax_msgpack(flax)}),
        violation("pickle-protocol-0", WEIGHTS, {"legacy/encoder_state.dat": p.pickle_protocol0(gpt2_tf)}),
        violation(
            "safetensors-header-leading-whitespace",
            WEIGHTS,
            {"vendor/weights.st": p.safetensors(llama, header_prefix=b"  \n")},
        ),
        violation("onnx-without-producer", WEIGHTS, {"export/graph.pb": p.onnx_without_producer(gpt2_tf)}),
        violation("onnx-file-named", WEIGHTS, {"web/public/decoder.onnx": p.onnx_without_producer(gpt2_tf)}),
        violation(
            "gguf-unsuggestive-name",
            WEIGHTS,
            {"bin/q4.dat": p.gguf("llama", "Meta-Llama-3-8B-Instruct", dict(list(llama.items())[:4]))},
        ),
        violation(
            "torch-zip-extensionless",
            WEIGHTS,
            {"ref/blob_0001": p.torch_checkpoint(dict(list(llama.items())[:4]), wrap="state_dict")},
        ),
        violation(
            "safetensors-under-ignored-folder",
            WEIGHTS,
            {
                ".gitignore": "checkpoints/\n*.log\n",
                "checkpoints/base/model.safetensors": p.safetensors(llama),
                "README.md": "# sft\n",
            },
            force_add=("checkpoints/base/model.safetensors",),
        ),
        violation(
            "torch-bin-under-ignored-cache",
            WEIGHTS,
            {
                ".gitignore": ".cache/\nwandb/\n",
                ".cache/ref/pytorch_model.bin": p.torch_checkpoint(dict(list(llama.items())[:4])),
            },
            force_add=(".cache/ref/pytorch_model.bin",),
        ),
        violation(
            "symlink-dir-into-hub-cache",
            WEIGHTS,
            {"README.md": "Base model is linked under models/base.\n"},
            symlinks={
                "models/base": "/home/ml/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/"
                "01c7f73d771dfac7d292323805ebc428287df4f9"
            },
        ),
        violation(
            "symlink-file-into-hub-blobs",
            WEIGHTS,
            {"configs/ref.yaml": "weights: weights/model.safetensors\n"},
            symlinks={
                "weights/model.safetensors": "../../.cache/huggingface/hub/models--mistralai--Mistral-7B-v0.1/blobs/"
                "3a5b7c9d1e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b"
            },
        ),
    ]


def _vendored_moe() -> list[Case]:
    return [
        violation(
            "mixtral-block-renamed-with-header",
            MOE,
            {
                "src/layers/routed_ffn.py": text('''
                    # coding=utf-8
                    # Copyright 2023 Mistral AI and the HuggingFace Inc. team. All rights reserved.
                    #
                    # Licensed under the Apache License, Version 2.0 (the "License");
                    """Routed feed-forward used by our 8-expert variant."""
                    import torch
                    import torch.nn as nn
                    import torch.nn.functional as F


                    class ExpertFFN(nn.Module):
                        def __init__(self, config):
                            super().__init__()
                            self.ffn_dim = config.intermediate_size
                            self.hidden_dim = config.hidden_size
                            self.w1 = nn.Linear(self.hidden_dim, self.ffn_dim, bias=False)
                            self.w2 = nn.Linear(self.ffn_dim, self.hidden_dim, bias=False)
                            self.w3 = nn.Linear(self.hidden_dim, self.ffn_dim, bias=False)
                            self.act_fn = nn.SiLU()

                        def forward(self, hidden_states):
                            current = self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states)
                            return self.w2(current)


                    class RoutedFFN(nn.Module):
                        def __init__(self, config):
                            super().__init__()
                            self.hidden_dim = config.hidden_size
                            self.num_experts = config.num_local_experts
                            self.top_k = config.num_experts_per_tok
                            self.gate = nn.Linear(self.hidden_dim, self.num_experts, bias=False)
                            self.experts = nn.ModuleList([ExpertFFN(config) for _ in range(self.num_experts)])

                        def forward(self, hidden_states: torch.Tensor):
                            batch_size, sequence_length, hidden_dim = hidden_states.shape
                            hidden_states = hidden_states.view(-1, hidden_dim)
                            router_logits = self.gate(hidden_states)
                            routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
                            routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
                            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
                            routing_weights = routing_weights.to(hidden_states.dtype)
                            final = torch.zeros(
                                (batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype, device=hidden_states.device
                            )
                            expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
                            for expert_idx in range(self.num_experts):
                                idx, top_x = torch.where(expert_mask[expert_idx])
                                current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
                                current = self.experts[expert_idx](current_state) * routing_weights[top_x, idx, None]
                                final.index_add_(0, top_x, current.to(hidden_states.dtype))
                            return final.reshape(batch_size, sequence_length, hidden_dim), router_logits
                '''),
            },
        ),
        violation(
            "deepseek-gate-renamed-no-header",
            MOE,
            {
                "src/layers/token_router.py": text("""
                    import math

                    import torch
                    import torch.nn.functional as F
                    from torch import nn


                    class TokenRouter(nn.Module):
                        def __init__(self, config):
                            super().__init__()
                            self.top_k = config.num_experts_per_tok
                            self.n_routed_experts = config.n_routed_experts
                            self.routed_scaling_factor = config.routed_scaling_factor
                            self.scoring_func = config.scoring_func
                            self.topk_method = config.topk_method
                            self.n_group = config.n_group
                            self.topk_group = config.topk_group
                            self.norm_topk_prob = config.norm_topk_prob
                            self.gating_dim = config.hidden_size
                            self.weight = nn.Parameter(torch.empty((self.n_routed_experts, self.gating_dim)))
                            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

                        def forward(self, hidden_states):
                            bsz, seq_len, h = hidden_states.shape
                            hidden_states = hidden_states.view(-1, h)
                            logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32), None)
                            scores = logits.softmax(dim=-1, dtype=torch.float32)
                            if self.topk_method == "greedy":
                                topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
                            elif self.topk_method == "group_limited_greedy":
                                group_scores = scores.view(bsz * seq_len, self.n_group, -1).max(dim=-1).values
                                group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
                                group_mask = torch.zeros_like(group_scores)
                                group_mask.scatter_(1, group_idx, 1)
                                score_mask = (
                                    group_mask.unsqueeze(-1)
                                    .expand(bsz * seq_len, self.n_group, self.n_routed_experts // self.n_group)
                                    .reshape(bsz * seq_len, -1)
                                )
                                tmp_scores = scores.masked_fill(~score_mask.bool(), 0.0)
                                topk_weight, topk_idx = torch.topk(tmp_scores, k=self.top_k, dim=-1, sorted=False)
                            if self.top_k > 1 and self.norm_topk_prob:
                                topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
                            else:
                                topk_weight = topk_weight * self.routed_scaling_factor
                            return topk_idx, topk_weight
                """),
            },
        ),
        violation(
            "qwen2-moe-shared-expert-renamed",
            MOE,
            {
                "src/layers/shared_moe.py": text("""
                    import torch
                    import torch.nn.functional as F
                    from torch import nn

                    from .mlp import GatedMLP  # our SwiGLU


                    class SparseBlockWithShared(nn.Module):
                        def __init__(self, config):
                            super().__init__()
                            self.num_experts = config.num_experts
                            self.top_k = config.num_experts_per_tok
                            self.norm_topk_prob = config.norm_topk_prob
                            self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
                            self.experts = nn.ModuleList(
                                [GatedMLP(config, intermediate_size=config.moe_intermediate_size) for _ in range(self.num_experts)]
                            )
                            self.shared_expert = GatedMLP(config, intermediate_size=config.shared_expert_intermediate_size)
                            self.shared_expert_gate = torch.nn.Linear(config.hidden_size, 1, bias=False)

                        def forward(self, hidden_states):
                            b, s, d = hidden_states.shape
                            hidden_states = hidden_states.view(-1, d)
                            router_logits = self.gate(hidden_states)
                            routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
                            routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
                            if self.norm_topk_prob:
                                routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
                            out = torch.zeros_like(hidden_states)
                            expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
                            for e in range(self.num_experts):
                                idx, top_x = torch.where(expert_mask[e])
                                y = self.experts[e](hidden_states[top_x]) * routing_weights[top_x, idx, None]
                                out.index_add_(0, top_x, y.to(hidden_states.dtype))
                            shared = self.shared_expert(hidden_states)
                            shared = F.sigmoid(self.shared_expert_gate(hidden_states)) * shared
                            return (out + shared).view(b, s, d), router_logits
                """),
                "src/layers/__init__.py": "",
            },
        ),
        violation(
            "foreign-moe-block-import-alias",
            MOE,
            {
                "src/layers/moe.py": text("""
                    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as SparseFFN

                    __all__ = ["SparseFFN"]
                """),
            },
        ),
        violation(
            "megablocks-import",
            MOE,
            {
                "src/layers/dmoe.py": text("""
                    from megablocks.layers.arguments import Arguments
                    from megablocks.layers.dmoe import dMoE


                    def make_moe(hidden: int, ffn: int, experts: int = 64, top_k: int = 2) -> dMoE:
                        args = Arguments(hidden_size=hidden, ffn_hidden_size=ffn, moe_num_experts=experts, moe_top_k=top_k)
                        return dMoE(args)
                """),
            },
        ),
    ]


def _venv_escapes() -> list[Case]:
    return [
        violation(
            "pip-install-shell",
            VENV,
            {
                "scripts/setup_gpu.sh": text("""
                    #!/usr/bin/env bash
                    set -e
                    pip install flash-attn==2.6.3 --no-build-isolation
                """),
            },
        ),
        violation(
            "uv-pip-install",
            VENV,
            {"scripts/serve_env.sh": "uv pip install 'vllm==0.6.3' --system\n"},
        ),
        violation(
            "conda-install",
            VENV,
            {
                "scripts/cuda_env.sh": text("""
                    conda install -y -c pytorch -c nvidia pytorch-cuda=12.1
                    conda install -y -c conda-forge cudnn
                """),
            },
        ),
        violation(
            "notebook-bang-and-magic-pip",
            VENV,
            {
                "notebooks/explore.ipynb": p.notebook(
                    [
                        ("markdown", "# Quick exploration\n"),
                        ("code", "!pip install -q bitsandbytes accelerate\n%pip install peft==0.12.0\n"),
                        ("code", "import torch\nprint(torch.__version__)\n"),
                    ]
                )
            },
        ),
        violation(
            "subprocess-sys-executable-pip",
            VENV,
            {
                "src/utils/ensure.py": text("""
                    import importlib.util
                    import subprocess
                    import sys


                    def ensure(package: str, spec: str) -> None:
                        if importlib.util.find_spec(package) is None:
                            subprocess.check_call([sys.executable, "-m", "pip", "install", spec])


                    ensure("deepspeed", "deepspeed==0.14.4")
                """),
            },
        ),
        violation(
            "os-system-pip-upgrade",
            VENV,
            {"src/bootstrap.py": 'import os\n\nos.system("pip install -U transformers>=4.44 accelerate")\n'},
        ),
        violation(
            "sys-path-other-site-packages",
            VENV,
            {
                "src/compat/cuda_ext.py": text("""
                    import sys

                    # the fused kernels are only built in the cluster's conda env
                    sys.path.insert(0, "/opt/conda/envs/llm/lib/python3.11/site-packages")
                    import flash_attn  # noqa: E402
                """),
            },
        ),
        violation(
            "site-addsitedir-home",
            VENV,
            {
                "src/compat/apex_shim.py": text("""
                    import os
                    import site

                    site.addsitedir(os.path.expanduser("~/miniconda3/lib/python3.10/site-packages"))
                """),
            },
        ),
        violation(
            "conda-environment-file",
            VENV,
            {
                "environment.yml": text("""
                    name: llm-train
                    channels:
                      - pytorch
                      - nvidia
                      - conda-forge
                    dependencies:
                      - python=3.11
                      - pytorch=2.3
                      - pip
                      - pip:
                          - transformers==4.44.2
                          - deepspeed
                """),
            },
        ),
        violation(
            "envrc-activate-other-venv",
            VENV,
            {".envrc": "source ~/venvs/torch-nightly/bin/activate\nexport PYTHONPATH=$PWD/src\n"},
        ),
        violation(
            "github-actions-pip-install",
            VENV,
            {
                ".github/workflows/test.yml": text("""
                    name: tests
                    on: [push]
                    jobs:
                      test:
                        runs-on: ubuntu-latest
                        steps:
                          - uses: actions/checkout@v4
                          - uses: actions/setup-python@v5
                            with: {python-version: "3.11"}
                          - run: pip install torch transformers pytest
                          - run: pytest -q
                """),
            },
        ),
        violation(
            "pythonpath-dist-packages",
            VENV,
            {
                "scripts/run_eval.sh": text("""
                    #!/bin/sh
                    PYTHONPATH=/usr/lib/python3/dist-packages:$PYTHONPATH python -m evals.run "$@"
                """),
            },
        ),
        violation(
            "makefile-pip-requirements-unhashed",
            VENV,
            {
                "Makefile": text("""
                    dev:
                    \tpython -m pip install -r requirements-dev.txt
                    \tpre-commit install
                """),
                "requirements-dev.txt": "pytest\nruff\nipykernel\n",
            },
        ),
        violation(
            "mamba-env-create",
            VENV,
            {"scripts/cluster_env.sh": "module load cuda/12.1\nmamba env create -f envs/train.yml -n train\n"},
        ),
    ]


def _local_train() -> list[Case]:
    trainer_call = text("""
        from oracle.train.config import load_train_config
        from oracle.train.distributed import placement_from_env
        from oracle.train.trainer import environment_facts, run_training


        def main() -> None:
            config = load_train_config("oracle-mini")
            placement = placement_from_env()
            run_training(config, resume="auto", run_name="laptop", facts=environment_facts(), placement=placement)


        if __name__ == "__main__":
            main()
    """)
    return [
        violation(
            "sbatch-export-directive",
            TRAIN,
            {
                "slurm/debug.sbatch": text("""
                    #!/bin/bash
                    #SBATCH --job-name=debug-mini
                    #SBATCH --nodes=1
                    #SBATCH --export=ALL,ALLOW_LOCAL_TRAIN=1
                    srun oracle train --config oracle-mini
                """),
            },
        ),
        violation(
            "sbatch-export-cli",
            TRAIN,
            {
                "scripts/quick_submit.sh": text("""
                    #!/usr/bin/env bash
                    sbatch --export=ALLOW_LOCAL_TRAIN=true,WANDB_MODE=offline --gres=gpu:1 slurm/mini.sbatch
                """),
            },
        ),
        violation(
            "csh-setenv",
            TRAIN,
            {
                "env/train.csh": "setenv WANDB_MODE offline\nsetenv ALLOW_LOCAL_TRAIN 1\noracle train --config oracle-mini\n"
            },
        ),
        violation(
            "fish-set-gx",
            TRAIN,
            {"env/dev.fish": "set -gx ALLOW_LOCAL_TRAIN true\nset -gx CUDA_VISIBLE_DEVICES 0\n"},
        ),
        violation(
            "powershell-utf16",
            TRAIN,
            {
                "scripts/dev.ps1": (
                    '\ufeff# Windows workstation setup\r\n$env:ALLOW_LOCAL_TRAIN = "true"\r\n'
                    "oracle train --config oracle-mini\r\n"
                ).encode("utf-16-le")
            },
        ),
        violation(
            "ipython-env-magic-space",
            TRAIN,
            {
                "notebooks/debug_train.ipynb": p.notebook(
                    [
                        ("code", "%env ALLOW_LOCAL_TRAIN 1\n%env WANDB_MODE offline\n"),
                        ("code", "!oracle train --config oracle-mini --run-name nb\n"),
                    ]
                )
            },
        ),
        violation(
            "ipython-env-magic-equals",
            TRAIN,
            {
                "notebooks/try.ipynb": p.notebook([("code", "%env ALLOW_LOCAL_TRAIN=yes\nimport oracle\n")]),
            },
        ),
        violation(
            "env-file-other-extension",
            TRAIN,
            {"config/training.env": "WANDB_MODE=offline\nALLOW_LOCAL_TRAIN=on\n"},
        ),
        violation(
            "dotenv-local-suffix",
            TRAIN,
            {".env.local": "# my box\nALLOW_LOCAL_TRAIN='1'\n"},
        ),
        violation(
            "systemd-unit-environment",
            TRAIN,
            {
                "deploy/oracle-train.service": text("""
                    [Unit]
                    Description=mini training on the workstation

                    [Service]
                    Environment="ALLOW_LOCAL_TRAIN=true"
                    ExecStart=/opt/oracle/.venv/bin/oracle train --config oracle-mini
                """),
            },
        ),
        violation(
            "windows-batch-set",
            TRAIN,
            {"scripts/train.bat": "@echo off\r\nset ALLOW_LOCAL_TRAIN=1\r\noracle train --config oracle-mini\r\n"},
        ),
        violation(
            "python-env-dict-merge-subprocess",
            TRAIN,
            {
                "tools/launch.py": text("""
                    import os
                    import subprocess

                    env = {**os.environ, "ALLOW_LOCAL_TRAIN": "1", "OMP_NUM_THREADS": "4"}
                    subprocess.run(["oracle", "train", "--config", "oracle-mini"], env=env, check=True)
                """),
            },
        ),
        violation(
            "pytest-env-ini",
            TRAIN,
            {
                "pytest.ini": "[pytest]\nenv =\n    ALLOW_LOCAL_TRAIN=1\n    WANDB_MODE=disabled\n",
            },
        ),
        violation("trainer-called-directly", TRAIN, {"scripts/laptop_train.py": trainer_call}),
        violation(
            "trainer-class-driven-directly",
            TRAIN,
            {
                "tools/overfit_one_batch.py": text("""
                    from pathlib import Path

                    from oracle.train.config import load_train_config
                    from oracle.train.distributed import placement_from_env
                    from oracle.train.trainer import Trainer, environment_facts

                    cfg = load_train_config("oracle-mini")
                    trainer = Trainer(
                        cfg, placement_from_env(), run_dir=Path("runs/overfit"), data_dir=Path("data/mini"),
                        facts=environment_facts(),
                    )
                    trainer.train()
                """),
            },
        ),
    ]


def _fail_open() -> list[Case]:
    loader = 'model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
    big_output = {1: [p.png_output(f"fig{i}", 600_000) for i in range(4)]}
    return [
        violation(
            "python-312-syntax",
            FAIL_OPEN,
            {
                "src/types_ext.py": text("""
                    from typing import Any

                    from transformers import AutoModelForCausalLM

                    type Params = dict[str, Any]


                    def load[T](kind: type[T]) -> T:
                        return AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
                """),
            },
        ),
        violation(
            "python-312-fstring-nesting",
            FAIL_OPEN,
            {
                "src/report.py": text("""
                    from huggingface_hub import snapshot_download

                    cfg = {"repo": "mistralai/Mistral-7B-v0.1"}
                    print(f"fetching {cfg["repo"]}")
                    snapshot_download(cfg["repo"])
                """),
            },
        ),
        violation(
            "merge-conflict-markers",
            FAIL_OPEN,
            {
                "src/loader.py": text("""
                    from transformers import AutoModelForCausalLM

                    <<<<<<< HEAD
                    BASE = "runs/oracle-mini/step-00000040"
                    =======
                    BASE = "Qwen/Qwen2-1.5B"
                    >>>>>>> try-qwen
                    model = AutoModelForCausalLM.from_pretrained(BASE)
                """),
            },
        ),
        violation(
            "python2-file",
            FAIL_OPEN,
            {
                "legacy/fetch.py": text("""
                    import urllib
                    print "fetching reference weights"
                    urllib.urlretrieve("https://huggingface.co/gpt2/resolve/main/pytorch_model.bin", "gpt2.bin")
                """),
            },
        ),
        violation(
            "notebook-bash-cell",
            FAIL_OPEN,
            {
                "notebooks/setup.ipynb": p.notebook(
                    [
                        ("code", "%%bash\nhuggingface-cli download google/gemma-2b --local-dir /tmp/gemma\n"),
                        ("code", "from transformers import AutoModelForCausalLM\n" + loader),
                    ]
                )
            },
        ),
        violation(
            "notebook-shell-continuation",
            FAIL_OPEN,
            {
                "notebooks/finetune.ipynb": p.notebook(
                    [
                        ("code", "!ls /data \\\n   /scratch\n"),
                        (
                            "code",
                            "from peft import PeftModel\nm = PeftModel.from_pretrained(base, 'tloen/alpaca-lora-7b')\n",
                        ),
                    ]
                )
            },
        ),
        violation(
            "nbformat-3",
            FAIL_OPEN,
            {
                "notebooks/old_baseline.ipynb": p.notebook_v3(
                    [
                        ("markdown", "Baseline from 2016\n"),
                        ("code", "from transformers import AutoModelForCausalLM\n" + loader),
                    ]
                )
            },
        ),
        violation(
            "large-notebook",
            FAIL_OPEN,
            {
                "notebooks/analysis.ipynb": p.notebook(
                    [
                        ("markdown", "# Loss curves\n"),
                        ("code", "import matplotlib.pyplot as plt\nplt.plot(range(10))\n"),
                        ("code", "from transformers import AutoModelForCausalLM\n" + loader),
                    ],
                    big_output,
                )
            },
        ),
        violation(
            "myst-markdown-notebook",
            FAIL_OPEN,
            {
                "docs/tutorial.md": text("""
                    ---
                    jupytext:
                      text_representation:
                        format_name: myst
                    kernelspec:
                      name: python3
                    ---

                    # Comparing with a baseline

                    ```{code-cell} ipython3
                    from transformers import AutoModelForCausalLM
                    baseline = AutoModelForCausalLM.from_pretrained("microsoft/phi-2")
                    ```
                """),
            },
        ),
        violation(
            "extensionless-python-script",
            FAIL_OPEN,
            {
                "bin/fetch-weights": text("""
                    #!/usr/bin/env python3
                    import sys

                    from huggingface_hub import snapshot_download

                    snapshot_download(sys.argv[1] if len(sys.argv) > 1 else "tiiuae/falcon-7b")
                """),
            },
        ),
        violation(
            "extensionless-bash-script",
            FAIL_OPEN,
            {
                "tools/get-models": "#!/bin/bash\nset -e\nhuggingface-cli download Qwen/Qwen2-7B --local-dir models/qwen\n"
            },
        ),
        violation(
            "file-over-max-file-bytes",
            FAIL_OPEN,
            {
                "src/generated_vocab.py": "TABLE = [\n"
                + "".join(f"    {i},  # {'x' * 60}\n" for i in range(290_000))
                + "]\n\nfrom transformers import AutoModelForCausalLM\n"
                + loader
            },
        ),
        violation(
            "nul-byte-in-yaml",
            FAIL_OPEN,
            {
                "configs/sft.yaml": b"# exported from the web UI\x00\nmodel_name_or_path: meta-llama/Llama-2-7b-hf\n"
                b"learning_rate: 2.0e-5\n"
            },
        ),
        violation(
            "nul-byte-in-python",
            FAIL_OPEN,
            {
                "src/blobby.py": b"from transformers import AutoModelForCausalLM\nSEP = '\x00'\n" + loader.encode(),
            },
        ),
        violation(
            "utf16-yaml-with-bom",
            FAIL_OPEN,
            {
                "configs/win_export.yaml": "\ufeffbase_model: mistralai/Mistral-7B-v0.1\r\nlr: 1e-4\r\n".encode(
                    "utf-16-le"
                )
            },
        ),
        violation(
            "tracked-under-venv",
            FAIL_OPEN,
            {
                ".gitignore": ".venv/\n__pycache__/\n",
                ".venv/lib/python3.11/site-packages/sitecustomize.py": text("""
                    from huggingface_hub import snapshot_download

                    snapshot_download("meta-llama/Llama-2-7b-hf")
                """),
            },
            force_add=(".venv/lib/python3.11/site-packages/sitecustomize.py",),
        ),
        violation(
            "tracked-under-nox",
            FAIL_OPEN,
            {
                ".gitignore": ".nox/\n",
                ".nox/tests/bin/prefetch.py": "from huggingface_hub import snapshot_download\n"
                'snapshot_download("bigscience/bloom-560m")\n',
            },
            force_add=(".nox/tests/bin/prefetch.py",),
        ),
        violation(
            "tracked-under-oracle-dir",
            FAIL_OPEN,
            {
                ".gitignore": ".oracle/\n",
                ".oracle/hooks/post_run.sh": "#!/bin/sh\nhuggingface-cli download google/gemma-2b --local-dir /tmp/g\n",
            },
            force_add=(".oracle/hooks/post_run.sh",),
        ),
        violation(
            "tracked-pyc-in-pycache",
            FAIL_OPEN,
            {
                ".gitignore": "__pycache__/\n",
                "src/__pycache__/warm.cpython-311.pyc": p.pyc(
                    "from huggingface_hub import snapshot_download\nsnapshot_download('mistralai/Mistral-7B-v0.1')\n",
                    "src/warm.py",
                ),
            },
            force_add=("src/__pycache__/warm.cpython-311.pyc",),
        ),
        violation(
            "tracked-py-in-pycache",
            FAIL_OPEN,
            {
                ".gitignore": "__pycache__/\n",
                "pkg/__pycache__/patch.py": "from transformers import AutoModelForCausalLM\n" + loader,
            },
            force_add=("pkg/__pycache__/patch.py",),
        ),
    ]


def _roots() -> list[Case]:
    return [
        violation("missing-root", ROOT, {}, root="missing"),
        violation("empty-folder", ROOT, {}, root="plain"),
        violation("not-a-repository", ROOT, {"src/app.py": "print('hello')\n"}, root="plain"),
        violation("repository-without-commits", ROOT, {}, root="uncommitted"),
    ]


def violation_cases() -> list[Case]:
    return [
        *_hub_access(),
        *_cli_downloads(),
        *_other_loaders(),
        *_indirect_loaders(),
        *_config_model_ids(),
        *_weights_content(),
        *_vendored_moe(),
        *_venv_escapes(),
        *_local_train(),
        *_fail_open(),
        *_roots(),
    ]


@cache
def all_cases() -> tuple[Case, ...]:
    cases = (*violation_cases(), *clean_controls())
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"duplicate case names: {duplicates}"
    return cases
