import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from guards.keys import load_signing_key
from guards.provenance import write_provenance
from tests.policies.conftest import Scan, ids, only
from tests.trust import session_key


@pytest.mark.parametrize(
    "source",
    [
        'from transformers import AutoTokenizer\ntok = AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf")\n',
        'REPO = "mistralai/Mistral-7B-v0.1"\n\ndef load():\n    return Model.from_pretrained(REPO)\n',
        'org = "Qwen"\nname = org + "/Qwen2.5-7B"\nm = Model.from_pretrained(name)\n',
        'size = "7b"\nm = Model.from_pretrained(f"meta-llama/Llama-2-{size}-hf")\n',
        'from huggingface_hub import hf_hub_download as fetch\npath = fetch(repo_id="gpt2", filename="model.bin")\n',
        'from huggingface_hub import snapshot_download\nsnapshot_download("bigscience/bloom-560m")\n',
        'import torch\nnet = torch.hub.load("pytorch/vision", "resnet50", weights="DEFAULT")\n',
        'from transformers import pipeline\nchat = pipeline("text-generation")\n',
        'import timm\nnet = timm.create_model("resnet50", pretrained=True)\n',
        'import os\nm = Model.from_pretrained(os.environ["MODEL"])\n',
        'import json\ncfg = json.load(open("train.json"))\nm = Model.from_pretrained(cfg["base"])\n',
    ],
)
def test_foreign_model_loads_are_found_even_through_variables_and_configs(scan: Scan, source: str) -> None:
    result = scan({"src/load.py": source, "train.json": json.dumps({"base": "tiiuae/falcon-7b"})})
    findings = only(result, "EXT001")
    assert len(findings) == 1, result.findings
    assert findings[0].path == "src/load.py"


@pytest.mark.parametrize(
    "source",
    [
        'm = Model.from_pretrained("oracle-ai/oracle850b-moe")\n',
        'm = Model.from_pretrained("./checkpoints/step-100")\n',
        'ROOT = "/data/runs/oracle"\nm = Model.from_pretrained(ROOT)\n',
        'import torch\nnet = torch.hub.load("./hubconf_dir", "ours", source="local")\n',
        'import timm\nnet = timm.create_model("resnet50", pretrained=False)\n',
        'from transformers import pipeline\nchat = pipeline("text-generation", model="oracle-ai/oracle850b-moe")\n',
        "def from_pretrained_like(x):\n    return x\n\nfrom_pretrained_like('meta-llama/x')\n",
        "from typing import Optional\n\nimport torch.optim as optim\n\nopt: Optional[optim.Optimizer] = None\n",
    ],
)
def test_near_misses_of_model_loads_are_not_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == []


@pytest.mark.parametrize(
    "text",
    [
        "Weights: https://huggingface.co/meta-llama/Llama-2-7b-hf/tree/main\n",
        "wget https://hf.co/mistralai/Mistral-7B-v0.1/resolve/main/model.safetensors\n",
        'URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"\n',
        "curl -LO https://example.org/files/encoder.ckpt\n",
        "see https://civitai.com/models/4201\n",
    ],
)
def test_urls_of_foreign_models_and_weight_files_are_found(scan: Scan, text: str) -> None:
    assert ids(scan({"docs/notes.md": text}), "EXT002") == ["EXT002"]


@pytest.mark.parametrize(
    "text",
    [
        "Read https://huggingface.co/docs/huggingface_hub/index for the client.\n",
        "Our model: https://huggingface.co/oracle-ai/oracle850b-moe\n",
        "Data: https://huggingface.co/datasets/allenai/c4\n",
        "https://example.org/config.json and https://pytorch.org/docs/stable/index.html\n",
    ],
)
def test_near_misses_of_urls_are_not_found(scan: Scan, text: str) -> None:
    assert ids(scan({"docs/notes.md": text}), "EXT002") == []


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("configs/finetune.yaml", "base_model: meta-llama/Llama-2-7b-hf\nlr: 0.001\n"),
        ("configs/list.yaml", "base_model:\n  - mistralai/Mistral-7B-v0.1\n"),
        ("configs/run.json", '{"model_name_or_path": "gpt2", "lr": 1e-4}\n'),
        ("configs/model.json", '{"model_type": "llama", "vocab_size": 32000}\n'),
        ("configs/small.toml", 'model_name = "phi-2"\n'),
        ("MODEL_CARD.md", "---\nlicense: apache-2.0\nbase_model: Qwen/Qwen2.5-7B\n---\n# Card\n"),
    ],
)
def test_foreign_identifiers_in_configs_and_model_cards_are_found(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content}), "EXT003") == ["EXT003"]


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("configs/train.yaml", "optimizer: adamw\nscheduler: cosine\nmodel_type: oracle_moe\n"),
        ("configs/ours.yaml", "base_model: oracle-ai/oracle850b-moe\n"),
        ("configs/paths.json", '{"model_name_or_path": "./checkpoints/step-10", "graphics": "phi-less"}\n'),
        ("configs/words.yaml", "model_name: graphics-prompt-optional\n"),
        ("README.md", "We compare against base_model: meta-llama/Llama-2 in prose, outside front matter.\n"),
    ],
)
def test_near_misses_of_identifiers_are_not_found(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content}), "EXT003") == []


