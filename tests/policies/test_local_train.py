import pytest

from tests.policies.conftest import Scan, ids, only


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("scripts/train.sh", "#!/bin/sh\nexport ALLOW_LOCAL_TRAIN=true\npython -m oracle.train\n"),
        ("Makefile", "ALLOW_LOCAL_TRAIN ?= 1\n"),
        (".env", "ALLOW_LOCAL_TRAIN='yes'\n"),
        (".ci/run", "ALLOW_LOCAL_TRAIN=TRUE make test\n"),
        ("deploy/job.yaml", 'env:\n  - name: ALLOW_LOCAL_TRAIN\n    value: "true"\n'),
        ("deploy/values.yaml", "env:\n  ALLOW_LOCAL_TRAIN: on\n"),
        ("spec.json", '{"env": {"ALLOW_LOCAL_TRAIN": "1"}}\n'),
        ("Dockerfile", "FROM python:3.11\nENV ALLOW_LOCAL_TRAIN true\n"),
        ("tools/run.py", 'import os\nos.environ["ALLOW_LOCAL_TRAIN"] = "1"\n'),
        ("noxfile.py", 'def train(session):\n    session.run("x", env={"ALLOW_LOCAL_TRAIN": "true"})\n'),
        ("tools/setdefault.py", 'import os\nos.environ.setdefault("ALLOW_LOCAL_TRAIN", flag)\n'),
    ],
)
def test_allow_local_train_set_to_anything_but_false_is_found(scan: Scan, path: str, content: str) -> None:
    findings = only(scan({path: content}), "LTR001")
    assert len(findings) == 1, findings
    assert findings[0].path == path
    assert findings[0].line >= 1


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("scripts/train.sh", "export ALLOW_LOCAL_TRAIN=false\n"),
        ("scripts/check.sh", 'if [ "$ALLOW_LOCAL_TRAIN" = true ]; then echo refused; fi\n'),
        ("scripts/comment.sh", "# never set ALLOW_LOCAL_TRAIN=true here\n"),
        ("deploy/job.yaml", 'env:\n  - name: ALLOW_LOCAL_TRAIN\n    value: "false"\n'),
        ("README.md", "Setting `ALLOW_LOCAL_TRAIN=true` is refused by the runtime check.\n"),
        ("tools/read.py", 'import os\nenabled = os.environ.get("ALLOW_LOCAL_TRAIN") == "true"\n'),
        ("tools/doc.py", '"""Docs may say ALLOW_LOCAL_TRAIN=true; only code that sets it counts."""\n'),
        ("spec.json", '{"env": {"ALLOW_LOCAL_TRAIN": "false"}}\n'),
    ],
)
def test_near_misses_of_allow_local_train_are_not_found(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content}), "LTR") == []


def test_training_entry_point_without_the_runtime_check_is_found(scan: Scan) -> None:
    source = "def main() -> None:\n    build_model()\n\n\nif __name__ == '__main__':\n    main()\n"
    findings = only(scan({"oracle/train/launch.py": source}), "LTR002")
    assert [f.line for f in findings] == [1, 5]
    assert "require_training_allowed" in findings[0].message


def test_entry_point_that_calls_the_runtime_check_passes(scan: Scan) -> None:
    source = (
        "from guards.runtime import require_training_allowed\n\n\n"
        "def main() -> None:\n    require_training_allowed()\n    build_model()\n\n\n"
        "if __name__ == '__main__':\n    main()\n"
    )
    assert ids(scan({"oracle/train/launch.py": source}), "LTR") == []


def test_configured_cli_entry_point_is_checked(scan: Scan) -> None:
    settings = '[local_train]\nentry_points = ["oracle/cli.py:train_command"]\n'
    source = "def train_command(config: str) -> None:\n    run(config)\n\n\ndef params_command() -> None:\n    pass\n"
    findings = only(scan({"policies/policies.toml": settings, "oracle/cli.py": source}), "LTR002")
    assert [f.message for f in findings] == [
        "training entry point train_command() does not call require_training_allowed()"
    ]


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("deploy/job.json", '{"env": [{"name": "ALLOW_LOCAL_TRAIN", "value": "true"}]}\n'),
        (
            "deploy/pod.json",
            '{\n  "env": [\n    {\n      "name": "ALLOW_LOCAL_TRAIN",\n      "value": "1"\n    }\n  ]\n}\n',
        ),
        ("infra/env.toml", 'env = {ALLOW_LOCAL_TRAIN = "true"}\n'),
        ("deploy/reversed.yaml", 'env:\n  - value: "true"\n    name: ALLOW_LOCAL_TRAIN\n'),
        ("scripts/default.sh", ': "${ALLOW_LOCAL_TRAIN:=true}"\n'),
        ("tools/alias.py", 'import os\nVAR = "ALLOW_LOCAL_TRAIN"\nos.environ[VAR] = "true"\n'),
    ],
)
def test_less_common_ways_of_setting_it_are_found_too(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content}), "LTR") == ["LTR001"]


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (
            "tools/read.py",
            'import os\nflag = os.getenv("ALLOW_LOCAL_TRAIN", "0")\nother = os.environ.get("ALLOW_LOCAL_TRAIN", "")\n',
        ),
        ("scripts/say.sh", 'echo "ALLOW_LOCAL_TRAIN must stay false"\nunset ALLOW_LOCAL_TRAIN SLURM_JOB_ID\n'),
        ("scripts/trail.sh", "make test  # ALLOW_LOCAL_TRAIN is never set here\n"),
    ],
)
def test_reads_and_prose_are_not_settings(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content}), "LTR") == []


def test_a_declared_entry_point_that_was_renamed_away_is_found(scan: Scan) -> None:
    settings = '[local_train]\nentry_points = ["oracle/cli.py:train_command"]\n'
    source = "def train_cmd(config: str) -> None:\n    run(config)\n"
    findings = only(scan({"policies/policies.toml": settings, "oracle/cli.py": source}), "LTR002")
    assert [f.message for f in findings] == [
        "declared training entry point train_command() is not defined in oracle/cli.py; update policies.toml"
    ]


def test_notebooks_that_set_it_in_code_or_magics_are_found(scan: Scan) -> None:
    import json

    cells = [
        {"cell_type": "markdown", "source": ["ALLOW_LOCAL_TRAIN=true is refused, says the doc"]},
        {"cell_type": "code", "source": ["%env ALLOW_LOCAL_TRAIN=true\n", "import os\n"]},
        {"cell_type": "code", "source": ["x = 1\n", "os.environ['ALLOW_LOCAL_TRAIN'] = '1'\n"]},
    ]
    findings = only(scan({"train.ipynb": json.dumps({"cells": cells})}), "LTR001")
    assert sorted(f.message.split(":")[0] for f in findings) == ["cell 2, line 1", "cell 3, line 2"]
