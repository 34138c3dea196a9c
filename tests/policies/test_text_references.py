"""The reference layer of external_weights (policies/text_references.py): a foreign model named in any text file,
each class with the violation and a near miss that must stay clean."""

from __future__ import annotations

import pytest

from policies import text_references
from policies.external_weights import family_of
from tests.policies.conftest import Scan, ids

JUDGE = text_references.Judge(("oracle-ai",), lambda first: first in {"runs", "configs"}, family_of)

FOUND = [
    # hub hosts, normalised
    ("docs/ref.txt", "weights: HTTPS://HuggingFace.CO/EleutherAI/pythia-160m/resolve/main/pytorch_model.bin\n"),
    ("deploy/assets.yaml", "assets:\n  - url: huggingface.co/bigscience/bloom-560m/resolve/main/model.safetensors\n"),
    ("scripts/get.sh", "git clone --depth 1 git@hf.co:mistralai/Mistral-7B-Instruct-v0.2 third_party/m\n"),
    ("scripts/ssh.sh", "git clone ssh://git@huggingface.co/google/gemma-2b\n"),
    (".gitmodules", '[submodule "m"]\n\tpath = m\n\turl = https://huggingface.co/TinyLlama/TinyLlama-1.1B\n'),
    ("src/cdn.py", 'URL = "https://cdn-lfs-us-1.hf.co/repos/5c/2e/abc?Expires=1&Signature=x"\n'),
    ("configs/m.json", '{"source": "https://cas-bridge.xethub.hf.co/xet-bridge-us/66a1/2b7e?X-Amz-Expires=3600"}\n'),
    ("src/mirror.py", 'MIRROR = "https://hf-mirror.com"\n'),
    ("src/ep.py", 'url = "https://" + "huggingface.co" + "/" + org + "/" + name\n'),
    ("src/ref.ts", "const r = await fetch(`https://huggingface.co/${repo}/resolve/main/model.safetensors`);\n"),
    ("Makefile", "get:\n\tgsutil cp gs://team-models/base/model-00001-of-00004.safetensors ckpt/\n"),
    ("scripts/q.sh", "rclone copy r2:community/mixtral-8x7b.Q4_K_M.gguf ./quant/\n"),
    ("README.md", "Download from https://ollama.com/library/llama3 first.\n"),
    # command-line fetches
    ("scripts/dl.sh", "huggingface-cli download Qwen/Qwen2-7B --local-dir models/qwen\n"),
    ("Dockerfile", "FROM python:3.11\nRUN hf download microsoft/phi-2 --local-dir /models\n"),
    (".github/workflows/ci.yml", "jobs:\n  t:\n    steps:\n      - run: ollama pull llama3.1\n"),
    ("scripts/lit.sh", "litgpt download meta-llama/Llama-3.2-1B\n"),
    ("scripts/tune.sh", "tune download meta-llama/Llama-2-7b-hf --output-dir /tmp/l\n"),
    ("scripts/cpp.sh", "./llama-cli --hf-repo bartowski/Meta-Llama-3.1-8B-Instruct-GGUF -p hi\n"),
    ("slurm/eval.sbatch", "#!/bin/bash\npython eval.py --model_name_or_path mistralai/Mistral-7B-v0.1\n"),
    # model ids under model-like keys, in every syntax
    ("configs/vllm.yaml", "model: mistralai/Mistral-7B-Instruct-v0.3\ntensor_parallel_size: 2\n"),
    ("configs/flow.yaml", "serve: {model: meta-llama/Llama-3.1-8B, port: 8000}\n"),
    ("configs/merge.yaml", "models: [{model: NousResearch/Hermes-2}, {model: teknium/OpenHermes-2.5}]\n"),
    ("adapter/adapter_config.json", '{"base_model_name_or_path": "huggingface/llama-7b", "r": 8}\n'),
    ("deploy/tgi.env", "MODEL_ID=tiiuae/falcon-7b-instruct\nMAX_INPUT_LENGTH=1024\n"),
    ("infra/vars.tf", 'variable "model_id" {\n  type    = string\n  default = "google/gemma-7b"\n}\n'),
    ("infra/prod.tfvars", 'hf_model_id = "Qwen/Qwen2.5-7B-Instruct"\n'),
    ("k8s/deploy.yaml", "env:\n  - name: MODEL_ID\n    value: bigscience/bloom-560m\n"),
    ("ollama/Modelfile", "FROM llama3.1\nPARAMETER temperature 0.2\n"),
    ("configs/lit.yaml", "checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\n"),
    ("configs/train.toml", '[model]\npretrained_model_name_or_path = "EleutherAI/gpt-neox-20b"\n'),
    ("configs/cfg.ini", "[model]\nmodel_name_or_path = allenai/OLMo-7B\n"),
    ("remote/config.json", '{"auto_map": {"AutoModelForCausalLM": "someorg/custom-repo--modeling_x.XForCausalLM"}}\n'),
    ("src/ids.py", 'CANDIDATES = ["mistralai/Mixtral-8x7B-v0.1", "ours"]\n'),
    ("src/consts.py", 'BASE_MODEL = "someorg/some-model"\n'),
]


