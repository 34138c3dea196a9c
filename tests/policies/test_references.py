"""More ways a foreign model is named in text (policies/text_references.py), each with a violation and the near miss
that must stay clean: endpoints that URLs are assembled from, modelscope's API, archives of weights, filtered syncs
from object stores, Ollama's registry, LitGPT's download layout, servers started on a hub id, loaders called in text
that no code analysis reads, multi-line auto_map entries and ids one level under a model block."""

from __future__ import annotations

import pytest

from policies import text_references
from policies.external_weights import family_of
from tests.policies.conftest import Scan, ids

JUDGE = text_references.Judge(("oracle-ai",), lambda first: first in {"runs", "configs"}, family_of)

CASES = [
    # (class, violation: path and content, near miss: path and content)
    (
        "endpoint with a trailing slash",
        ("src/hub.py", 'BASE_URL = "https://huggingface.co/"\n'),
        ("src/hub.py", 'DOCS_URL = "https://huggingface.co/docs/hub/"\n'),
    ),
    (
        "download URL assembled from a template",
        ("src/fetch.py", 'url = "https://huggingface.co/{}/resolve/main/{}".format(repo, name)\n'),
        ("src/fetch.py", 'raise ValueError(f"https://huggingface.co/{repo_id} requires authentication")\n'),
    ),
    (
        "modelscope API",
        ("src/ms.py", 'u = "https://www.modelscope.cn/api/v1/models/someorg/somemodel/repo?FilePath=x"\n'),
        ("docs/ms.md", "Data: https://www.modelscope.cn/datasets/someorg/somedata\n"),
    ),
    (
        "archive of weights by name",
        ("scripts/get.sh", "wget https://example.org/releases/v1/model_weights.tar.gz\n"),
        ("scripts/get.sh", "wget https://example.org/data/modelnet40_normal_resampled.zip\n"),
    ),
    (
        "array file of weights by name",
        ("scripts/get.sh", "curl -LO https://storage.example.org/vit/vit_b16_params.npz\n"),
        ("scripts/get.sh", "curl -LO https://storage.example.org/mnist/mnist.npz\n"),
    ),
    (
        "object-store sync filtered to weights",
        ("Makefile", "pull:\n\taws s3 sync s3://team/base ./base --exclude '*' --include '*.safetensors'\n"),
        ("Makefile", "pull:\n\taws s3 sync s3://team/corpus ./corpus --exclude '*' --include '*.jsonl'\n"),
    ),
    (
        "ollama pull of any name",
        ("scripts/ollama.sh", "ollama pull mymodel\n"),
        ("scripts/ollama.sh", "ollama create mymodel -f ./Modelfile\nollama run mymodel\n"),
    ),
    (
        "LitGPT download layout under checkpoint_dir",
        ("configs/lit.yaml", "checkpoint_dir: checkpoints/someorg/somemodel\n"),
        ("configs/lit.yaml", "checkpoint_dir: checkpoints/oracle850b/step-1000\n"),
    ),
    (
        "LitGPT download layout as a flag",
        ("scripts/ft.sh", "python finetune.py --checkpoint_dir checkpoints/someorg/somemodel\n"),
        ("scripts/ft.sh", "python finetune.py --checkpoint_dir checkpoints/oracle-ai/oracle850b\n"),
    ),
    (
        "vllm serve of a hub id",
        ("scripts/serve.sh", "vllm serve someorg/somemodel --port 8000\n"),
        ("scripts/serve.sh", "vllm serve ./runs/oracle850b/export --port 8000\n"),
    ),
    (
        "llama.cpp -hf",
        ("scripts/cpp.sh", "llama-server -hf someorg/somemodel-GGUF:Q4_K_M --port 8080\n"),
        ("scripts/cpp.sh", "llama-server -m ./runs/oracle.gguf --port 8080\n"),
    ),
    (
        "loader in a Markdown code block",
        ("README.md", '```python\nm = AutoModel.from_pretrained("someorg/somemodel")\n```\n'),
        ("README.md", '```python\nm = AutoModel.from_pretrained("./runs/oracle850b")\n```\n'),
    ),
    (
        "loader in a python -c of a CI step",
        (
            ".github/workflows/ci.yml",
            'steps:\n  - run: python -c "from huggingface_hub import snapshot_download; '
            "snapshot_download('someorg/somemodel')\"\n",
        ),
        (
            ".github/workflows/ci.yml",
            'steps:\n  - run: python -c "from huggingface_hub import snapshot_download; '
            "snapshot_download('someorg/somedata', repo_type='dataset')\"\n",
        ),
    ),
    (
        "shell command in notebook JSON",
        ("nb/get.ipynb", '{"cells": [{"cell_type": "code", "source": ["!hf download someorg/somemodel"]}]}\n'),
        ("nb/get.ipynb", '{"cells": [{"cell_type": "code", "source": ["!hf download oracle-ai/oracle850b"]}]}\n'),
    ),
    (
        "auto_map entry on its own line",
        (
            "export/config.json",
            '{\n  "auto_map": {\n    "AutoConfig": "someorg/somerepo--configuration_x.XConfig"\n  }\n}\n',
        ),
        ("export/config.json", '{\n  "auto_map": {\n    "AutoConfig": "configuration_x.XConfig"\n  }\n}\n'),
    ),
    (
        "id under a YAML model block",
        ("configs/serve.yaml", "model:\n  id: someorg/somemodel\n  dtype: bfloat16\n"),
        ("configs/serve.yaml", "model:\n  id: oracle-ai/oracle850b\n  dtype: bfloat16\n"),
    ),
    (
        "id under a JSON model object",
        ("configs/serve.json", '{\n  "model": {\n    "name": "someorg/somemodel"\n  }\n}\n'),
        ("configs/serve.json", '{\n  "dataset": {\n    "name": "someorg/somedata"\n  }\n}\n'),
    ),
    (
        "id in a flow mapping under a model key",
        ("configs/serve.json", '{"model": {"id": "someorg/somemodel", "dtype": "bf16"}}\n'),
        ("configs/serve.json", '{"model": {"id": "./runs/oracle850b", "dtype": "bf16"}}\n'),
    ),
    (
        "YAML block scalar under a model key",
        ("configs/sft.yaml", "base_model: >-\n  someorg/somemodel\nlr: 1.0e-5\n"),
        ("configs/sft.yaml", "base_model: >-\n  runs/oracle850b/step-1000\nlr: 1.0e-5\n"),
    ),
    (
        "id under a TOML model table",
        ("configs/serve.toml", '[model]\nname = "someorg/somemodel"\n'),
        ("configs/serve.toml", '[model]\nname = "oracle-ai/oracle850b"\n'),
    ),
]


