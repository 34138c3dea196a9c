import pytest

from policies.rule import Gate
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
    settings = '[local_train]\nentry_points = ["oracle_cli/app.py:train_command"]\n'
    source = "def train_command(config: str) -> None:\n    run(config)\n\n\ndef params_command() -> None:\n    pass\n"
    findings = only(scan({"policies/policies.toml": settings, "oracle_cli/app.py": source}), "LTR002")
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
    settings = '[local_train]\nentry_points = ["oracle_cli/app.py:train_command"]\n'
    source = "def train_cmd(config: str) -> None:\n    run(config)\n"
    findings = only(scan({"policies/policies.toml": settings, "oracle_cli/app.py": source}), "LTR002")
    assert [f.message for f in findings] == [
        "declared training entry point train_command() is not defined in oracle_cli/app.py; update policies.toml"
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


def _utf16(text: str) -> bytes:
    return b"\xff\xfe" + text.encode("utf-16-le")


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("jobs/train.sbatch", "#!/bin/bash\n#SBATCH --export=ALL,ALLOW_LOCAL_TRAIN=1,OMP_NUM_THREADS=4\nsrun x\n"),
        ("jobs/submit.sh", "sbatch --export=ALL,ALLOW_LOCAL_TRAIN=true job.sbatch\n"),
        ("scripts/env.csh", "setenv ALLOW_LOCAL_TRAIN 1\n"),
        ("scripts/env.tcsh", "setenv ALLOW_LOCAL_TRAIN true\n"),
        ("scripts/env.fish", "set -x ALLOW_LOCAL_TRAIN true\n"),
        ("scripts/conf.fish", "set -gx ALLOW_LOCAL_TRAIN yes\n"),
        ("scripts/train.ps1", '$env:ALLOW_LOCAL_TRAIN = "true"\n'),
        ("scripts/user.ps1", '[Environment]::SetEnvironmentVariable("ALLOW_LOCAL_TRAIN", "true", "User")\n'),
        ("scripts/item.ps1", "Set-Item -Path env:ALLOW_LOCAL_TRAIN -Value 1\n"),
        ("scripts/wide.ps1", _utf16('$env:ALLOW_LOCAL_TRAIN = "true"\r\n')),
        (".env.local", "ALLOW_LOCAL_TRAIN=1\n"),
        ("config/train.env", "ALLOW_LOCAL_TRAIN=true\n"),
        ("envs/dev.env", "export ALLOW_LOCAL_TRAIN=on\n"),
        (".envrc", "export ALLOW_LOCAL_TRAIN=true\n"),
        ("docker-compose.yml", "services:\n  t:\n    environment:\n      - ALLOW_LOCAL_TRAIN=1\n"),
        ("Dockerfile", "FROM python:3.11\nENV ALLOW_LOCAL_TRAIN=true\n"),
        (
            "deploy/pod.yaml",
            "env:\n  - name: ALLOW_LOCAL_TRAIN\n    valueFrom:\n      configMapKeyRef: {name: c, key: k}\n",
        ),
        ("tools/update.py", 'import os\nos.environ.update({"ALLOW_LOCAL_TRAIN": "1"})\n'),
        ("tools/putenv.py", 'import os\nos.putenv("ALLOW_LOCAL_TRAIN", "true")\n'),
        ("tools/kw.py", 'import os, subprocess\nsubprocess.run(["x"], env=dict(os.environ, ALLOW_LOCAL_TRAIN="1"))\n'),
    ],
)
def test_other_shells_schedulers_and_env_files_setting_it_are_found(
    scan: Scan, path: str, content: str | bytes
) -> None:
    findings = only(scan({path: content}), "LTR001")
    assert [f.path for f in findings] == [path], findings


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("jobs/train.sbatch", "#!/bin/bash\n#SBATCH --export=ALL,ALLOW_LOCAL_TRAIN=false,OMP_NUM_THREADS=4\n"),
        ("jobs/submit.sh", "sbatch --export=ALLOW_LOCAL_TRAIN=0 job.sbatch\n"),
        ("scripts/env.csh", "setenv ALLOW_LOCAL_TRAIN false\nunsetenv ALLOW_LOCAL_TRAIN\n"),
        ("scripts/env.fish", "set -x ALLOW_LOCAL_TRAIN false\nset -e ALLOW_LOCAL_TRAIN\n"),
        ("scripts/train.ps1", '$env:ALLOW_LOCAL_TRAIN = "false"\nif ($env:ALLOW_LOCAL_TRAIN -eq "true") { exit 1 }\n'),
        (".env.local", "ALLOW_LOCAL_TRAIN=false\n"),
        ("docs/training.md", "ALLOW_LOCAL_TRAIN must be false: `export ALLOW_LOCAL_TRAIN=true` is refused.\n"),
        ("docs/notes.txt", "Never set ALLOW_LOCAL_TRAIN=1.\n"),
        ("docker-compose.yml", "services:\n  t:\n    environment:\n      - ALLOW_LOCAL_TRAIN=false\n"),
    ],
)
def test_false_values_removals_and_prose_are_not_settings(scan: Scan, path: str, content: str) -> None:
    assert ids(scan({path: content}), "LTR001") == []


