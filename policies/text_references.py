"""Layer 2 of `external_weights`, references: a foreign model named anywhere in any text file.

What is found, whatever the file's kind (code, configs, shell, Makefiles, Dockerfiles, CI YAML, notebooks, docs):
- EXT002, hub locations: URLs of model hubs and their mirrors and CDNs, normalised (case, scheme or none, `hf://`,
  ssh remotes `git@hf.co:org/name`, presigned CDN links, a bare hub endpoint a URL is assembled from), links to weight
  files on any host or object store (`s3://…/model.safetensors`).
- EXT003, model ids: repo-id-shaped values under model-like keys in every config syntax (YAML block and flow style,
  JSON, TOML, INI, .env, HCL/Terraform, Kubernetes `name:`/`value:` pairs, Ollama Modelfiles' `FROM`), on command
  lines (`huggingface-cli download`, `hf download`, `ollama pull`, `litgpt download`, `tune download`, `--model X`
  and its spellings), `auto_map` entries that fetch remote code from another repository, and quoted repo ids that
  name a foreign model family wherever they sit.
Told apart and allowed: our own namespaces, local paths (a folder of the tree, `./`, `/`, `~`), datasets, the hub's
documentation, blog, Spaces and static assets, Python package indexes, and API-only model names (no weights exist).

The module knows nothing of rules or files: `check_text` returns `Hit`s for the caller to report.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

HUB_HOSTS = (
    "huggingface.co", "hf.co", "hf-mirror.com", "modelscope.cn", "modelscope.ai", "ollama.com", "ollama.ai",
    "registry.ollama.ai", "civitai.com", "tfhub.dev", "kaggle.com", "download.pytorch.org", "dl.fbaipublicfiles.com",
    "openaipublic.azureedge.net",
)  # fmt: skip
# Hosts that only serve a hub's files: any URL there is a download of a model's content.
CDN_HOST = re.compile(r"^(cdn-lfs[\w-]*\.(huggingface\.co|hf\.co)|[\w.-]*\.xethub\.hf\.co|cas-bridge[\w.-]*\.hf\.co)$")
# Hugging Face paths that are not model repositories.
HF_NON_MODEL = {
    "docs", "datasets", "spaces", "blog", "learn", "papers", "pricing", "join", "login", "settings", "tasks", "chat",
    "enterprise", "organizations", "collections", "posts", "changelog", "new", "front", "assets", "static",
    "avatars", "welcome", "terms-of-service", "privacy", "support", "inference-endpoints", "hub",
}  # fmt: skip
WEIGHT_SUFFIXES = ("safetensors", "bin", "pt", "pth", "ckpt", "gguf", "ggml", "onnx", "h5", "pkl", "tflite", "msgpack")
# Archives and array files hold weights as often as data: a link to one is weights when its name says so
# (`ViT-B_16.npz` of a model folder, `model.tar.gz`, `checkpoint.zip`), never by suffix alone (`modelnet40.zip`).
ARCHIVE_SUFFIXES = ("npz", "npy", "zip", "tar", "tgz", "gz", "zst", "7z", "xz")
# Names of hosted API models: they have no weights to download (a call to an API is not a foreign checkpoint).
API_ONLY = re.compile(r"^(gpt-3\.5|gpt-4|gpt-4o|gpt-5|o1|o3|o4|chatgpt|text-davinci|claude|gemini)([-.\w]*)$", re.I)
# An API model's name inside another name (`ultrafeedback-gpt-3.5-turbo-helpfulness`): data made with an API.
API_INSIDE = re.compile(r"(?i)(?<![a-z0-9])(gpt-3\.5|gpt-4o?|gpt-5|chatgpt|text-davinci|claude-\d|gemini-\d)")
# Organisations of documentation placeholders, not of any model (`huggingface.co/username/my_model`).
PLACEHOLDER_ORGS = frozenset(
    {
        "username",
        "your-username",
        "your_username",
        "user",
        "org",
        "your-org",
        "your_org",
        "my-org",
        "myorg",
        "your-hf-username",
        "your-name",
        "yourname",
        "<org>",
        "<username>",
        "example",
        "someone",
        "foo",
    }
)

_URL = re.compile(
    r"""(?ix)(?P<url>
        (?:https?|hf|s3|gs|gcs|az|abfss?|wasbs?|oss|r2|ssh|git\+https?)://[^\s"'<>()\[\]{}`\\,;|]+
      | git@[\w.-]+:[^\s"'<>()\[\]{}`\\,;|]+
      | (?<![\w./@-])(?:www\.)?(?:huggingface\.co|hf\.co|hf-mirror\.com)/[^\s"'<>()\[\]{}`\\,;|]+
    )"""
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}(?::[\w./-]+)?$")
_FILE_SUFFIX = re.compile(
    r"\.(py|pyi|json|ya?ml|toml|md|rst|txt|cfg|ini|sh|ipynb|html?|css|js|ts|png|jpe?g|svg|gif|csv|tsv|jsonl|parquet"
    r"|arrow|log|lock|in|out|c|cc|cpp|h|hpp|rs|go|java|tex|bib|zip|tar|gz|tgz|whl|so|dll|exe)$",
    re.I,
)
_TEMPLATE = re.compile(r"\$\{|\$\(|\{\{|\$[A-Za-z_]|<[^>]+>|%\(")

# Keys whose value names a model. Matched after lower-casing and turning - and . into _ (so `--model-id`,
# `MODEL_ID`, `model.name_or_path` all meet), by name or by ending.
MODEL_KEYS = frozenset(
    {
        "base_model", "model_name_or_path", "pretrained_model_name_or_path", "_name_or_path", "name_or_path",
        "model_id", "model", "model_name", "repo_id", "hub_model_id", "teacher_model", "reward_model", "ref_model",
        "reference_model", "tokenizer", "tokenizer_name", "tokenizer_name_or_path", "tokenizer_id", "init_from",
        "base_model_name_or_path", "served_model_name", "checkpoint_dir", "model_path", "hf_model", "hf_model_id",
        "hf_model_name", "llm", "llm_model", "pretrained", "pretrained_model", "adapter_name_or_path",
        "draft_model", "speculative_model", "embedding_model", "model_repo", "model_url", "from", "model_type",
        "architectures", "hf_repo", "hub_repo", "hf_model_repo", "tokenizer_dir", "initial_checkpoint_dir",
    }
)  # fmt: skip
MODEL_KEY_ENDINGS = (
    "_model", "_model_id", "_model_name", "_name_or_path", "_model_path", "_model_repo", "_repo_id", "_checkpoint_dir",
)  # fmt: skip
_KEY_WORD = (
    r"(?:[A-Za-z_][\w.-]*?)?(?:model|MODEL|Model)(?:[_.-]?(?:id|ID|name|NAME|name_or_path|path|PATH|repo|REPO|type|url))?"
    r"|[\w.-]*name_or_path|[\w.-]*(?:repo_id|REPO_ID)|(?:hf|hub|HF|HUB)[_-]repo|tokenizer[\w.-]*|TOKENIZER[\w]*|checkpoint_dir|init_from"
    r"|architectures|pretrained|llm|LLM"
)
# key, separator, value: `key: v`, `key = "v"`, `"key": "v"`, `KEY=v`, `--key v`, `--key=v`, `key v` (Modelfile)
_PAIR = re.compile(
    r"""(?:^|[\s{,(\[;"'])(?P<dash>--?)?["']?(?P<key>""" + _KEY_WORD + r""")["']?"""
    r"""(?P<sep>\s*[:=]\s*|\s+)(?P<quote>["']?)(?P<value>[^\s"',}\]#;()]+)"""
)
# Literal words that each expensive pattern needs (tested on the lower-cased line before the pattern runs).
_HUB_WORDS = re.compile(r"huggingface\.co|hf\.co|hf-mirror\.com")
_COPY_WORDS = re.compile(r"rclone|gsutil|s3cmd|s5cmd|azcopy|scp|rsync|mc|s3")
_FETCH_WORDS = re.compile(
    r"huggingface-cli|hf\s|ollama|litgpt|tune|modelscope|kaggle|vllm|lmdeploy|mlx_lm|sglang|lms|llamafactory"
)
# Command-line fetches: the command, then its arguments.
_FETCH = re.compile(
    r"(?i)(?P<cmd>huggingface-cli\s+(?:download|repo\s+clone)|(?<![\w-])hf\s+download|ollama\s+(?:pull|run)"
    r"|(?-i:litgpt)\s+(?-i:download|chat|finetune\w*|pretrain|generate\w*|serve|evaluate|convert\w*|merge_lora)"
    r"|tune\s+download"
    r"|modelscope\s+download|kaggle\s+models\s+instances\s+versions\s+download|vllm\s+serve|mlx_lm\.\w+"
    r"|sglang\s+serve|lms\s+get|llamafactory-cli\s+\w+|lmdeploy\s+serve\s+\w+)\s+(?P<args>[^\n|;&]*)"
)
# llama.cpp's `-hf ORG/NAME[:QUANT]` and `-hfr ORG/NAME`: a download from the hub.
_HF_SHORT_FLAG = re.compile(r"(?<![\w-])-hfr?(?:=|\s+)[\"']?(?P<value>[^\s\"'\\,)]+)")
_FLAG_VALUE = re.compile(r"--(?:model|model_id|model-id|repo|repo_id|repo-id)[= ]+(?P<value>[^\s\"']+)")
# Copies from remote storage (`rclone copy r2:bucket/x.gguf`, `gsutil cp gs://…`, `scp host:x.pt`): a remote
# argument (`name:path`, not a local path) that ends in a weights suffix.
_REMOTE_COPY = re.compile(
    r"(?i)\b(?P<cmd>rclone|gsutil|s3cmd|s5cmd|azcopy|scp|rsync|mc|aws\s+s3)\b[^\n]*?\s(?P<arg>[\w.@-]+:[^\s\"']*\.(?:"
    + "|".join(WEIGHT_SUFFIXES)
    + r"))(?=[\s\"']|$)"
)
# Syncs from remote storage filtered to weights (`aws s3 sync s3://b/m ./m --include '*.safetensors'`): a remote
# source (a URI or `remote:path`) and a `*.suffix` pattern of weights on the same command line.
_REMOTE_SYNC = re.compile(
    r"(?i)\b(?P<cmd>rclone|gsutil|s3cmd|s5cmd|azcopy|aws\s+s3)\b[^\n]*?\s[\"']?(?P<arg>(?:[a-z][\w+.-]*://|[\w.@-]+:)"
    r"[^\s\"']*)[^\n]*?\*\.(?P<suffix>" + "|".join(WEIGHT_SUFFIXES) + r")\b"
)
# LitGPT's download layout, `checkpoints/ORG/NAME` (any prefix): the local copy of hub repo ORG/NAME, unless the last
# part is a step of a run of ours.
_HUB_LAYOUT = re.compile(r"(?:^|/)checkpoints/(?P<org>[A-Za-z0-9][\w.-]*)/(?P<name>[A-Za-z0-9][\w.-]*)/?$")
_RUN_STEP = re.compile(r"(?i)^(step|epoch|iter|checkpoint|ckpt|global_step)[-_]?\d+$|^(final|latest|last|best)$")
# Folders training runs write into: a path under one of them, a folder inside the run's (`out/finetune/run/final`,
# `outputs/hf-export/converted`), holds what the run made, not a download named after the model it started from.
RUN_ROOTS = frozenset(
    {"out", "outs", "output", "outputs", "runs", "results", "experiments", "work_dirs", "saved", "trained", "finetuned"}
)
# A placeholder path in usage text: `path/to/model`, `checkpoints/meta-llama/...`.
_PLACEHOLDER_PATH = re.compile(r"(?i)^/?path/to/|/(?:\.\.\.|\u2026)(?:/|$)")
# What says a configuration trains its model from scratch: an initial checkpoint left empty (LitGPT's pretraining
# configs), `init_from: scratch` (nanoGPT), `from_scratch: true`; on a call's line, `init="random"` too. The model name
# of such a configuration or call, when bare (no org, no path), is an architecture to build, not a checkpoint to fetch.
_SCRATCH_CONFIG = (
    r"""^\s*["']?(?:initial_checkpoint(?:_dir|_path)?|init_checkpoint(?:_dir|_path)?|pretrained_checkpoint)["']?"""
    r"""\s*[:=]\s*(?:null|none|~|""|'')?\s*,?\s*(?:#.*)?$"""
    r"""|\binit_from["']?\s*[:=]\s*["']?scratch\b|\b(?:from_scratch|random_init)["']?\s*[:=]\s*["']?true\b"""
)
_FROM_SCRATCH_FILE = re.compile(f"(?im){_SCRATCH_CONFIG}")
_FROM_SCRATCH_LINE = re.compile(f"(?i){_SCRATCH_CONFIG}" + r"""|\binit["']?\s*[:=]\s*["']?random\b""")
_SCRATCH_KEYS = frozenset({"model", "model_name", "name", "arch", "architecture", "model_arch"})
# The key (or flag) a finding of a value under a key names: `checkpoint_dir names '...'`, `--model: model names '...'`.
_KEYED_MESSAGE = re.compile(r"^(?:--[\w.-]+: )?(?P<key>[\w.-]+) names ")
# A folder the file itself writes a model into (`llm.save("tiny-random")`, `model.save_pretrained("out-dir")`): what is
# read back from it is what the file made; the load that made it, if foreign, is a finding of its own.
_SAVED_TO = re.compile(
    r"""\.(?:save|save_pretrained|save_model)\(\s*(?:(?:save_directory|path|output_dir)\s*=\s*)?[rf]?"""
    r"""(?P<q>["'])(?P<value>[^"'{}\s]+)(?P=q)"""
)
# A loader called with a quoted repo id in text that no code analysis reads: Markdown, `python -c "..."` in shell,
# CI steps (Python files and notebooks are read by the code layer).
_LOADER_CALL = re.compile(
    r"""\b(?P<call>from_pretrained|snapshot_download|hf_hub_download|hf_hub_url)\(\s*"""
    r"""(?:(?:repo_id|pretrained_model_name_or_path|model_id)\s*=\s*)?\\?["'](?P<value>[^"'\\\s]+)\\?["'](?P<rest>[^)]*)"""
)
_OLLAMA_CREATE = re.compile(r"(?i)ollama\s+create\s+(?P<name>[^\s\"';&|]+)")
_ARG_TOKEN = re.compile(r"[^\s\"'`\\\[\](),;]+")
# Keys under a model-like block that hold its id (`model:` / `  id: org/name`, `[model]` / `name = "org/name"`).
_CHILD_KEYS = frozenset(
    {"id", "name", "path", "repo", "repo_id", "uri", "name_or_path", "pretrained", "hub_id", "source"}
)  # fmt: skip
_BLOCK_KEY = re.compile(r"""^(?P<indent>\s*)(?:-\s+)?["']?(?P<key>[\w.-]+)["']?\s*[:=]\s*(?P<value>.*?)\s*,?\s*$""")
# A model-like key that opens a block: `model:`, `"model": {`, `[model]` (a candidate line; the block is read whole).
_BLOCK_OPENER_TEXT = (
    r"""^\s*["']?(?:model|llm|base_model|tokenizer)[\w.-]*["']?\s*[:=]\s*(?:[{\[]|[>|][-+]?)?\s*$"""
    r"""|^\s*\[[\w.-]*model[\w.-]*\]"""
)
_BLOCK_OPENER = re.compile(_BLOCK_OPENER_TEXT, re.I)
_SECTION = re.compile(r"^\s*\[+(?P<name>[^\]]+)\]+\s*$")
# A hub's host on its own in a string (`"https://" + "huggingface.co" + "/" + repo`): the endpoint of a download.
_BARE_HOST = re.compile(
    r"""(?i)(?P<q>["'])(?P<host>(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co|hf-mirror\.com))/?(?P=q)"""
)
_MODELFILE_FROM = re.compile(r"^\s*FROM\s+(?P<value>\S+)", re.I)
_AUTO_MAP = re.compile(r"""["']?(?P<cls>Auto\w+)["']?\s*:\s*["'](?P<repo>[\w.-]+/[\w.-]+)--[\w.]+["']""")
_QUOTED = re.compile(r"""(?P<q>["'`])(?P<value>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)\\?(?P=q)""")
# A dataset loader's first argument (`load_dataset("trl-lib/llava-instruct-mix")`): a data set, not a model.
_DATASET_CALL_BEFORE = re.compile(r"\b(?:load_dataset|load_from_hub|dataset_from_hub)\(\s*(?:path\s*=\s*)?$")
# A path-like keyword before a quoted value (`output_dir="results/distill-qwen"`): a local folder, not a model id.
_DATA_KEY_BEFORE = re.compile(
    r"(?i)(source|dataset\w*|data_\w*|destination_path|download_dir)(\s*:\s*[\w\[\]|. ]+?)?\s*[=:]\s*$"
)
_PATH_KEY_BEFORE = re.compile(
    r"(?i)(output|save|logging|log|cache|run|out|result|tmp|data)[_-]?(dir|path|folder|name)?\s*[=:]\s*$"
)
# `--model X` and its spellings, in any text (docstrings and prose included: a command line is a command line).
_MODEL_FLAG = re.compile(
    r"(?i)--(?P<key>model|model[-_]id|model[-_]path|model[-_]name[-_]or[-_]path|model[-_]name|base[-_]model"
    r"|pretrained[-_]model|initial[-_]checkpoint[-_]dir|checkpoint[-_]dir|tokenizer[-_]dir"
    r"[-_]name[-_]or[-_]path|repo[-_]id|hf[-_]repo|tokenizer[-_]name[-_]or[-_]path|tokenizer[-_]name)"
    r"(?:=|\s+)[\"']?(?P<value>[^\s\"'\\,)]+)"
)
_PY_CONSTANT = re.compile(
    r"""^\s*(?P<key>[A-Za-z_]\w*)\s*(?::[^=]+)?=\s*(?P<q>["'])(?P<value>[^"']+)(?P=q)\s*(?:#.*)?$"""
)
# `key:` alone, or opening a block scalar (`key: >-`), its value on the following lines
_YAML_LIST_KEY = re.compile(r"""^\s*(?:-\s*)?["']?(?P<key>[\w.-]+)["']?\s*:\s*(?:[>|][-+]?\d?\s*)?(?:#.*)?$""")
_FLOW_PAIR = re.compile(r"""["']?(?P<key>[\w.-]+)["']?\s*[:=]\s*["']?(?P<value>[^"',}]+)""")
_YAML_SCALAR = re.compile(r"""^\s+["']?(?P<value>[^"'#\s:\-][^"'#\s:]*)["']?\s*(?:#.*)?$""")
_YAML_ITEM = re.compile(r"""^\s*-\s*["']?(?P<value>[^"'#\s]+)""")
_DATA_CALL = re.compile(r"""repo_type\s*=\s*["'](?:dataset|space)["']|load_dataset\s*\(""")
_PY_KEYWORD = re.compile(r"""[(,]\s*(?P<key>[A-Za-z_]\w*)\s*=\s*[rf]?(?P<q>["'])(?P<value>[^"'{}]+)(?P=q)""")
# Cheap test of a whole file before the line-by-line walk for pairs split over lines: a model-like key with nothing
# after it (a YAML list or continued scalar follows), a Kubernetes `name: MODEL...`, a Terraform `variable "model..."`.
_SPLIT_KEY_WORDS = ("model", "name_or_path", "repo_id", "tokenizer", "architectures")
_SPLIT_KEY_END = r"""[\w.-]*["']?\s*:\s*(?:[>|][-+]?)?\s*(?:#.*)?$"""
_SPLIT_NAME = r"""name:\s*["']?\w*(?:model|repo_id)"""
_SPLIT_VARIABLE = r"""variable\s+["'][\w-]*model"""
_SPLIT_PAIR = re.compile(
    rf"""(?im)^\s*(?:-\s*)?["']?[\w.-]*(?:{"|".join(_SPLIT_KEY_WORDS)}){_SPLIT_KEY_END}"""
    rf"""|^\s*-?\s*{_SPLIT_NAME}|^\s*{_SPLIT_VARIABLE}"""
)
# What every match of _SPLIT_PAIR holds, as searches of lower-cased ASCII text that each start with a literal (sre
# skips to it; the case-insensitive pattern tries every position of the file): when none matches, neither does it.
_SPLIT_PAIR_PARTS = tuple(
    re.compile(pattern, re.M)
    for pattern in (*(word + _SPLIT_KEY_END for word in _SPLIT_KEY_WORDS), _SPLIT_NAME, _SPLIT_VARIABLE)
)
_K8S_NAME = re.compile(r"""^\s*-?\s*name:\s*["']?(?P<key>[A-Za-z_][\w]*)["']?\s*$""")
_K8S_VALUE = re.compile(r"""^\s*value:\s*["']?(?P<value>[^"'\s#]+)""")
_HCL_VARIABLE = re.compile(r"""^\s*variable\s+["'](?P<key>[\w-]+)["']""")
_HCL_DEFAULT = re.compile(r"""^\s*default\s*=\s*["'](?P<value>[^"']+)["']""")


@dataclass(frozen=True)
class Hit:
    rule_id: str  # EXT002 or EXT003
    line: int
    column: int
    message: str
    matched: str


@dataclass(frozen=True)
class Judge:
    """What the caller knows: our namespaces, the tree's folders, the foreign model families."""

    allowed_namespaces: tuple[str, ...]
    is_local_dir: Callable[[str], bool]
    family_of: Callable[[str], str | None]


def candidate_patterns(families: tuple[str, ...]) -> list[str]:
    """Rust-regex patterns (no look-around; flags scoped, so the patterns can be joined) for the one ripgrep pass:
    hub hosts, weights links, fetch commands (a Modelfile's `FROM` holds one word: Python's `from x import y`
    is no candidate), model-like keys with a repo id or a family as value, key and value on
    two lines, and repo ids that name a foreign family."""
    hosts = "|".join(re.escape(host) for host in HUB_HOSTS)
    suffixes = "|".join(WEIGHT_SUFFIXES)
    archives = "|".join(ARCHIVE_SUFFIXES)
    family = "|".join(re.escape(name) for name in families)
    keys = r"(?:model|name_or_path|repo_id|tokenizer|checkpoint_dir|init_from|pretrained|llm|architectures)[\w.-]*"
    patterns = [
        rf"{hosts}|xethub\.hf\.co|hf://|git@hf\.co",
        rf"://\S+\.(?:{suffixes}|{archives})\b",
        r"huggingface-cli|\bhf\s+download|ollama\s+(?:pull|run)|litgpt\s+\w|tune\s+download|modelscope\s+download"
        r"|kaggle\s+models|^\s*FROM\s+\S+\s*$|\b(?:hf|hub)[_-]repo|vllm\s+serve|sglang|lms\s+get|llamafactory-cli|lmdeploy\s+serve|\s-hfr?\s",
        rf"\b(?:rclone|gsutil|s3cmd|s5cmd|azcopy|scp|rsync|mc|s3)\b.*\.(?:{suffixes})\b",
        keys + r"[\"']?\s*[:= ]\s*[\"']?[A-Za-z0-9][\w.-]*/[\w.-]+",
        keys + r"[\"']?\s*[:=]\s*\{[^}]*[A-Za-z0-9][\w.-]*/[\w.-]+",  # a flow mapping: `model: {id: org/name}`
        keys + rf"[\"']?\s*[:= ]\s*[\"'\[]*[\w.-]*(?:{family})",
        r"^\s*-?\s*name:\s*[\"']?\w*(?:model|repo_id)|^\s*variable\s+\"\w*model",
        rf"[\w.-]+/[\w.-]*(?:{family})",
        r"(?:model|pipeline|hub|repo)\w*\s*\([^)]*[\"'`][A-Za-z0-9][\w.-]*/[\w.-]+[\"'`]",
        r"auto_map|Auto\w+[\"']?\s*:\s*[\"'][\w.-]+/[\w.-]+--",
        # a loader called with a quoted repo id, in text no code analysis reads (Markdown, `python -c`, CI steps)
        r"(?:from_pretrained|snapshot_download|hf_hub_download|hf_hub_url)\(\s*[\w=\s]*\\?[\"'][\w.-]+/",
        _BLOCK_OPENER_TEXT,
    ]
    return [f"(?i:{pattern})" for pattern in patterns]


def normalised_key(key: str) -> str:
    return key.lower().replace("-", "_").replace(".", "_").lstrip("_") if key != "_name_or_path" else key


def model_key(key: str) -> bool:
    key = normalised_key(key)
    return key in MODEL_KEYS or key.endswith(MODEL_KEY_ENDINGS)


def _fewest_covering(words: set[str]) -> list[str]:
    """The words of `words` that contain no other: every word of `words` contains one of them."""
    return sorted(word for word in words if not any(other != word and other in word for other in words))


# A model-like key (model_key) holds one of these words once lower-cased and `-` and `.` read as `_`.
_MODEL_KEY_WORDS = tuple(_fewest_covering({*MODEL_KEYS, *MODEL_KEY_ENDINGS}))


def _model_key_lines(lowered: str) -> list[int]:
    """0-based indices (in `lowered.split("\\n")`) of the lines of lower-cased ASCII text that hold one of
    _MODEL_KEY_WORDS: the only lines where a model-like key can be."""
    return _lines_holding(lowered.replace("-", "_").replace(".", "_"), _MODEL_KEY_WORDS)


def _lines_holding(text: str, words: tuple[str, ...]) -> list[int]:
    """0-based indices, ascending, of the lines of `text` (split at \\n) that hold one of `words` (none spans lines)."""
    starts = []
    for word in words:
        start = text.find(word)
        while start != -1:
            starts.append(start)
            start = text.find(word, start + 1)
    found: list[int] = []
    line = position = 0
    for start in sorted(starts):
        line += text.count("\n", position, start)
        position = start
        if not found or found[-1] != line:
            found.append(line)
    return found


def _split_pair_in(text: str, lowered: str | None) -> bool:
    """_SPLIT_PAIR.search(text), ruled out first on lower-cased ASCII text (`lowered`) by the searches it implies."""
    if lowered is not None and not any(part.search(lowered) for part in _SPLIT_PAIR_PARTS):
        return False
    return _SPLIT_PAIR.search(text) is not None


# --- values -------------------------------------------------------------------------------------------------------
_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*){2,}$")


def foreign_value(key: str, value: str, judge: Judge) -> str | None:
    """Why a value under a model-like key names a foreign model, or None."""
    value = value.strip().strip("\"'`")
    if _PLACEHOLDER_PATH.search(value):
        return None
    value = value.rstrip(",;)]}`.").strip("\"'`")
    if not value or value.lower() in {"null", "none", "~", "true", "false", "auto", "default", "local"}:
        return None
    if _TEMPLATE.search(value) or value.replace(".", "").replace("e-", "").isdigit():
        return None
    key = normalised_key(key)
    if API_ONLY.match(value.rsplit("/", 1)[-1]) or API_INSIDE.search(value):
        return None
    if "/" in value and value.split("/", 1)[0].lower() in PLACEHOLDER_ORGS:
        return None
    if re.search(r"/checkpoint-\d+/?$", value):
        return None  # a training run's own checkpoint folder
    if value.startswith(("http://", "https://", "hf://")):
        return None  # the URL check reports it
    if _DOTTED.match(value) and judge.is_local_dir(value.split(".", 1)[0]):
        return None  # `torchtune.models.mistral.mistral_7b`: a builder in the scanned tree's own package
    family = judge.family_of(value)
    if key in {"architectures", "model_type"}:
        family = family or judge.family_of(re.sub(r"(For[A-Z]\w*|LMHeadModel|Model)$", "", value))
        return f"{key} names {value!r}, a {family} model (foreign)" if family else None
    layout = _HUB_LAYOUT.search(value.rstrip("/") + ("/" if value.endswith("/") else ""))
    if layout and _hub_layout_foreign(layout.group("org"), layout.group("name"), judge):
        repo = f"{layout.group('org')}/{layout.group('name')}"
        return f"{key} names {value!r}, the download layout of hub repo {repo!r}"
    if _run_output(value):
        return None  # `out/finetune/lora-x/final`: a run's own output, named after the model it started from
    if _is_local(value, judge):
        return f"{key} names {value!r}, a local copy of a {family} model (foreign)" if family else None
    if _REPO_ID.match(value) and not _FILE_SUFFIX.search(value):
        org = value.split("/", 1)[0]
        if org in judge.allowed_namespaces:
            return None
        return f"{key} names {value!r}, a model outside the allowed namespaces"
    if family and "/" not in value and not _FILE_SUFFIX.search(value):
        return f"{key} names {value!r}, a {family} model (foreign)"
    return None


LOCAL_ROOTS = frozenset(
    {"runs", "outputs", "output", "out", "checkpoints", "ckpt", "ckpts", "results", "artifacts", "experiments", "exp",
     "logs", "saved", "save", "work_dirs", "tmp", "trained", "finetuned", "data"}
)  # fmt: skip


def _hub_layout_foreign(org: str, name: str, judge: Judge) -> bool:
    """`checkpoints/ORG/NAME` is a foreign repo's download unless ORG is ours, a placeholder or a folder of the tree,
    or NAME is a step of a run."""
    if org in judge.allowed_namespaces or org.lower() in PLACEHOLDER_ORGS or judge.is_local_dir(org):
        return False
    return not _RUN_STEP.match(name)


def _run_output(value: str) -> bool:
    """A folder a training run wrote: a step or final folder of a run (`lora_model/final`,
    `out/pretrain/x/step-00060500`), or a folder inside a run's folder under a run-output root
    (`out/hf-x/converted`)."""
    parts = [part for part in value.split("/") if part not in {"", "."}]
    if len(parts) < 2:
        return False
    return any(_RUN_STEP.match(part) for part in parts[1:]) or (len(parts) >= 3 and parts[0].lower() in RUN_ROOTS)


def _is_local(value: str, judge: Judge) -> bool:
    if value.startswith(("/", "./", "../", "~", "$")) or re.match(r"^[A-Za-z]:[\\/]", value) or value.endswith("/"):
        return True
    first = value.split("/", 1)[0]
    return "/" in value and (judge.is_local_dir(first) or value.count("/") >= 2 or first.lower() in LOCAL_ROOTS)


def foreign_url(url: str, judge: Judge) -> str | None:
    """Why a URL (any case, with or without a scheme, ssh remotes included) points at a foreign model, or None."""
    raw = url.rstrip(".,;:'\")]}")
    if raw.startswith("git@"):
        host, _, path = raw[4:].partition(":")
        scheme = "ssh"
    elif "://" in raw:
        scheme, _, rest = raw.partition("://")
        rest = rest.split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
        host, _, path = rest.partition("/")
        scheme = scheme.lower()
    else:
        scheme, (host, _, path) = "https", raw.partition("/")
    host = host.lower().split(":", 1)[0].removeprefix("www.")
    segments = [s for s in path.split("?", 1)[0].split("#", 1)[0].split("/") if s]
    if scheme == "hf":
        segments, host = [host, *segments], "huggingface.co"
        if segments[0] in {"datasets", "spaces"}:
            return None
    if CDN_HOST.match(host):
        return "download from a model hub's file CDN"
    if host in {"huggingface.co", "hf.co", "hf-mirror.com"}:
        if segments[:2] == ["api", "models"]:
            segments = segments[2:]
        elif segments[:1] == ["api"]:
            return None
        if not segments or segments[0].startswith(("$", "%", "<", "{")):
            return "a model hub's endpoint (URLs of models are assembled from it)"
        if len(segments) >= 2 and segments[0].lower() not in HF_NON_MODEL:
            if segments[0] in judge.allowed_namespaces or segments[0].lower() in PLACEHOLDER_ORGS:
                return None
            return "link to a foreign model repository"
        return None
    if host in {"modelscope.cn", "modelscope.ai"}:
        return "link to a model hub" if "models" in segments[:4] or not segments else None
    if host in {"ollama.com", "ollama.ai"}:
        return "link to a model hub" if segments[:1] == ["library"] or (segments and segments[0] != "blog") else None
    if host == "registry.ollama.ai":
        return "link to a model hub"
    if host == "kaggle.com":
        return "link to a model hub" if segments[:1] == ["models"] and len(segments) >= 3 else None  # /models/org/x
    if host == "download.pytorch.org":
        return None if segments[:1] == ["whl"] else "link to a model hub"
    if host in {"civitai.com", "tfhub.dev", "dl.fbaipublicfiles.com"}:
        return "link to a model hub" if segments else None
    if host == "openaipublic.azureedge.net":
        last = segments[-1].lower() if segments else ""
        return "link to a weights file" if last.endswith(tuple("." + s for s in WEIGHT_SUFFIXES)) else None
    last = segments[-1].lower() if segments else ""
    if any(last.endswith("." + suffix) for suffix in ARCHIVE_SUFFIXES) and _weights_like_archive(last):
        return "link to an archive of weights"
    if any(last.endswith("." + suffix) for suffix in WEIGHT_SUFFIXES):
        if last.endswith(".bin") and scheme in {"http", "https"} and not _weights_like_bin(last):
            return None
        return "link to a weights file"
    return None


def _weights_like_bin(name: str) -> bool:
    """A `.bin` that is model weights by its name (`pytorch_model.bin`, `model-00001-of-00002.bin`, `ggml-*.bin`),
    not any binary download (firmware, installers)."""
    return bool(re.search(r"model|weights|ckpt|checkpoint|ggml|adapter|consolidated|-of-\d", name))


def _assembled_download(line: str, end: int) -> bool:
    """Whether a hub endpoint ending at `end` is the start of a download URL assembled from it: nothing follows (the
    endpoint on its own, a constant), or a template follows (`{repo}`, `%s`, `" + repo`) and the rest of the URL
    fetches a file (`/resolve/`, `/raw/`, `/api/models`, a weights file)."""
    rest = line[end:]
    if not rest or rest[0] in "\"'` \t\n)]},;":
        return True
    token = re.split(r"[\s\"'`]", rest, maxsplit=1)[0]
    return bool(re.search(r"/(resolve|raw|blob|tree|api|media)/|\.(" + "|".join(WEIGHT_SUFFIXES) + r")\b", token))


def _weights_like_archive(name: str) -> bool:
    """An archive or array file whose name says it holds a model (`model.tar.gz`, `ViT-B_16.npz` is not enough,
    `vit_weights.npz`, `checkpoint-final.zip`), as a word: not `modelnet40.zip` or `ckpt_index.json.gz`'s data."""
    stem = name.split(".", 1)[0]
    return bool(re.search(r"(?<![a-z])(model|weights?|ckpt|checkpoint|state_dict|params)(?![a-z])", stem))


# --- the check ----------------------------------------------------------------------------------------------------
# Code in other languages (JavaScript, Rust, Go...) and scripts: a quoted repo id on a line that speaks of a model.
OTHER_CODE_KINDS = {"text", "shell", "make", "docker", "powershell"}
_MODEL_CONTEXT = re.compile(r"(?i)model|pipeline|from_pretrained|hub|repo|checkpoint|weights")
CONFIG_KINDS = {"yaml", "json", "toml", "ini", "env", "hcl", "text"}
COMMAND_KINDS = {"shell", "make", "docker", "powershell", "csh", "fish", "yaml", "text", "markdown", "notebook"}


def check_text(path: str, kind: str, text: str, lines: list[tuple[int, str]], judge: Judge) -> list[Hit]:
    """References in one file: `lines` are the candidate lines (number, text) of the one ripgrep pass; `text` is
    the whole decoded file, read for context that spans lines (front matter, Kubernetes env pairs, HCL blocks).
    One finding per model and line: an id met by several detectors, or inside a URL already reported, counts once."""
    hits: list[Hit] = []

    def add(rule: str, number: int, column: int, message: str, matched: str) -> None:
        hits.append(Hit(rule, number, column, message, matched))

    name = path.rsplit("/", 1)[-1]
    is_markdown = kind == "markdown"
    prose = _markdown_prose(text, [number for number, _ in lines]) if is_markdown else set()
    for number, line in lines:
        in_prose = is_markdown and number in prose
        lower = line.lower()  # cheap word tests first: most candidate lines hold none of these commands or URLs
        hub_words = _HUB_WORDS.search(lower)
        for match in _URL.finditer(line) if "://" in line or "git@" in line or hub_words else ():
            url = match.group("url")
            reason = foreign_url(url, judge)
            if reason and reason.startswith("a model hub's endpoint") and not _assembled_download(line, match.end()):
                continue  # `f"https://huggingface.co/{repo_id}"` in a message: a page, nothing is fetched from it
            if reason and not (in_prose and reason.startswith("a model hub's endpoint")):
                add("EXT002", number, match.start("url") + 1, f"{reason}: {url}", url)
        for match in _BARE_HOST.finditer(line) if hub_words or not line.isascii() else ():
            if not in_prose:
                message = f"a model hub's endpoint (URLs of models are assembled from it): {match.group('host')}"
                add("EXT002", number, match.start("host") + 1, message, match.group("host"))
        for match in _REMOTE_COPY.finditer(line) if _COPY_WORDS.search(lower) else ():
            message = f"`{match.group('cmd')}` copies a weights file from remote storage: {match.group('arg')}"
            add("EXT002", number, match.start("arg") + 1, message, match.group("arg"))
        fetch_words = _FETCH_WORDS.search(lower)
        # in code, an argv list too: ["litgpt", "download", repo]
        commandline = re.sub(r"""["',\[\]]""", " ", line) if fetch_words and kind in {"python", "notebook"} else line
        for match in _FETCH.finditer(commandline) if fetch_words else ():
            args = match.group("args")
            if re.search(r"--repo[-_]type[= ]+[\"']?(dataset|space)", args):
                continue  # a dataset or a Space, not a model
            option_value = False  # the word after `--config` or `--data.x` is that option's value, not the model
            for token in args.split():
                found = _ARG_TOKEN.match(token.lstrip("\"'`\\"))
                token = found.group() if found else ""
                if option_value or not token:
                    option_value = False
                    continue
                if token.startswith("-"):
                    option_value = "=" not in token
                    continue
                if match.group("cmd").endswith("pretrain") and "/" not in token:
                    break  # `litgpt pretrain pythia-14m`: an architecture trained from random weights, not fetched
                reason = foreign_value("model", token, judge) or _ollama_pull(match.group("cmd"), token, text, judge)
                if reason:
                    add("EXT003", number, match.start() + 1, f"`{match.group('cmd')}` fetches: {reason}", token)
                    break
                if "/" in token or "." in token or match.group("cmd").lower().startswith("ollama"):
                    break  # the model: the first path-like argument (for ollama, the first); words before: subcommands
        for match in _REMOTE_SYNC.finditer(line) if "*." in line else ():
            message = (
                f"`{match.group('cmd')}` copies *.{match.group('suffix')} weights files from remote storage: "
                f"{match.group('arg')}"
            )
            add("EXT002", number, match.start("arg") + 1, message, match.group("arg"))
        for match in _HF_SHORT_FLAG.finditer(line) if "-hf" in line else ():
            reason = foreign_value("model", match.group("value").split(":", 1)[0], judge)
            if reason:
                add("EXT003", number, match.start("value") + 1, f"-hf: {reason}", match.group("value"))
        if kind not in {"python", "notebook"} and "_" in line and "(" in line:
            for match in _LOADER_CALL.finditer(line):
                if re.search(r"repo_type\s*=\s*\\?[\"'](dataset|space)", match.group("rest")):
                    continue
                reason = foreign_value("model", match.group("value"), judge)
                if reason:
                    message = f"{match.group('call')}(): {reason}"
                    add("EXT003", number, match.start("value") + 1, message, match.group("value"))
        for match in _MODEL_FLAG.finditer(line) if "--" in line else ():
            reason = foreign_value(match.group("key"), match.group("value"), judge)
            if reason:
                add(
                    "EXT003",
                    number,
                    match.start("value") + 1,
                    f"--{match.group('key')}: {reason}",
                    match.group("value"),
                )
        if kind in {"python", "notebook"} or in_prose:
            constant = _PY_CONSTANT.match(line) if kind == "python" else None
            if constant and model_key(constant.group("key")):
                reason = foreign_value(constant.group("key"), constant.group("value"), judge)
                if reason:
                    add("EXT003", number, constant.start("value") + 1, reason, constant.group("value"))
            # keyword arguments, but not of a call that names a dataset (hf_hub_download(..., repo_type="dataset"))
            keywords = kind == "python" and "=" in line and not _DATA_CALL.search(line)
            for keyword in _PY_KEYWORD.finditer(line) if keywords else ():
                if model_key(keyword.group("key")):
                    reason = foreign_value(keyword.group("key"), keyword.group("value"), judge)
                    if reason:
                        add("EXT003", number, keyword.start("value") + 1, reason, keyword.group("value"))
            _quoted_ids(number, line, judge, add)
            continue
        for match in _PAIR.finditer(line):
            key, value = match.group("key"), match.group("value")
            if model_key(key) and not match.group("quote") and value.startswith("{"):  # `model: {id: org/name}`
                inside = line[match.start("value") + 1 :].split("}", 1)[0]
                for pair in _FLOW_PAIR.finditer(inside):
                    child = pair.group("value").strip()
                    if normalised_key(pair.group("key")) in _CHILD_KEYS and not _is_local(child, judge):
                        reason = foreign_value(key, child, judge)
                        if reason:
                            add("EXT003", number, match.start("value") + 2 + pair.start("value"), reason, child)
                continue  # the mapping's own pairs are matched on their own
            if not model_key(key):
                continue
            if not match.group("sep").strip() and not match.group("dash"):
                continue  # `pretrained Llama2 weights`: words, not a key and its value
            if line[match.end() : match.end() + 1] == "(":
                continue  # `model = whisper.load_model(`: a call, judged by the code layer
            values = [value]
            if not match.group("quote") and value.startswith("["):  # a flow sequence: every item
                inside = line[match.start("value") + 1 :].split("]", 1)[0]
                values = [item.strip().strip("\"'") for item in inside.split(",")]
            for item in values:
                reason = foreign_value(key, item, judge)
                if reason:
                    add("EXT003", number, match.start("value") + 1, reason, item.strip("\"'"))
        if name.lower().startswith("modelfile") or name.lower().endswith(".modelfile"):
            found = _MODELFILE_FROM.match(line)
            if found:
                reason = foreign_value("model", found.group("value"), judge)
                if reason:
                    add("EXT003", number, found.start("value") + 1, f"Modelfile FROM: {reason}", found.group("value"))
        for found in _AUTO_MAP.finditer(line) if "Auto" in line else ():
            repo = found.group("repo")
            if repo.split("/", 1)[0] not in judge.allowed_namespaces:
                message = f"auto_map loads {found.group('cls')} as remote code from {repo!r}, another repository"
                add("EXT003", number, found.start() + 1, message, repo)
        _quoted_ids(number, line, judge, add)
        if kind in OTHER_CODE_KINDS and _MODEL_CONTEXT.search(line):
            for match in _QUOTED.finditer(line):  # `pipeline('task', 'Xenova/x')`, `api.model("org/x".to_string())`
                reason = foreign_value("model", match.group("value"), judge)
                if reason and "dataset" not in line.lower():
                    add("EXT003", number, match.start("value") + 1, reason, match.group("value"))
    if kind in {"yaml", "hcl", "text", "json", "toml", "ini"}:
        # lower-cased once for the whole-file walks' cheap tests; ASCII only, where lower-casing maps each character
        # to one, so its lines and columns are the text's and case-insensitive matching is matching it
        lowered = text.lower() if text.isascii() else None
        keyed: list[int] | None = None  # the lines where a model-like key can be (None: any line)

        def keyed_lines() -> list[int] | None:
            nonlocal keyed
            if keyed is None and lowered is not None:
                keyed = _model_key_lines(lowered)
            return keyed

        if kind in {"yaml", "hcl", "text", "json"} and _split_pair_in(text, lowered):
            _pairs_over_lines(text, kind, judge, add, keyed_lines())
        if kind in {"yaml", "json", "toml", "ini"} and any(_BLOCK_OPENER.match(line) for _, line in lines):
            _ids_in_model_blocks(text, kind, judge, add, keyed_lines() if kind in {"yaml", "json"} else None)
    return _one_per_reference(_made_here(hits, kind, text))


def _made_here(hits: list[Hit], kind: str, text: str) -> list[Hit]:
    """Leave out the values under keys that name what the file makes itself: a folder it saves a model into, and the
    bare architecture name of the model a from-scratch configuration or call builds (commands are judged as ever)."""
    if not any(hit.rule_id == "EXT003" for hit in hits):
        return hits
    saved = {found.group("value").rstrip("/") for found in _SAVED_TO.finditer(text)} if ".save" in text else set()
    scratch_file = kind in {"yaml", "json", "toml", "ini", "env", "hcl"} and _FROM_SCRATCH_FILE.search(text) is not None
    file_lines: list[str] | None = None
    kept: list[Hit] = []
    for hit in hits:
        keyed = _KEYED_MESSAGE.match(hit.message) if hit.rule_id == "EXT003" else None
        value = hit.matched.strip("\"'`").rstrip("/")
        if keyed and value in saved and not _hub_shaped(value):
            continue
        if keyed and normalised_key(keyed.group("key")) in _SCRATCH_KEYS and value and not re.search(r"[/:]", value):
            if scratch_file:
                continue
            if file_lines is None:
                file_lines = text.splitlines()
            if 0 < hit.line <= len(file_lines) and _FROM_SCRATCH_LINE.search(file_lines[hit.line - 1]):
                continue
        kept.append(hit)
    return kept


def _hub_shaped(value: str) -> bool:
    """`org/name`: one slash, not a relative or absolute path, not under a local root."""
    return (
        value.count("/") == 1
        and not value.startswith((".", "/", "~"))
        and value.split("/", 1)[0].lower() not in LOCAL_ROOTS
    )


def _one_per_reference(hits: list[Hit]) -> list[Hit]:
    """Keep one finding per line and model: the URL when a line has one (a bare endpoint or an id it contains adds
    nothing), else the first detector's finding of each id."""
    urls: dict[int, list[str]] = {}
    for hit in hits:
        if hit.rule_id == "EXT002" and "/" in hit.matched.split("://", 1)[-1].strip("/"):
            urls.setdefault(hit.line, []).append(hit.matched.lower())
    kept: list[Hit] = []
    seen: set[tuple[str, int, str]] = set()
    for hit in hits:
        on_line = urls.get(hit.line, [])
        value = hit.matched.strip("\"'`").lower()
        if hit.rule_id == "EXT002" and on_line and "/" not in hit.matched.split("://", 1)[-1].strip("/"):
            continue  # a bare endpoint beside a full URL on the same line
        if hit.rule_id == "EXT003" and any(value in url for url in on_line):
            continue
        key = (hit.rule_id, hit.line, _hub_repo(value) if hit.rule_id == "EXT002" else value)
        if key not in seen:
            seen.add(key)
            kept.append(hit)
    return kept


def _hub_repo(url: str) -> str:
    """The repository a model hub URL points into (`huggingface.co/org/x/commit/abc` and `…/org/x` are one); any
    other URL as it is."""
    found = re.match(r"^(?:\w+://)?(?:www\.)?(huggingface\.co|hf\.co)/([\w.-]+/[\w.-]+)", url)
    return f"{found.group(1)}/{found.group(2)}" if found and found.group(2).split("/")[0] not in HF_NON_MODEL else url


def _ollama_pull(cmd: str, name: str, text: str, judge: Judge) -> str | None:
    """`ollama pull NAME` downloads NAME from the Ollama registry whatever it is called; `ollama run NAME` does too,
    unless the same file builds NAME itself (`ollama create NAME -f Modelfile`)."""
    words = cmd.lower().split()
    if words[0] != "ollama" or _is_local(name, judge) or name.lower().endswith(".gguf"):
        return None
    if name.split("/", 1)[0] in judge.allowed_namespaces or _TEMPLATE.search(name):
        return None
    created = {found.group("name") for found in _OLLAMA_CREATE.finditer(text)}
    if words[1] == "run" and name in created:
        return None
    return f"model {name!r} comes from the Ollama registry"


def _ids_in_model_blocks(
    text: str, kind: str, judge: Judge, add: Callable[[str, int, int, str, str], None], keyed: list[int] | None = None
) -> None:
    """Ids one level under a model-like key: YAML/JSON `model:` (or `"model": {`) then `id: org/name`, TOML/INI
    `[model]` then `name = "org/name"` (a key such as `id` or `name` means nothing on its own).

    YAML/JSON with `keyed` (the lines where a model-like key can be, ascending): only the lines inside a block that
    a model-like key opens are walked. Blocks of other keys never report, nor change what a model-like block holds
    (they sit below it in `parents`), so while no model-like block is open the walk goes on at the next keyed line."""
    parents: list[tuple[int, str, bool]] = []  # (indent, key, model-like) of the open blocks (YAML, JSON)
    section = ""
    lines = text.split("\n")
    starts = keyed if kind in {"yaml", "json"} else None
    index, skip_to = 0, 0  # skip_to: in starts
    while index < len(lines):
        if starts is not None and not any(model_like for _, _, model_like in parents):
            skip_to = bisect.bisect_left(starts, index, skip_to)
            if skip_to == len(starts):
                break
            if starts[skip_to] > index:
                index = starts[skip_to]
                parents.clear()
        line = lines[index]
        index += 1
        number = index
        if not line.strip() or line.lstrip().startswith(("#", "//", ";")):
            continue
        header = _SECTION.match(line) if kind in {"toml", "ini"} else None
        if header:
            section = header.group("name").strip().strip("\"'").rsplit(".", 1)[-1]
            continue
        found = _BLOCK_KEY.match(line)
        if not found:
            continue
        indent, key, value = len(found.group("indent")), found.group("key"), found.group("value")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if kind in {"toml", "ini"}:
            parent = section
        else:
            parent = parents[-1][1] if parents else ""
            if value in {"", "{", "["} or value.startswith(("|", ">")):
                parents.append((indent, key, model_key(key)))
                continue
        if normalised_key(key) not in _CHILD_KEYS or not parent or not model_key(parent):
            continue
        value = value.strip().strip("\"'")
        if _is_local(value, judge):
            continue  # a path under a block (`tokenizer:` / `  path: /tmp/x/tokenizer.model`) is the key's own case
        reason = foreign_value(parent, value, judge)
        if reason:
            add("EXT003", number, found.start("value") + 1, f"{parent}.{key}: {reason}", value)


def _quoted_ids(number: int, line: str, judge: Judge, add: Callable[[str, int, int, str, str], None]) -> None:
    """Quoted repo ids that name a foreign model family: a reference wherever they sit. The family must stand as a
    model name (`phi-2`, `Qwen2ForCausalLM`, `Llama-3.1-8B`), not inside another word (`vespo/phi_seq_mean`); output
    folders, checkpoints of a run, placeholders and data made with an API model are not model ids."""
    if "/" not in line:
        return
    for match in _QUOTED.finditer(line):
        value = match.group("value")
        org, name = (part.lower() for part in value.split("/", 1))
        if _FILE_SUFFIX.search(value) or value.split("/", 1)[0] in judge.allowed_namespaces:
            continue
        if org in PLACEHOLDER_ORGS or API_INSIDE.search(value) or judge.is_local_dir(value.split("/", 1)[0]):
            continue
        if org in LOCAL_ROOTS:
            continue  # `Path("data/starcoder")`: a folder of the run
        before = line[: match.start()]
        if _PATH_KEY_BEFORE.search(before) or _DATA_KEY_BEFORE.search(before) or re.search(r"/checkpoint-\d+$", value):
            continue
        if _DATASET_CALL_BEFORE.search(before) or f"/datasets/{value}".lower() in line.lower():
            continue  # `load_dataset("org/x")`, or the same id linked as a dataset on this line
        family = None
        for part, original in zip((name, org), reversed(value.split("/", 1)), strict=True):
            found = judge.family_of(original)  # the original case: a family glued to a class name is told apart
            if found and re.search(rf"(?<![a-z0-9]){re.escape(found)}(?=$|[-.\d]|for)", part):
                family = found
                break
        if family:
            add("EXT003", number, match.start("value") + 1, f"names {value!r}, a {family} model (foreign)", value)


def _pairs_over_lines(
    text: str, kind: str, judge: Judge, add: Callable[[str, int, int, str, str], None], keyed: list[int] | None = None
) -> None:
    """Pairs whose key and value sit on different lines: Kubernetes `- name: MODEL_ID` / `value: ...`, Terraform
    `variable "model_id" {` / `default = "..."`. Every pair opens on a line with a model-like key: with `keyed`
    (the lines where one can be, ascending), only those lines are looked at."""
    if not re.search(r"(?i)model|name_or_path|repo_id|tokenizer|architectures", text):
        return
    lines = text.split("\n")
    for index in range(len(lines)) if keyed is None else keyed:
        line = lines[index]
        listed = _YAML_LIST_KEY.match(line) if kind == "yaml" else None
        if listed and model_key(listed.group("key")):  # `base_model:` then `- item` lines
            indent = len(line) - len(line.lstrip())
            for offset, following in enumerate(lines[index + 1 : index + 50], start=index + 2):
                item = _YAML_ITEM.match(following)
                if not item:  # a plain scalar continued on the next, deeper line: `model_name_or_path:\n  org/x`
                    scalar = _YAML_SCALAR.match(following)
                    if scalar and offset == index + 2 and len(following) - len(following.lstrip()) > indent:
                        item = scalar
                    else:
                        break
                reason = foreign_value(listed.group("key"), item.group("value"), judge)
                if reason:
                    add(
                        "EXT003",
                        offset,
                        item.start("value") + 1,
                        reason,
                        f"{listed.group('key')}={item.group('value')}",
                    )
            continue
        opened = _K8S_NAME.match(line) if kind != "hcl" else _HCL_VARIABLE.match(line)
        if not opened or not model_key(opened.group("key")):
            continue
        for following in lines[index + 1 : index + 6]:
            found = (_K8S_VALUE if kind != "hcl" else _HCL_DEFAULT).match(following)
            if found:
                reason = foreign_value(opened.group("key"), found.group("value"), judge)
                if reason:
                    number = index + 1 + lines[index + 1 : index + 6].index(following) + 1
                    add("EXT003", number, 1, reason, f"{opened.group('key')}={found.group('value')}")
                break


def _markdown_prose(text: str, numbers: Iterable[int]) -> set[int]:
    """The line numbers of `numbers` that are prose in a Markdown file: outside front matter and fenced code blocks,
    and not indented code. Front matter and fences are found from the lines that can hold their marks, so the
    file is not walked line by line."""
    lines = text.split("\n")
    first = 0  # 0-based index of the first line after the front matter
    if lines and lines[0].strip() == "---":
        ends = [i for i in _lines_holding(text, ("---",)) if i > 0 and lines[i].strip() == "---"]
        first = ends[0] + 1 if ends else len(lines)
    fences = [
        i for i in _lines_holding(text, ("```", "~~~")) if i >= first and lines[i].strip().startswith(("```", "~~~"))
    ]
    prose: set[int] = set()
    for number in numbers:
        index = number - 1
        if not first <= index < len(lines) or lines[index].startswith(("    ", "\t")):
            continue
        opened = bisect.bisect_right(fences, index)  # fence lines up to this one
        if opened % 2 == 0 and (not opened or fences[opened - 1] != index):
            prose.add(number)
    return prose