@pytest.mark.parametrize(("label", "found", "clean"), CASES, ids=[case[0] for case in CASES])
def test_reference_is_found(scan: Scan, label: str, found: tuple[str, str], clean: tuple[str, str]) -> None:
    assert ids(scan({found[0]: found[1], "runs/.keep": ""}), "EXT00") != [], label


@pytest.mark.parametrize(("label", "found", "clean"), CASES, ids=[case[0] for case in CASES])
def test_near_miss_is_not_found(scan: Scan, label: str, found: tuple[str, str], clean: tuple[str, str]) -> None:
    assert ids(scan({clean[0]: clean[1], "runs/.keep": ""}), "EXT00") == [], label


def test_a_fetch_command_reads_its_argument_up_to_the_punctuation_around_it() -> None:
    line = '"source": ["!huggingface-cli download someorg/somemodel\\n"]'
    hits = text_references.check_text("nb.ipynb", "notebook", line, [(1, line)], JUDGE)
    assert [hit.matched for hit in hits] == ["someorg/somemodel"]


def test_a_template_argument_stays_a_template() -> None:
    line = "tune download google/gemma-2-<MODEL_SIZE>b --output-dir /tmp/x"
    hits = text_references.check_text("docs/x.md", "text", line, [(1, line)], JUDGE)
    assert [hit.matched for hit in hits if "fetches" in hit.message] == []