@pytest.mark.parametrize(
    "source",
    [
        "from transformers import LlamaForCausalLM\n",
        "import transformers.models.llama.modeling_llama as llama\n",
        "from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as Block\n",
        "from timm.models.vision_transformer import VisionTransformer\n",
        "from transformers import AutoConfig\ncfg = AutoConfig.for_model('qwen2_moe', num_experts=64)\n",
        "import transformers\n\nclass Mine(transformers.Qwen2ForCausalLM):\n    pass\n",
        "import transformers\nnet = transformers.GemmaForCausalLM(config)\n",
        "from transformers import OPTConfig, OPTForCausalLM\n",  # an acronym family glued to its class
        "from transformers.models.llama.modeling_llama import *\n",
        "from transformers.models.llama.modeling_llama import LlamaDecoderLayer, rotate_half\n",
        "from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as rope\n",
        # a foreign MoE block vendored under another name: it reads the foreign config's MoE keys
        "from torch import nn\n\nclass RouterBlock(nn.Module):\n    def __init__(self, config):\n"
        "        super().__init__()\n        self.top_k = config.num_experts_per_tok\n"
        "        self.n = config.num_local_experts\n        self.jitter = config.router_jitter_noise\n\n"
        "    def forward(self, x):\n        return x\n",
    ],
)
def test_foreign_architectures_are_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/model.py": source}), "EXT004") == ["EXT004"]


@pytest.mark.parametrize(
    "source",
    [
        "import torch\nfrom transformers import AutoTokenizer\nfrom oracle.moe850b import OracleMoE\n",
        # generic factories and bases: judged by what is done with them (a load is EXT001), not by the import
        "from transformers import AutoModelForCausalLM, PreTrainedModel\n\n"
        "def is_hf(model):\n    return isinstance(model, PreTrainedModel)\n",
        "from peft import PeftModelForCausalLM\n",
        # utility modules of the ecosystem are not model implementations
        "from vllm.logger import init_logger\nimport peft\nimport diffusers.utils\nfrom timm.layers import DropPath\n",
        # configuration, generation and pre-processing modules: no architecture
        "from transformers.models.llama.configuration_llama import LlamaConfig\n",
        "import transformers.models.phi3.configuration_phi3\n",
        "from transformers.models.gemma3.generation_gemma3 import Gemma3GenerationConfig\n",
        # the scanned repository's own package, whatever its name
        "from mypkg.models.llama import LlamaForCausalLM\n",
        "from .modeling import MixtralSparseMoeBlock\n",
        # our own config mapping of HF keys is not a module reading a foreign config
        'HF_KEYS = {"num_experts_per_tok": "top_k", "num_local_experts": "n_experts"}\n',
    ],
)
def test_near_misses_of_foreign_architectures_are_not_found(scan: Scan, source: str) -> None:
    files = {"src/model.py": source, "mypkg/__init__.py": "", "mypkg/models/llama.py": "X = 1\n"}
    assert ids(scan(files), "EXT004") == []


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 8


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("safetensors", _safetensors_bytes()),
        ("pickle", pickle.dumps({"w": [1.0, 2.0]}, protocol=4)),
        ("PyTorch zip archive", _torch_zip()),
        ("GGUF", b"GGUF\x03\x00\x00\x00" + b"\0" * 64),
        ("HDF5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64),
        ("ONNX", b"\x08\x07\x12\x07pytorch\x1a\x032.1" + b":\x08\x12\x04main*\x00" + b"B\x02\x10\x11"),
    ],
)
def test_weight_files_are_recognised_by_content_whatever_their_extension(scan: Scan, kind: str, content: bytes) -> None:
    findings = only(scan({"assets/readme.txt": content}), "EXT005")
    assert len(findings) == 1
    assert kind.split()[0] in findings[0].message


def test_near_misses_of_weight_files_are_not_found(scan: Scan) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("docs/a.txt", "hello")
    files: dict[str, str | bytes] = {
        "img.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        "docs.zip": archive.getvalue(),
        "numbers.json": "12345678{" + '"a": 1}',
        "protobuf.bin": b"\x08\x07\x12\x05hello",
    }
    assert ids(scan(files), "EXT005") == []


