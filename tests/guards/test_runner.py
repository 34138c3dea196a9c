"""The gate runner: waivers, fail-closed errors, bad settings, odd files, fingerprints, the project itself."""

import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from guards import runner
from guards.audit import verify_log
from guards.runner import run_and_record, run_gate
from policies import ALL_POLICIES
from policies.context import Environment, ScanContext
from policies.rule import Gate, Policy, PolicyResult
from policies.settings import SettingsError
from tests.floors import GENERIC_TRUST
from tests.policies.conftest import ids, write_tree

ROOT = Path(__file__).resolve().parents[2]
BAD = 'm = Model.from_pretrained("meta-llama/Llama-2-7b-hf")\n'


def _env(root: Path) -> Environment:
    return Environment(root / ".venv", Path("/usr"), {})


def _run(root: Path, gate: Gate = Gate.ci, today: date | None = None) -> object:
    # small trees, not this project: the generic floor judges them
    return run_gate(root, gate, environment_factory=lambda: _env(root), today=today, trust=GENERIC_TRUST)


CREATED = date.today().isoformat()
EXPIRES = (date.today() + timedelta(days=30)).isoformat()


def _waiver(selector: str, expires: str = EXPIRES, rule: str = "EXT001", created: str = CREATED) -> str:
    return (
        f'[[waiver]]\nrule = "{rule}"\n{selector}\nreason = "a fixture that documents the rule"\n'
        f'owner = "platform@oracle.invalid"\ncreated = {created}\nexpires = {expires}\n'
    )


def test_a_path_waiver_suppresses_and_is_listed(tmp_path: Path) -> None:
    write_tree(tmp_path, {"src/a.py": BAD, "policies/waivers.toml": _waiver('path = "src/**"')})
    result = _run(tmp_path)
    assert ids(result, "EXT") == []  # type: ignore[arg-type]
    assert result.passed  # type: ignore[attr-defined]
    ((finding, use),) = result.waived  # type: ignore[attr-defined]
    assert (finding.rule_id, use.owner, use.expires) == ("EXT001", "platform@oracle.invalid", EXPIRES)


def test_a_fingerprint_waiver_suppresses_only_that_finding(tmp_path: Path) -> None:
    write_tree(tmp_path, {"src/a.py": BAD, "src/b.py": BAD.replace("Llama-2-7b-hf", "Llama-3-8B")})
    fingerprint = next(f.fingerprint for f in _run(tmp_path).findings if f.path == "src/a.py")  # type: ignore[attr-defined]
    write_tree(tmp_path, {"policies/waivers.toml": _waiver(f'fingerprint = "{fingerprint}"')})
    assert [f.path for f in _run(tmp_path).findings] == ["src/b.py"]  # type: ignore[attr-defined]


def test_an_expired_waiver_stops_applying_and_is_reported(tmp_path: Path) -> None:
    expired = _waiver('path = "src/**"', "2025-01-31", created="2025-01-01")
    write_tree(tmp_path, {"src/a.py": BAD, "policies/waivers.toml": expired})
    result = _run(tmp_path, today=date(2026, 11, 26))
    assert ids(result, "EXT") == ["EXT001"]  # type: ignore[arg-type]
    assert result.expired_waivers == [  # type: ignore[attr-defined]
        "EXT001 src/** (owner platform@oracle.invalid) expired on 2025-01-31"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '[[waiver]]\nrule = "EXT001"\npath = "src/**"\nowner = "me@x"\nexpires = 2099-01-01\n',
            r"waivers.toml:1: waiver.0.reason",
        ),
        (_waiver('path = "x"', rule="EXT999"), r"waivers.toml:2: waiver.0.rule: .*unknown rule id 'EXT999'"),
        (_waiver('path = "x"\nfingerprint = "' + "a" * 32 + '"'), r"exactly one of `path`"),
        ('[[waiver]]\nrule = "EXT001"\npath = \n', r"waivers.toml:3:\d+: invalid TOML"),
    ],
)
def test_a_malformed_waiver_file_is_an_error_naming_file_line_and_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    write_tree(tmp_path, {"policies/waivers.toml": content})
    with pytest.raises(SettingsError, match=expected):
        _run(tmp_path)


def test_a_malformed_policies_toml_names_file_line_and_key(tmp_path: Path) -> None:
    write_tree(
        tmp_path, {"policies/policies.toml": "[scan]\nmax_file_bytes = 10\n\n[external_weights]\nallowed = []\n"}
    )
    with pytest.raises(SettingsError, match=r"policies.toml:5: external_weights.allowed: Extra inputs"):
        _run(tmp_path)


def test_a_check_that_raises_is_an_error_never_a_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: ScanContext) -> PolicyResult:
        raise ValueError("boom")

    policies = tuple(Policy(p.name, p.rules, broken) if p.name == "local_train" else p for p in ALL_POLICIES)
    monkeypatch.setattr(runner, "ALL_POLICIES", policies)
    write_tree(tmp_path, {"a.py": "x = 1\n"})
    result = _run(tmp_path)
    assert not result.passed  # type: ignore[attr-defined]
    assert result.errors == ["local_train: the check failed internally: ValueError: boom"]  # type: ignore[attr-defined]


