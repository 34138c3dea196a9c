"""The code layer of external_weights (policies/python_loads.py, policies/loaders.toml): loaders of the whole
ecosystem reached however a program names them, and what is known to be safe kept out."""

from __future__ import annotations

import ast

import pytest

from policies import python_loads
from tests.policies.conftest import Scan, ids

# --- other libraries' weight loaders ------------------------------------------------------------------------------
LIBRARY_LOADS = [
    "import torchvision\nnet = torchvision.models.resnet50(weights='IMAGENET1K_V2')\n",
    "from torchvision.models import vit_b_16, ViT_B_16_Weights\nnet = vit_b_16(weights=ViT_B_16_Weights.DEFAULT)\n",
    "from torchvision import models\nnet = models.densenet121(pretrained=True)\n",
    "from tensorflow.keras.applications import ResNet50\nbackbone = ResNet50(include_top=False)\n",
    "import keras\nbase = keras.applications.EfficientNetB0(weights='imagenet')\n",
    "import tensorflow_hub as hub\nencoder = hub.KerasLayer('https://tfhub.dev/google/universal-sentence-encoder/4')\n",
    "import torchaudio\nbundle = torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H\nm = bundle.get_model()\n",
    "import kagglehub\npath = kagglehub.model_download('google/gemma/pyTorch/2b')\n",
    "import whisper\nmodel = whisper.load_model('large-v3')\n",
    "from ultralytics import YOLO\ndetector = YOLO('yolov8n.pt')\n",
    "import gensim.downloader as api\nvectors = api.load('glove-wiki-gigaword-100')\n",
    "import spacy\nnlp = spacy.load('en_core_web_sm')\n",
    "from vllm import LLM\nengine = LLM(model='mistralai/Mistral-7B-Instruct-v0.2')\n",
    "import mlx_lm\nmodel, tok = mlx_lm.load('mlx-community/Llama-3.2-1B-Instruct-4bit')\n",
    "import ollama\nollama.pull('llama3.1')\n",
    "from peft import PeftModel\nmodel = PeftModel.from_pretrained(base, 'tloen/alpaca-lora-7b')\n",
    "model.load_adapter('ybelkada/opt-350m-lora')\n",
    "from transformers.utils import cached_file\ncfg = cached_file('bigscience/bloom', 'config.json')\n",
    "from speechbrain.inference import EncoderClassifier\nc = EncoderClassifier.from_hparams(source='speechbrain/x')\n",
    "from diffusers import StableDiffusionPipeline\np = StableDiffusionPipeline.from_single_file('https://x/y.ckpt')\n",
    "from litgpt import LLM\nllm = LLM.load('microsoft/phi-2')\n",
]


@pytest.mark.parametrize("source", LIBRARY_LOADS)
def test_loaders_of_other_libraries_are_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == ["EXT001"]


@pytest.mark.parametrize(
    "source",
    [
        "import torchvision\nnet = torchvision.models.resnet50(weights=None)\n",
        "from torchvision import models\nnet = models.densenet121(pretrained=False)\n",
        "from tensorflow.keras.applications import ResNet50\nbackbone = ResNet50(weights=None)\n",
        "import whisper\nmodel = whisper.load_model('./checkpoints/ours.pt')\n",
        "import kagglehub\npath = kagglehub.dataset_download('zillow/zecon')\n",
        "from datasets import load_dataset\nds = load_dataset('allenai/c4', 'en', streaming=True)\n",
        "from huggingface_hub import snapshot_download\nsnapshot_download('allenai/c4', repo_type='dataset')\n",
        "import spacy\nnlp = spacy.load('./pipelines/ours')\n",
    ],
)
def test_near_misses_of_library_loaders_are_not_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == []


# --- loaders reached indirectly -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        # an alias of the bound method
        "from transformers import AutoModelForCausalLM\nload = AutoModelForCausalLM.from_pretrained\n"
        "model = load('meta-llama/Llama-3.1-8B')\n",
        # getattr with a constant name
        "import transformers\ncls = getattr(transformers, 'AutoModelForCausalLM')\n"
        "model = getattr(cls, 'from_pretrained')('Qwen/Qwen2.5-7B')\n",
        # a dispatch table
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "FETCH = {'file': hf_hub_download, 'repo': snapshot_download}\n"
        "def get(kind, repo):\n    return FETCH[kind](repo)\n",
        # functools.partial
        "import functools\nfrom transformers import AutoModel\n"
        "make = functools.partial(AutoModel.from_pretrained, 'google/gemma-2b')\nmodel = make()\n",
        # a hub client instance, file-system style, no loader name
        "from huggingface_hub import HfFileSystem\nfs = HfFileSystem()\n"
        "with fs.open('meta-llama/Llama-2-7b/model.safetensors', 'rb') as f:\n    data = f.read()\n",
        "from huggingface_hub import HfApi\nHfApi().snapshot_download('tiiuae/falcon-7b')\n",
        # an import alias
        "import huggingface_hub as h\nh.hf_hub_download('openai/whisper-large', 'model.safetensors')\n",
    ],
)
def test_loaders_reached_through_aliases_tables_and_clients_are_found(scan: Scan, source: str) -> None:
    assert "EXT001" in ids(scan({"src/load.py": source}), "EXT001")


