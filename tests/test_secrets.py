"""One table of secret shapes (oracle_base.secrets): every shape is masked by the data pipeline and named by the publish
gate's byte scan, and text that only resembles a shape is left alone by both."""

from __future__ import annotations

import pytest

from hub import stage
from oracle.data.pii import redact
from oracle_base.secrets import SECRET_BYTES, SECRET_SHAPES

# One made-up value per shape, in the order of the table (built from parts, so no file holds a whole token).
EXAMPLES = {
    "a Hugging Face token": "hf_" + "Ab3" * 12,
    "an AWS access key id": "AKIA" + "Z7Q2" * 4,
    "a private key": "-----BEGIN RSA " + "PRIVATE KEY-----",
    "a GitHub token": "ghp_" + "x9Y8" * 9,
    "an OpenAI-style API key": "sk-proj-" + "Qw3_" * 6,
    "a Slack token": "xoxb-" + "12ab-" * 3,
    "a Google API key": "AIza" + "Sy0_-" * 7,
    "a GitLab token": "glpat-" + "k2L_" * 5,
    "a JSON web token": "eyJ" + "hbGciOiJIUzI1" + ".eyJ" + "zdWIiOiIxMjM0" + "." + "SflKxwRJSMeK",
}


def test_the_examples_cover_the_table() -> None:
    assert list(EXAMPLES) == [what for what, _ in SECRET_SHAPES]


@pytest.mark.parametrize("what", list(EXAMPLES))
def test_each_shape_is_masked_and_refused_alike(what: str) -> None:
    value = EXAMPLES[what]
    redaction = redact(f"my key is {value} ok")
    assert value not in redaction.text
    assert "<SECRET>" in redaction.text
    named = [name for name, pattern in stage._SECRETS if pattern.search(f"x {value} y".encode())]
    assert what in named


@pytest.mark.parametrize(
    "text",
    [
        "sk-short",  # too short for a key
        "hf_abc",  # too short for a token
        "the AKIA prefix alone",
        "BEGIN PUBLIC KEY",
        "ask-" + "a" * 30,  # no word boundary before sk-
    ],
)
def test_lookalikes_are_left_alone(text: str) -> None:
    assert redact(text).text == text
    assert not any(pattern.search(text.encode()) for _, pattern in SECRET_BYTES)


def test_the_publish_gate_and_the_pipeline_share_the_table() -> None:
    assert stage._SECRETS is SECRET_BYTES