def test_ipython_env_magic_with_a_space_and_shell_cells_are_found(scan: Scan) -> None:
    import json

    cells = [
        {"cell_type": "code", "source": ["%env ALLOW_LOCAL_TRAIN true\n"]},
        {"cell_type": "code", "source": ["%env ALLOW_LOCAL_TRAIN=1\n"]},
        {"cell_type": "code", "source": ["%%bash\n", "export ALLOW_LOCAL_TRAIN=yes\n"]},
        {"cell_type": "code", "source": ["%env ALLOW_LOCAL_TRAIN false\n"]},
    ]
    findings = only(scan({"train.ipynb": json.dumps({"cells": cells, "nbformat": 4})}), "LTR001")
    assert sorted(f.message.split(":")[0] for f in findings) == ["cell 1, line 1", "cell 2, line 1", "cell 3, line 2"]


BYPASS = (
    "from oracle.train.config import load_train_config\n"
    "from oracle.train.trainer import run_training as go\n\n\n"
    "def main() -> None:\n"
    "    go(load_train_config('oracle-mini'), resume=None, run_name=None, facts=None, placement=None)\n"
)


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("scripts/quick_train.py", BYPASS),
        (
            "tools/loop.py",
            "import oracle.train.trainer as t\nt.Trainer(cfg, placement, run_dir=d, data_dir=d, facts=f).fit()\n",
        ),
        (
            "tools/mod.py",
            "from oracle.train import trainer\nengine, model = trainer.initialise_engine(cfg, placement)\n",
        ),
        (
            "tools/dyn.py",
            "import importlib\nm = importlib.import_module('oracle.train.trainer')\ngetattr(m, 'run_training')(c)\n",
        ),
    ],
)
def test_calling_the_trainer_instead_of_the_cli_is_found(scan: Scan, path: str, content: str) -> None:
    findings = only(scan({path: content}), "LTR003")
    assert [f.path for f in findings] == [path], findings


@pytest.mark.parametrize(
    ("path", "content"),
    [
        (
            "oracle_cli/app.py",
            "def train_command():\n    require_training_allowed()\n    from oracle.train.trainer import run_training\n"
            "    run_training(c)\n",
        ),
        ("tests/train/test_loop.py", BYPASS),
        ("oracle/train/launch_helpers.py", "from oracle.train.trainer import run_training\nrun_training(c)\n"),
        ("tools/facts.py", "from oracle.train.trainer import environment_facts\nenvironment_facts(None)\n"),
        ("tools/other.py", "from transformers import Trainer\nTrainer(model).train()\n"),
    ],
)
def test_the_guarded_cli_tests_and_helpers_that_do_not_train_are_not_bypasses(
    scan: Scan, path: str, content: str
) -> None:
    assert ids(scan({path: content}), "LTR003") == []


def test_a_declared_entry_point_whose_file_is_gone_is_found(scan: Scan) -> None:
    """A trust root's floor or policies.toml that names an entry point in a file moved or deleted guards nothing: a
    finding at every gate over the tree (the commit gate sees staged files only, so it does not judge it)."""
    settings = '[local_train]\nentry_points = ["oracle/cli.py:train_command"]\n'
    findings = only(
        scan({"policies/policies.toml": settings, "oracle_cli/app.py": "def train_command():\n    pass\n"}), "LTR002"
    )
    assert [finding.message for finding in findings] == [
        "declared training entry point train_command() is in oracle/cli.py, which is not in the tree; "
        "update policies.toml"
    ]
    assert not only(scan({"policies/policies.toml": settings}, Gate.commit), "LTR002")