# --- what is known to be safe -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        # in-memory round trips are not reading a file
        "import pickle\nclone = pickle.loads(pickle.dumps(obj))\n",
        "import pickle\nblob = pickle.dumps(state)\nback = pickle.loads(blob)\n",
        "import torch\nstate = torch.load(path, weights_only=True)\n",
        "import numpy as np\narr = np.load('x.npy')\n",
    ],
)
def test_safe_deserialisation_is_not_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/io.py": source}), "EXT006") == []


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\nwith open(path, 'rb') as f:\n    obj = pickle.load(f)\n",
        "import numpy as np\narr = np.load('x.npy', allow_pickle=True)\n",
        "from torch import load\nstate = load('model.pt')\n",
        "import joblib\nclf = joblib.load('model.joblib')\n",
    ],
)
def test_unsafe_deserialisation_is_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/io.py": source}), "EXT006") == ["EXT006"]


@pytest.mark.parametrize(
    "source",
    [
        # a model saved and reloaded from the test's own temporary folder
        "from peft import PeftModel\n\ndef test_roundtrip(tmp_path, base, model):\n"
        "    model.save_pretrained(tmp_path / 'adapter')\n"
        "    again = PeftModel.from_pretrained(base, tmp_path / 'adapter')\n",
        "import tempfile\nfrom transformers import AutoModel\n\ndef roundtrip(model):\n"
        "    with tempfile.TemporaryDirectory() as tmp:\n        model.save_pretrained(tmp)\n"
        "        return AutoModel.from_pretrained(tmp)\n",
        "from transformers import AutoModel\n\ndef reload(model, out_dir):\n    model.save_pretrained(out_dir)\n"
        "    return AutoModel.from_pretrained(out_dir)\n",
        # local run folders
        "from pathlib import Path\nfrom transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(Path('runs') / name)\n",
        "import os\nfrom transformers import AutoModel\nm = AutoModel.from_pretrained(os.path.join('./runs', step))\n",
        "from transformers import AutoModel\nm = AutoModel.from_pretrained(f'runs/oracle/{step}')\n",
        # a local variable that happens to be called pipeline
        "def run(pipeline):\n    return pipeline('text')\n",
        "from transformers import AutoModel\nm = AutoModel.from_pretrained('oracle-ai/oracle850b-moe')\n",
    ],
)
def test_local_and_own_loads_are_not_found(scan: Scan, source: str) -> None:
    files = {"src/load.py": source, "runs/.keep": ""}
    assert ids(scan(files), "EXT001") == []