def test_binary_huge_unreadable_and_escaping_files_are_listed_not_crashed_on(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("secret\n")
    write_tree(
        tmp_path,
        {
            "policies/policies.toml": "[scan]\nmax_file_bytes = 1000\n",
            "bin/blob.dat": bytes(range(256)) * 2,
            "big.txt": "x" * 5000,
            "locked.txt": "x",
        },
    )
    (tmp_path / "link.txt").symlink_to(outside)
    os.chmod(tmp_path / "locked.txt", 0)
    try:
        result = _run(tmp_path)
    finally:
        os.chmod(tmp_path / "locked.txt", 0o644)
    skipped = result.examined["external_weights"].skipped  # type: ignore[attr-defined]
    assert skipped["big.txt"].startswith("larger than scan.max_file_bytes")
    assert skipped["link.txt"].startswith("symlink leaving the tree")
    if os.geteuid() != 0:  # root reads anything
        assert skipped["locked.txt"] == "unreadable (permission denied)"
    assert "bin/blob.dat" in result.examined["external_weights"].files  # type: ignore[attr-defined]
    assert result.errors == []  # type: ignore[attr-defined]


def test_fingerprints_stay_the_same_when_unrelated_lines_move(tmp_path: Path) -> None:
    write_tree(tmp_path, {"src/a.py": BAD})
    before = _run(tmp_path).findings[0]  # type: ignore[attr-defined]
    write_tree(tmp_path, {"src/a.py": "import os\n\n\n# a comment\n" + BAD.replace(" = ", " =  ")})
    after = _run(tmp_path).findings[0]  # type: ignore[attr-defined]
    assert (before.line, after.line) == (1, 5)
    assert before.fingerprint == after.fingerprint


def test_the_commit_gate_checks_staged_files_only(tmp_path: Path) -> None:
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    write_tree(tmp_path, {"staged.py": "x = 1\n", "unstaged.py": BAD})
    subprocess.run([*git, "add", "staged.py"], cwd=tmp_path, check=True)
    result = _run(tmp_path, Gate.commit)
    assert result.examined["external_weights"].files == ["staged.py"]  # type: ignore[attr-defined]
    assert result.passed  # type: ignore[attr-defined]


def test_every_gate_decision_is_audited(tmp_path: Path) -> None:
    write_tree(tmp_path, {"src/a.py": BAD})
    run_and_record(tmp_path, Gate.ci, environment_factory=lambda: _env(tmp_path), trust=GENERIC_TRUST)
    write_tree(tmp_path, {"src/a.py": "x = 1\n"})
    run_and_record(tmp_path, Gate.ci, environment_factory=lambda: _env(tmp_path), trust=GENERIC_TRUST)
    lines = (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()
    assert ['"result":"fail"' in lines[0], '"result":"pass"' in lines[1]] == [True, True]
    assert verify_log(tmp_path) == []


def test_the_project_passes_its_own_guards() -> None:
    result = run_gate(ROOT, Gate.ci)
    assert result.errors == []
    assert [f"{f.rule_id} {f.path}:{f.line} {f.message}" for f in result.findings] == []
    assert len(result.examined["external_weights"].files) > 50


def test_the_commit_gate_does_not_import_torch_unless_model_files_are_staged(tmp_path: Path) -> None:
    probe = (
        "import sys; from pathlib import Path; from guards.runner import run_gate; from policies.rule import Gate; "
        "r = run_gate(Path(sys.argv[1]), Gate.commit, sys.argv[2:]); "
        "print('torch' in sys.modules, any(p.endswith('.moe.json') for p in r.examined['architecture'].files))"
    )
    write_tree(tmp_path, {"README.md": "hello\n", "oracle/moe850b/model.py": "x = 1\n"})
    shutil.copytree(ROOT / "oracle" / "moe850b" / "configs", tmp_path / "oracle" / "moe850b" / "configs")

    def run(*files: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path), *files], capture_output=True, text=True, check=True
        )
        return completed.stdout.strip()

    assert run("README.md") == "False False"  # no torch, the model not built
    # a model file staged: the model is built (here by the checkout's own code, in a subprocess)
    assert run("oracle/moe850b/model.py") == "False True"


def test_a_weights_file_over_the_size_limit_is_still_recognised(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    weights = len(header).to_bytes(8, "little") + header + b"\0" * 5000
    write_tree(tmp_path, {"policies/policies.toml": "[scan]\nmax_file_bytes = 1000\n", "model.safetensors": weights})
    result = _run(tmp_path)
    assert [f.path for f in result.findings if f.rule_id == "EXT005"] == ["model.safetensors"]  # type: ignore[attr-defined]


def test_a_committed_ignore_file_does_not_hide_files_from_the_ci_gate(tmp_path: Path) -> None:
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    write_tree(tmp_path, {"load.py": BAD, ".ignore": "load.py\n", ".rgignore": "load.py\n"})
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    assert ids(_run(tmp_path), "EXT001") == ["EXT001"]  # type: ignore[arg-type]


def test_every_path_left_out_ends_in_a_finding(tmp_path: Path) -> None:
    """Fail closed: a file the selection leaves out (too large to read as text, a link leaving the tree, a folder
    where a file was tracked) is a COV001 finding; only a link whose target is scanned itself is not."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("secret\n")
    write_tree(
        tmp_path,
        {"policies/policies.toml": "[scan]\nmax_file_bytes = 1000\n", "big.txt": "x" * 5000, "in.txt": "fine\n"},
    )
    (tmp_path / "link.txt").symlink_to(outside)
    (tmp_path / "inner.txt").symlink_to("in.txt")
    result = _run(tmp_path)
    skipped = result.examined["external_weights"].skipped  # type: ignore[attr-defined]
    assert {"big.txt", "link.txt", "inner.txt"} <= set(skipped)
    flagged = {f.path for f in result.findings if f.rule_id == "COV001"}  # type: ignore[attr-defined]
    assert flagged == {"big.txt", "link.txt"}
    assert not result.passed  # type: ignore[attr-defined]


def test_a_tree_with_no_file_at_all_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="holds no file to check"):
        _run(tmp_path)