@pytest.mark.parametrize(("path", "content"), FOUND)
def test_foreign_references_in_any_text_are_found(scan: Scan, path: str, content: str) -> None:
    found = ids(scan({path: content, "runs/.keep": ""}), "EXT00")
    assert {"EXT002", "EXT003"} & set(found), found


CLEAN = [
    (
        "docs/ref.md",
        "Read https://huggingface.co/docs/huggingface_hub/index and the blog https://huggingface.co/blog/x\n",
    ),
    ("docs/logo.html", '<img src="https://huggingface.co/front/assets/huggingface_logo-noborder.svg">\n'),
    ("docs/data.md", "Data: https://huggingface.co/datasets/allenai/c4 and hf://datasets/allenai/c4/en/x.json.gz\n"),
    ("docs/site.md", "Hugging Face (https://huggingface.co) hosts models; we publish none of theirs.\n"),
    ("requirements.txt", "--extra-index-url https://download.pytorch.org/whl/cpu\ntorch==2.13.0\n"),
    ("configs/ours.yaml", "model: oracle-ai/oracle850b-moe\ntokenizer: ./tokenizer\n"),
    ("configs/local.yaml", "checkpoint_dir: runs/oracle850b/step-1000\nmodel_path: /data/runs/latest\n"),
    ("configs/data.yaml", "dataset: allenai/c4\ndataset_name: HuggingFaceFW/fineweb\n"),
    ("configs/api.yaml", "judge:\n  model: gpt-4o-mini\n  provider: openai\n"),
    (".github/workflows/ci.yml", "steps:\n  - uses: actions/checkout@v4\n  - uses: actions/setup-python@v5\n"),
    ("configs/repo.yaml", "repository: pallets/flask\nowner: pallets\n"),
    ("configs/train.yaml", "optimizer: adamw\nmodel_type: oracle_moe\nmodel: ${MODEL_ID}\n"),
    ("scripts/copy.sh", "rsync -av runs/oracle/ backup/oracle/\ncp runs/step-1/model.safetensors out/\n"),
    ("src/paths.py", 'LAYERS = "layers/llama_style.py"\nmodel = build(cfg)\n'),
    ("ollama/Modelfile", "FROM ./oracle-mini.gguf\n"),
    ("README.md", "The gemma family and llama models are foreign; we train our own.\n"),
]


@pytest.mark.parametrize(("path", "content"), CLEAN)
def test_near_misses_of_references_are_not_found(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content, "runs/.keep": ""}), "EXT00") == []


def test_hub_urls_are_normalised_and_told_apart() -> None:
    assert text_references.foreign_url("HTTPS://HF.CO/SomeLab/Model", JUDGE)
    assert text_references.foreign_url("huggingface.co/somelab/model/resolve/main/x.bin", JUDGE)
    assert text_references.foreign_url("git@hf.co:somelab/model", JUDGE)
    assert text_references.foreign_url("https://huggingface.co/username/my_model", JUDGE) is None
    assert text_references.foreign_url("https://huggingface.co/oracle-ai/oracle850b-moe", JUDGE) is None
    assert text_references.foreign_url("https://huggingface.co/spaces/org/app", JUDGE) is None
    assert text_references.foreign_url("https://example.org/firmware.bin", JUDGE) is None
    assert text_references.foreign_url("https://example.org/files/pytorch_model.bin", JUDGE)
    assert text_references.foreign_url("s3://bucket/ckpt/model.safetensors", JUDGE)