def _signed_checkpoint(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    private = root.parent / f"{root.name}-signing.pem"  # keys never live in the tree
    session_key(private)  # a provenance key of the session's trust root (tests.trust)
    monkeypatch.setenv("ORACLE_SIGNING_KEY", str(private))
    directory = root / "checkpoints" / "step-10"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(_safetensors_bytes())
    key = load_signing_key()
    assert key is not None
    write_provenance(directory, ["model.safetensors"], {"commit": "0" * 40, "step": 10}, key)
    return directory


def test_our_provenance_signed_checkpoint_is_allowed(
    scan: Scan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signed_checkpoint(tmp_path, monkeypatch)
    assert ids(scan({}), "EXT005") == []


def test_weights_whose_provenance_no_longer_matches_are_found(
    scan: Scan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _signed_checkpoint(tmp_path, monkeypatch)
    (directory / "model.safetensors").write_bytes(_safetensors_bytes() + b"tampered")
    assert [f.path for f in only(scan({}), "EXT005")] == ["checkpoints/step-10/model.safetensors"]


@pytest.mark.parametrize(
    "source",
    [
        'import torch\nstate = torch.load("model.pt")\n',
        'import torch\nstate = torch.load("model.pt", weights_only=False)\n',
        'import pickle\nwith open("m.pkl", "rb") as f:\n    model = pickle.load(f)\n',
        "import pickle as pk\nmodel = pk.loads(blob)\n",
        "from joblib import load\nmodel = load('m.joblib')\n",
        'import numpy as np\narrays = np.load("w.npy", allow_pickle=True)\n',
    ],
)
def test_unsafe_deserialisation_is_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/io.py": source}), "EXT006") == ["EXT006"]


@pytest.mark.parametrize(
    "source",
    [
        'import torch\nstate = torch.load("model.pt", weights_only=True)\n',
        "import pickle\nblob = pickle.dumps({'a': 1})\n",
        'import json\ncfg = json.load(open("c.json"))\n',
        'import numpy as np\narrays = np.load("w.npy", allow_pickle=False)\n',
    ],
)
def test_near_misses_of_deserialisation_are_not_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/io.py": source}), "EXT006") == []


def test_a_rules_own_definition_never_triggers_it(scan: Scan) -> None:
    definition = (Path(__file__).resolve().parents[2] / "policies" / "external_weights.py").read_text()
    assert ids(scan({"policies/external_weights.py": definition}), "EXT") == []


@pytest.mark.parametrize(
    ("path", "content", "rule"),
    [
        (
            "src/a.py",
            "def load(model_id):\n    return AutoTokenizer.from_pretrained(model_id)\n\nmodel_id = 'oracle-ai/x'\n",
            "EXT001",
        ),
        (
            "src/b.py",
            'for repo in ["meta-llama/Llama-2-7b-hf"]:\n    Model.from_pretrained(repo)\nrepo = "oracle-ai/x"\n',
            "EXT001",
        ),
        ("src/c.py", "from transformers import LlamaModel, BertModel\n", "EXT004"),
        ("src/d.py", "from transformers import LlamaForCausalLM as Model\n", "EXT004"),
        ("src/e.py", "import transformers\nmodel = transformers.LlamaForCausalLM(config)\n", "EXT004"),
        ("src/f.py", "import torch as T\nstate = T.load(path)\n", "EXT006"),
        ("src/g.py", "import _pickle\nobj = _pickle.loads(blob)\n", "EXT006"),
        ("configs/hf.json", '{"architectures": ["LlamaForCausalLM"]}\n', "EXT003"),
    ],
)
def test_evasions_found_in_review_are_caught(scan: Scan, path: str, content: str, rule: str) -> None:
    assert rule in ids(scan({path: content}))


def test_package_index_urls_and_local_checkpoint_folders_are_not_foreign(scan: Scan) -> None:
    files: dict[str, str | bytes] = {
        "requirements.txt": "--extra-index-url https://download.pytorch.org/whl/cu121\n",
        "checkpoints/step-1000/.keep": "",
        "src/load.py": 'm = Model.from_pretrained("checkpoints/step-1000")\n',
    }
    assert ids(scan(files), "EXT") == []


def test_code_cells_of_notebooks_are_checked_and_name_the_cell(scan: Scan) -> None:
    cell = {
        "cell_type": "code",
        "source": [
            "!pip list\n",
            "from transformers import AutoModel\n",
            "m = AutoModel.from_pretrained('meta-llama/Llama-2-7b-hf')\n",
        ],
    }
    markdown = {"cell_type": "markdown", "source": ["We never call from_pretrained('gpt2') in prose."]}
    notebook = json.dumps({"cells": [markdown, cell], "nbformat": 4})
    findings = only(scan({"explore.ipynb": notebook}), "EXT001")
    assert [f.message.split(":")[0] for f in findings] == ["cell 2, line 3"]