@pytest.mark.parametrize(
    "source",
    [
        "from transformers import AutoModel\nm = AutoModel.from_pretrained(f'{org}/llama-3')\n",
        "from transformers import AutoModel\n\ndef load(name):\n    return AutoModel.from_pretrained(name)\n",
        "from transformers import AutoModel\nm = AutoModel.from_pretrained(**kwargs)\n",
    ],
)
def test_unresolvable_loads_fail_closed(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == ["EXT001"]


def test_code_that_does_not_parse_is_read_by_the_text_fallback() -> None:
    lines = [(3, "model = AutoModel.from_pretrained(name"), (4, "  x = pickle.loads(blob) # a comment: torch.load(")]
    hits = python_loads.text_fallback(lines)
    assert [(hit.rule_id, hit.line) for hit in hits] == [("EXT001", 3), ("EXT006", 4)]
    assert python_loads.text_fallback([(1, "data = json.load(f)  # load( of a config")]) == []


@pytest.mark.parametrize(
    "source",
    [
        # Python 3.11 cannot parse a PEP 695 alias: the rest of the file is still read
        "type Vector = list[float]\nfrom transformers import AutoModel\nm = AutoModel.from_pretrained(REPO)\n",
        "def broken(:\n    pass\nimport pickle\nobj = pickle.load(open('x', 'rb'))\n",
    ],
)
def test_python_that_does_not_parse_is_not_a_pass(scan: Scan, source: str) -> None:
    result = scan({"src/new_syntax.py": source})
    assert [f for f in result.findings if f.path == "src/new_syntax.py"], result.findings


def test_the_loader_table_is_complete_and_well_formed() -> None:
    table = python_loads.table()
    assert {loader.mode for loader in table.loaders} <= {"id", "flag", "always", "dataset"}
    for loader in table.loaders:
        assert loader.library, loader
    assert table.match("transformers.AutoModelForCausalLM.from_pretrained") is not None
    assert table.match("mypkg.create_model") is None  # create_model is timm's or open_clip's only
    assert table.match("timm.create_model") is not None
    ast.parse("x = 1")  # the module is importable and pure


@pytest.mark.parametrize(
    "source",
    [
        "from pathlib import Path\nfrom transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(Path(args.model))\n",
        "from pathlib import Path\nfrom transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(Path('meta-llama') / args.size)\n",
    ],
)
def test_a_path_wrapper_does_not_hide_a_hub_id(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == ["EXT001"]


def test_a_run_folder_that_is_not_in_the_tree_is_still_local(scan: Scan) -> None:
    source = (
        "from pathlib import Path\nfrom mylib import RunCheckpoint\n"
        "ck = RunCheckpoint.from_pretrained(Path('runs') / run_id)\n"
    )
    assert ids(scan({"src/load.py": source}), "EXT001") == []


@pytest.mark.parametrize(
    "source",
    [
        "import operator\nfrom transformers import AutoModel\n"
        "load = operator.methodcaller('from_pretrained', 'google/gemma-7b')\nmodel = load(AutoModel)\n",
        "import nemo.collections.asr as nemo_asr\n"
        "m = nemo_asr.models.ASRModel.from_pretrained(model_name='nvidia/parakeet-tdt-1.1b')\n",
        "from faster_whisper import WhisperModel\nmodel = WhisperModel('distil-large-v3', device='cuda')\n",
        "from pathlib import Path\nfrom safetensors.torch import load_file\n"
        "SNAP = Path.home() / '.cache/huggingface/hub' / 'models--mistralai--Mistral-7B-v0.1'\n"
        "state = load_file(SNAP / 'snapshots' / 'model.safetensors')\n",
    ],
)
def test_method_callers_keyword_ids_and_hub_cache_layouts_are_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == ["EXT001"]


def test_our_own_model_in_the_hub_cache_layout_is_not_found(scan: Scan) -> None:
    source = "CACHE = '~/.cache/huggingface/hub/models--oracle-ai--oracle850b-moe'\n"
    assert ids(scan({"src/cache.py": source}), "EXT001") == []


@pytest.mark.parametrize("path", ["src/legacy/warm.cpython-311.pyc", "assets/blob.dat"])
def test_compiled_python_in_the_tree_is_not_a_pass(scan: Scan, path: str) -> None:
    import importlib.util
    import marshal

    code = compile("from huggingface_hub import snapshot_download\nsnapshot_download('x/y')\n", "warm.py", "exec")
    data = importlib.util.MAGIC_NUMBER + b"\0" * 12 + marshal.dumps(code)
    result = scan({path: data, "src/ok.py": "x = 1\n"})
    assert [(f.rule_id, f.path) for f in result.findings] == [("COV001", path)]


@pytest.mark.parametrize(
    "source",
    [
        # a model object passed on, not an id
        "from peft import get_peft_model\nfrom trl import ValueHead\n"
        "model = get_peft_model(base, config)\nwrapped = ValueHead.from_pretrained(model)\n",
        # a folder joined onto the test's temporary folder
        "import os\nfrom transformers import AutoModel\n\nclass T:\n    def test(self):\n"
        "        path = os.path.join(self.tmp_dir, 'bema')\n        return AutoModel.from_pretrained(path)\n",
        # the folder the same program trains into
        "from peft import PeftModel\nfrom trl import SFTConfig\noutput_dir = 'Qwen-sft-run'\n"
        "args = SFTConfig(output_dir=output_dir)\nmodel = PeftModel.from_pretrained(base, output_dir)\n",
        # a path checked on disk first
        "import os\nfrom transformers import AutoModel\n\ndef load(p):\n    if os.path.exists(p):\n"
        "        return AutoModel.from_pretrained(p)\n",
        # the generic Auto* factory module is not a model implementation
        "from transformers.models.auto.auto_factory import _BaseAutoModelClass\n",
        # reading a config's MoE numbers to count FLOPs is not a vendored block (no forward)
        "class TestFlops:\n    def test(self, config):\n"
        "        assert config.num_experts_per_tok * config.moe_intermediate_size > 0\n",
    ],
)
def test_model_objects_run_folders_and_generic_factories_are_not_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/mod.py": source}), "EXT00") == []


@pytest.mark.parametrize(
    "source",
    [
        "from trl import GRPOTrainer\ntrainer = GRPOTrainer(model='Qwen/Qwen3-1.7B', reward_funcs=reward)\n",
        "from smolagents import TransformersModel\nm = TransformersModel(model_id='someone-else/agent-1.7b')\n",
    ],
)
def test_a_hub_id_handed_to_any_call_as_its_model_is_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/agent.py": source}), "EXT001") == ["EXT001"]


@pytest.mark.parametrize(
    "source",
    [
        "from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained('./w')\n"
        "pipe.load_lora_weights('nerijs/pixel-art-xl', weight_name='pixel.safetensors')\n",
        "import tensorflow as tf\np = tf.keras.utils.get_file('v.h5', origin='https://example.org/keras/v_notop.h5')\n",
        "import segmentation_models_pytorch as smp\nnet = smp.Unet(encoder_name='resnet34')\n",
        "from huggingface_sb3 import load_from_hub\n"
        "ck = load_from_hub(repo_id='sb3/ppo-CartPole-v1', filename='x.zip')\n",
        "from flair.models import SequenceTagger\ntagger = SequenceTagger.load('flair/ner-english-large')\n",
        "import clip\nmodel, preprocess = clip.load('ViT-B/32', device='cpu')\n",
        "from fastai.vision.all import *\nlearn = vision_learner(dls, resnet34, metrics=error_rate)\n",
        "import easyocr\nreader = easyocr.Reader(['en', 'de'])\n",
        "from ultralytics import RTDETR\nmodel = RTDETR('rtdetr-l.pt')\n",
        "import operator\nfrom transformers import AutoModel\n"
        "m = operator.attrgetter('from_pretrained')(AutoModel)('distilbert-base-uncased')\n",
    ],
)
def test_more_libraries_and_indirections_from_the_red_team_are_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/load.py": source}), "EXT001") == ["EXT001"]


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np\narr = np.load(path, None, True)\n",
        "import shelve\ndb = shelve.open('runs/cache.db')\n",
        "import functools\nimport torch\nload_cpu = functools.partial(torch.load, map_location='cpu')\n",
    ],
)
def test_positional_shelve_and_partial_deserialisers_are_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/io.py": source}), "EXT006") == ["EXT006"]