def test_values_under_model_keys_are_judged_by_shape_and_family() -> None:
    judge = text_references.foreign_value
    assert judge("model", "meta-llama/Llama-2-7b-hf", JUDGE)
    assert judge("model", "llama3.1", JUDGE)
    assert judge("checkpoint_dir", "checkpoints/meta-llama/Llama-2-7b-hf", JUDGE)  # a local copy of a foreign model
    assert judge("model", "oracle-ai/oracle850b-moe", JUDGE) is None
    assert judge("model", "runs/step-10", JUDGE) is None
    assert judge("model", "${MODEL}", JUDGE) is None
    assert judge("model", "claude-3-5-sonnet", JUDGE) is None
    assert judge("model", "resnet_block", JUDGE) is None


def test_run_outputs_and_placeholder_paths_are_not_references_but_copies_and_hub_ids_are() -> None:
    judge = text_references.foreign_value
    # a run's own output, named after the model it started from: a step or final folder, or inside a run's folder
    assert judge("model", "out/finetune/lora-phi-2/final/", JUDGE) is None
    assert judge("model", "lora_model/final", JUDGE) is None
    assert judge("model", "out/pretrain/tiny-llama/step-00060500", JUDGE) is None
    assert judge("pretrained", "outputs/hf-tinyllama/converted", JUDGE) is None
    assert judge("model", "path/to/microsoft/phi-2/checkpoint", JUDGE) is None
    assert judge("checkpoint_dir", "checkpoints/meta-llama/...", JUDGE) is None
    # still references: a hub id, a download layout, a copy named after the model, a run folder of one name only
    assert judge("model", "microsoft/phi-2", JUDGE)
    assert judge("checkpoint_dir", "out/checkpoints/meta-llama/Llama-2-7b-hf", JUDGE)
    assert judge("checkpoint_dir", "/tmp/Llama-3.2-3B", JUDGE)
    assert judge("checkpoint_dir", "outputs/Llama-2-7b-hf", JUDGE)
    assert judge("model", "meta-llama/Llama-2-7b-hf...", JUDGE)  # an id at the end of a sentence, not a placeholder


MADE_HERE_FOUND = [
    # the same syntax as the clean cases below, naming what is fetched
    ("docs/chat.md", "```bash\nlitgpt chat microsoft/phi-2\n```\n"),
    ("docs/eval.md", "```bash\nlm_eval --model hf --model_args pretrained=outputs/Llama-2-7b-hf\n```\n"),
    ("configs/pretrain.yaml", "model_name: pythia-14m\ninitial_checkpoint_dir: /data/base\nresume: false\n"),
    ("configs/pretrain_hub.yaml", "model_name: EleutherAI/pythia-14m\ninitial_checkpoint_dir:\nresume: false\n"),
    ("configs/finetune.yaml", "model_name: pythia-14m\nout_dir: out/finetune/pythia\n"),
    ("configs/distill.yaml", "model_name: pythia-14m\ninitial_checkpoint_dir:\nteacher_model: llama3.1\n"),
    (".github/workflows/t.yml", "env:\n  from_scratch: true\nsteps:\n  - run: ollama pull llama3.1\n"),
    ("src/random_hub.py", 'llm = LLM.load(model="EleutherAI/pythia-160m", init="random")\n'),
    ("src/loaded.py", 'llm = LLM.load(model="pythia-160m")\n'),
    ("src/other_folder.py", 'llm.save("pythia-160m-random-weights")\nlit = LitLLM(checkpoint_dir="pythia-160m")\n'),
    (
        "src/hub_named.py",
        'm.save_pretrained("EleutherAI/pythia-160m")\nlit = LitLLM(checkpoint_dir="EleutherAI/pythia-160m")\n',
    ),
]


@pytest.mark.parametrize(("path", "content"), MADE_HERE_FOUND)
def test_names_beside_run_outputs_and_scratch_training_are_still_found(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content, "runs/.keep": ""}), "EXT00")  # the text layer's EXT003 or the code layer's load


