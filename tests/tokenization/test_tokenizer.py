"""The tokenizer: trains on a few KB, loads with both loaders, round-trips every script byte for byte."""

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from oracle.tokenization import SPECIAL_TOKENS, TokenizerError, load_tokenizer, save_tokenizer, train_tokenizer
from oracle.tokenization.chat_template import ChatTemplateError, render_chat
from oracle.tokenization.corpus import CorpusError
from oracle_cli.app import app

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Tokenizers split text into pieces.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Ёжик в тумане.",
    "def route_tokens(x_TD: torch.Tensor) -> torch.Tensor:\n    return x_TD.softmax(dim=-1)  # fp32\n\tpass\n",
    "Emoji survive too: 🦊🚀👩‍💻 and flags 🇷🇺🇬🇧, plus combining marks: café, naïve, Ångström.",
    "  leading spaces, trailing spaces  \n\n\nand blank lines\r\nwith CRLF, tabs\tand NUL-free bytes ~`^|\\",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "plain.txt").write_text("\n".join(TEXTS * 20))
    with gzip.open(root / "docs.jsonl.gz", "wt", encoding="utf-8") as handle:
        for text in TEXTS * 10:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    with tarfile.open(root / "shard-000000.tar", "w") as shard:
        for index, text in enumerate(TEXTS):
            data = text.encode()
            member = tarfile.TarInfo(f"{index:06d}.txt")
            member.size = len(data)
            shard.addfile(member, io.BytesIO(data))
    return root


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer, report = train_tokenizer([corpus], 4096)
    assert report.documents == 1 + 50 + 5  # one plain file, 50 JSONL lines, 5 shard members
    save_tokenizer(tokenizer, out, context_length=512)
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_every_script_round_trips_byte_for_byte(trained: Path, text: str) -> None:
    tokenizer = Tokenizer.from_file(str(trained / "tokenizer.json"))
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_the_vocabulary_is_exactly_the_model_size_with_specials_first(trained: Path) -> None:
    tokenizer = load_tokenizer(trained, expected_vocab_size=4096)
    assert tokenizer.get_vocab_size() == 4096
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.token_to_id("<|reserved_0|>") is not None
    with pytest.raises(TokenizerError, match="model config declares 65536"):
        load_tokenizer(trained, expected_vocab_size=65536)


def test_special_tokens_are_single_tokens_and_not_split(trained: Path) -> None:
    tokenizer = load_tokenizer(trained)
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(f"a{token}b").tokens.count(token) == 1


def test_transformers_loads_the_folder_and_agrees(trained: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(trained))
    plain = Tokenizer.from_file(str(trained / "tokenizer.json"))
    for text in TEXTS:
        assert fast(text)["input_ids"] == plain.encode(text).ids
        assert fast.decode(fast(text)["input_ids"]) == text
    assert (fast.eos_token, fast.pad_token, len(fast)) == ("<|endoftext|>", "<|pad|>", 4096)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Привет!"}]
    rendered = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == render_chat(messages, add_generation_prompt=True)
    assert rendered == "<|system|>Be brief.<|end|>\n<|user|>Привет!<|end|>\n<|assistant|>"


def test_the_chat_template_rejects_unknown_roles() -> None:
    with pytest.raises(ChatTemplateError, match="unknown chat role: tool"):
        render_chat([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="message 0 needs"):
        render_chat([{"content": "x"}])


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n{"text": "fine too"}\n')
    # the pipeline's rule: a corrupt record is counted and listed, never fatal
    _, report = train_tokenizer([bad], 4096)
    assert report.documents == 2
    assert len(report.corrupt) == 1
    assert "bad.jsonl:2: invalid JSON" in report.corrupt[0]
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="no such file"):
        train_tokenizer([missing], 4096)
    with pytest.raises(TokenizerError, match="below 265"):
        train_tokenizer([bad], 100)


def test_cli_trains_and_refuses_a_vocabulary_other_than_the_models(corpus: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tok"
    wrong = runner.invoke(
        app, ["tokenizer", "train", "--input", str(corpus), "--out", str(out), "--config", "oracle-mini"]
    )
    assert wrong.exit_code == 2
    assert "differs from oracle-mini's vocab_size 4096" in wrong.stderr
    args = ["tokenizer", "train", "--input", str(corpus), "--out", str(out), "--config", "oracle-mini"]
    result = runner.invoke(app, [*args, "--vocab-size", "4096", "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["vocab_size"] == 4096
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 512