@pytest.mark.parametrize(
    "source",
    [
        "import io\nimport pickle\nbuf = io.BytesIO()\npickle.dump(obj, buf)\nbuf.seek(0)\nback = pickle.load(buf)\n",
        "from pathlib import Path\nfrom transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(Path(out_dir) / 'final', local_files_only=True)\n",
        "from transformers import AutoModel\nm = AutoModel.from_pretrained('outputs/final')\n",
        "import os\nfrom transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(os.path.join('runs/exp1', 'final'))\n",
        "from mylab.models import Encoder\nenc = Encoder.from_pretrained('weights/enc/best.pt')\n",
    ],
)
def test_in_memory_buffers_local_only_loads_and_run_paths_are_not_found(scan: Scan, source: str) -> None:
    assert ids(scan({"src/io.py": source}), "EXT00") == []


def test_a_resolved_foreign_id_is_found_even_with_local_files_only(scan: Scan) -> None:
    source = (
        "from transformers import AutoModel\n"
        "m = AutoModel.from_pretrained('meta-llama/Llama-2-7b', local_files_only=True)\n"
    )
    assert ids(scan({"src/io.py": source}), "EXT001") == ["EXT001"]


def test_an_attrgetter_bound_to_a_name_is_resolved(scan: Scan) -> None:
    source = (
        "import operator\nfrom transformers import AutoModel\n"
        "loader = operator.attrgetter('from_pretrained')(AutoModel)\nm = loader('distilbert-base-uncased')\n"
    )
    assert ids(scan({"src/attr.py": source}), "EXT001") == ["EXT001"]


def test_a_dataset_download_names_no_model(scan: Scan) -> None:
    source = (
        "from huggingface_hub import hf_hub_download\n"
        "p = hf_hub_download(repo_id='allenai/c4', filename='en/c4.json.gz', repo_type='dataset')\n"
    )
    assert ids(scan({"data/fetch.py": source}), "EXT00") == []