MADE_HERE_CLEAN = [
    # run folders named after the model they hold (LitGPT's tutorials, lm-eval on a converted run)
    (
        "docs/chat.md",
        "```bash\nlitgpt chat out/finetune/lora-phi-2/final/\nlitgpt evaluate lora_model/final --tasks x\n```\n",
    ),
    ("docs/eval.md", "```bash\nlm_eval --model hf --model_args pretrained=out/hf-tinyllama/converted\n```\n"),
    ("docs/serve.md", "```bash\nlitgpt serve path/to/microsoft/phi-2/checkpoint\n```\n"),
    ("scripts/validate.py", '"""Usage:\n    litgpt validate --checkpoint_dir checkpoints/meta-llama/...\n"""\n'),
    # a folder the file saves its own (randomly initialised) model into, read back
    (
        "src/reload.py",
        'llm.save("pythia-160m-random-weights")\nlit = LitLLM(checkpoint_dir="pythia-160m-random-weights")\n',
    ),
    # an architecture name trained from scratch: the configuration or the call says so
    ("configs/pretrain.yaml", "model_name: pythia-14m\ninitial_checkpoint_dir:\nresume: false\n"),
    ("configs/nano.yaml", "init_from: scratch\nmodel_name: llama-7b\n"),
    ("src/random_init.py", 'llm = LLM.load(model="pythia-160m", init="random")\n'),
]


@pytest.mark.parametrize(("path", "content"), MADE_HERE_CLEAN)
def test_run_outputs_saved_folders_and_scratch_architectures_are_not_references(
    scan: Scan, path: str, content: str
) -> None:
    assert ids(scan({path: content, "runs/.keep": ""}), "EXT00") == []


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (
            "examples/run.ipynb",
            '{"cells": [{"cell_type": "code", "source": ["model_name = \\"Qwen/Qwen3-1.7B\\"\\n"]}]}\n',
        ),
        ("trl/scripts/sft.py", '"""\nUsage:\n    python sft.py --model_name_or_path trl-lib/qwen1.5-1.8b-sft\n"""\n'),
        ("docs/serve.md", "Start it with `trl vllm-serve --model Qwen/Qwen2.5-7B` and wait.\n"),
        ("configs/cli.yaml", "model_name_or_path:\n  Qwen/Qwen2.5-0.5B\nlearning_rate: 1.0e-5\n"),
    ],
)
def test_ids_in_notebook_json_docstrings_inline_commands_and_continued_yaml_are_found(
    scan: Scan, path: str, content: str
) -> None:
    assert ids(scan({path: content}), "EXT003") == ["EXT003"]


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("src/metrics.py", 'self._metrics[mode]["vespo/phi_seq_mean"].append(value)\n'),
        ("docs/distill.md", 'args = Config(output_dir="results/distill-qwen-gsm8k")\n'),
        ("examples/data.py", 'REPO = "trl-lib/ultrafeedback-gpt-3.5-turbo-helpfulness"\n'),
        ("docs/env.md", "```sh\nhf download openenv/echo_env --repo-type=space\n```\n"),
        ("tests/test_card.py", 'assert card.url == "https://huggingface.co/username/my_base_model"\n'),
        ("docs/resume.md", 'trainer.train(resume_from_checkpoint="Qwen3-0.6B-Instruct/checkpoint-5000")\n'),
    ],
)
def test_metric_keys_output_folders_api_data_spaces_and_placeholders_are_not_models(
    scan: Scan, path: str, content: str
) -> None:
    assert ids(scan({path: content}), "EXT00") == []


def test_one_model_on_one_line_is_one_finding(scan: Scan) -> None:
    readme = (
        'trainer = SFTTrainer(model="Qwen/Qwen2.5-0.5B", args=args)\nsee https://huggingface.co/Qwen/Qwen2.5-0.5B\n'
    )
    result = scan({"README.md": "```python\n" + readme + "```\n"})
    assert [(f.rule_id, f.line) for f in result.findings] == [("EXT003", 2), ("EXT002", 3)]


@pytest.mark.parametrize(
    ("path", "content", "rule"),
    [
        ("deploy/serve.sh", "vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000\n", "EXT003"),
        ("web/app.js", "const clf = await pipeline('sentiment-analysis', 'Xenova/distilbert-base-sst2');\n", "EXT003"),
        ("src/main.rs", 'let repo = api.model("sentence-transformers/all-MiniLM-L6-v2".to_string());\n', "EXT003"),
        ("src/fast.pyx", "cdef object m = AutoModel.from_pretrained('bert-base-cased')\n", "EXT001"),
        (
            "report.qmd",
            "# R\n\n```{python}\nfrom transformers import AutoModel\n"
            "m = AutoModel.from_pretrained('roberta-base')\n```\n",
            "EXT001",
        ),
    ],
)
def test_positional_serve_ids_other_languages_cython_and_quarto_chunks_are_found(
    scan: Scan, path: str, content: str, rule: str
) -> None:
    assert rule in ids(scan({path: content}), "EXT00")


def test_a_documentation_example_with_an_unresolved_id_is_not_a_load(scan: Scan) -> None:
    doc = "```python\nfrom transformers import AutoModel\nmodel = AutoModel.from_pretrained(model_name)\n```\n"
    assert ids(scan({"docs/usage.md": doc}), "EXT00") == []


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("src/utils.py", "from litgpt import GPT, Config\n"),
        (
            "docs/pretrain.md",
            "```sh\nlitgpt pretrain --config config_hub/pretrain/tinyllama.yaml --data.help TinyLlama\n```\n",
        ),
        ("src/prepare.py", 'destination = Path("data/starcoder")\n'),
        ("src/ds.py", 'def load(source: str = "liuhaotian/LLaVA-Instruct-150K"):\n    return source\n'),
        ("docs/convert.md", '```python\nm = AutoModel.from_pretrained("output_dir/", local_files_only=True)\n```\n'),
    ],
)
def test_imports_option_values_data_folders_and_trailing_slash_folders_are_not_models(
    scan: Scan, path: str, content: str
) -> None:
    assert ids(scan({path: content}), "EXT00") == []


def test_a_multi_line_call_in_a_markdown_example_is_one_finding(scan: Scan) -> None:
    code = "from transformers import AutoModel\nm = AutoModel.from_pretrained(\n    'microsoft/phi-2',\n)\n"
    doc = "```python\n" + code + "```\n"
    assert ids(scan({"docs/api.md": doc}), "EXT00") == ["EXT001"]


@pytest.mark.parametrize(
    ("path", "content"),
    [
        # a hub landing page, a dataset loaded by id, the same id linked as a dataset, a builder in the tree's package
        ("README.md", "Models: https://www.kaggle.com/models and https://kaggle.com/models.\n"),
        ("examples/data.py", 'ds = load_dataset("trl-lib/llava-instruct-mix", split="train")\n'),
        (
            "docs/data.md",
            "[data](https://huggingface.co/datasets/trl-lib/llava-instruct-mix): 'trl-lib/llava-instruct-mix'\n",
        ),
        ("configs/ppo.yaml", "reward_model:\n  base_model_path: runs.models.mistral.mistral_7b\n"),
        # `litgpt pretrain NAME` trains NAME's architecture from random weights: nothing is fetched
        ("tutorials/pretrain.md", "```bash\nlitgpt pretrain pythia-14m --out_dir out/custom\n```\n"),
    ],
)
def test_landing_pages_datasets_own_builders_and_pretraining_from_scratch_are_not_models(
    scan: Scan, path: str, content: str
) -> None:
    assert ids(scan({path: content, "runs/models/__init__.py": ""}), "EXT00") == []


@pytest.mark.parametrize(
    ("path", "content", "rule"),
    [
        ("README.md", "See https://www.kaggle.com/models/google/gemma for the weights.\n", "EXT002"),
        ("tests/test_x.py", 'IDS = ["trl-internal-testing/tiny-GemmaForCausalLM"]\n', "EXT003"),
        ("tests/test_y.py", 'IDS = ["trl-internal-testing/tiny-LlamaForCausalLM-3.1"]\n', "EXT003"),
        ("tests/test_z.py", 'IDS = ["trl-internal-testing/tiny-OPTForCausalLM"]\n', "EXT003"),
        ("scripts/lit.sh", "litgpt finetune meta-llama/Llama-3.2-1B --out_dir out/ft\n", "EXT003"),
        ("scripts/pre.sh", "litgpt pretrain EleutherAI/pythia-160m --tokenizer_dir x\n", "EXT003"),  # hub config
    ],
)
def test_model_pages_and_ids_glued_to_a_class_name_are_found(scan: Scan, path: str, content: str, rule: str) -> None:
    assert ids(scan({path: content}), "EXT00") == [rule]


def test_a_commit_url_and_the_repo_url_of_one_model_on_one_line_are_one_finding(scan: Scan) -> None:
    line = (
        "CommitInfo(commit_url='https://huggingface.co/somelab/Qwen2-7B-GRPO/commit/4f2a', "
        "repo_url=RepoUrl('https://huggingface.co/somelab/Qwen2-7B-GRPO'))\n"
    )
    assert ids(scan({"notes/upload.txt": line}), "EXT00") == ["EXT002"]
