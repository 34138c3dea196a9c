"""`oracle guards run --root` on a repository that is not an Oracle checkout: its own settings, none of this
project's layout checks or defaults, no judgement of the scanner's environment, nothing written into the tree, a
root that cannot be judged refused (exit 2), and a file selection where every path left out ends in a finding."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from oracle_cli.app import app
from tests.policies.conftest import write_tree

cli = CliRunner()
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
BAD = 'm = AutoModel.from_pretrained("meta-llama/Llama-2-7b-hf")\n'
OURS = 'm = AutoModel.from_pretrained("oracle-ai/oracle850b-moe")\n'
ACME = 'm = AutoModel.from_pretrained("acme-labs/support-bot")\n'
REALCODE = Path(__file__).resolve().parents[3] / "shared" / "realcode"


def _repo(root: Path, files: dict[str, str | bytes], *, force: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    write_tree(root, files)
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    if force:
        subprocess.run([*GIT, "add", "-f", "--", *force], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init", "--allow-empty"], cwd=root, check=True)
    return root


def _run(root: Path, *args: str, audit: Path | None = None) -> tuple[int, dict[str, Any], str]:
    """The ci gate over root as JSON (exit code, report, stderr); the audit entry goes to `audit` (outside the tree)."""
    where = audit or root.parent / f"{root.name}-audit"
    result = cli.invoke(app, ["guards", "run", "--root", str(root), "--format", "json", "--audit", str(where), *args])
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, report, result.stderr


def _ids(report: dict[str, Any]) -> list[str]:
    return sorted(f["rule_id"] for f in report["findings"])


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root (.git included) with its size and modification time."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in [".", *names]:
            path = Path(directory) / name
            info = path.lstat()
            found[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


# --- the root --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "is empty: there is nothing to check"),
        ("not-git", "is not a git repository: the gate checks what git tracks; run `git init"),
        ("no-files", "holds no file to check"),
    ],
)
def test_a_root_that_cannot_be_judged_is_exit_2_with_one_line(tmp_path: Path, kind: str, expected: str) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    if kind == "not-git":
        (root / "app.py").write_text(BAD)
    if kind == "no-files":
        _repo(root, {})
    result = cli.invoke(app, ["guards", "run", "--root", str(root), "--audit", str(tmp_path / "log")])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "PASSED" not in result.output
    assert not (tmp_path / "log").exists()  # nothing recorded as a pass


def test_a_git_repository_with_only_untracked_files_is_judged(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    (root / "app.py").write_text("print('hello')\n")
    code, report, _ = _run(root)
    assert (code, report["passed"]) == (0, True)


# --- settings ---------------------------------------------------------------------------------------------------


def test_a_foreign_repository_gets_generic_defaults_and_generic_fix_hints(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": OURS})
    code, report, _ = _run(root)
    assert code == 1
    assert _ids(report) == ["EXT001"]  # oracle-ai is this project's namespace, not the scanned repository's
    (finding,) = report["findings"]
    assert "oracle." not in finding["fix"]
    assert "oracle-ai" not in finding["fix"]
    settings = report["settings"]
    assert settings["oracle_checkout"] is None
    assert settings["source"] == "none"
    assert settings["values"]["external_weights.allowed_namespaces"]["value"] == []


def test_its_own_tool_oracle_table_declares_its_namespaces(tmp_path: Path) -> None:
    pyproject = '[project]\nname = "acme"\n\n[tool.oracle.external_weights]\nallowed_namespaces = ["acme-labs"]\n'
    root = _repo(tmp_path / "tree", {"pyproject.toml": pyproject, "app.py": ACME})
    code, report, _ = _run(root)
    assert (code, _ids(report)) == (0, [])
    settings = report["settings"]
    where = f"{root / 'pyproject.toml'} [tool.oracle]"
    assert settings["source"] == where
    assert settings["values"]["external_weights.allowed_namespaces"] == {"value": ["acme-labs"], "from": where}
    assert settings["values"]["scan.max_file_bytes"]["from"].startswith("generic defaults")
    text = cli.invoke(app, ["guards", "run", "--root", str(root), "--audit", str(tmp_path / "log")]).stdout
    assert f"settings: {where}; not an Oracle checkout" in text
    assert "set there: external_weights.allowed_namespaces" in text


def test_a_namespace_it_does_not_declare_is_still_found(tmp_path: Path) -> None:
    pyproject = '[project]\nname = "acme"\n\n[tool.oracle.external_weights]\nallowed_namespaces = ["acme-labs"]\n'
    root = _repo(tmp_path / "tree", {"pyproject.toml": pyproject, "app.py": ACME + BAD})
    assert _ids(_run(root)[1]) == ["EXT001"]


def test_settings_file_given_on_the_command_line_wins(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": ACME})
    settings = tmp_path / "acme.toml"
    settings.write_text('[external_weights]\nallowed_namespaces = ["acme-labs"]\n')
    code, report, _ = _run(root, "--settings", str(settings))
    assert (code, report["settings"]["source"]) == (0, str(settings))
    assert _run(root)[0] == 1  # without it, acme-labs is a foreign namespace


def test_a_broken_settings_file_is_exit_2_naming_it(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"pyproject.toml": '[tool.oracle.scan]\nfail_on = "sometimes"\n', "a.py": ""})
    code, _, stderr = _run(root)
    assert code == 2
    assert "pyproject.toml" in stderr
    assert "scan.fail_on" in stderr


def test_its_own_policies_toml_does_not_switch_on_this_projects_layout_checks(tmp_path: Path) -> None:
    settings = '[external_weights]\nallowed_namespaces = ["acme-labs"]\n'
    root = _repo(tmp_path / "tree", {"policies/policies.toml": settings, "app.py": ACME})
    report = _run(root)[1]
    # no ARCH001 "flagship config missing", no floor (TRU001) on its settings, its namespace allowed
    assert [i for i in _ids(report) if i.startswith(("ARCH", "TRU", "EXT"))] == []
    assert report["settings"]["oracle_checks"] is False


def test_oracle_checks_true_switches_them_on(tmp_path: Path) -> None:
    settings = 'oracle_checks = true\n[external_weights]\nallowed_namespaces = ["acme-labs"]\n'
    root = _repo(tmp_path / "tree", {"policies/policies.toml": settings, "app.py": ACME})
    code, report, _ = _run(root)
    assert code == 1
    assert "ARCH001" in _ids(report)


# --- the environment --------------------------------------------------------------------------------------------


def test_the_scanners_environment_is_not_judged_against_another_tree(tmp_path: Path) -> None:
    lock = "requests==2.31.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
    root = _repo(tmp_path / "tree", {"requirements.lock": lock, "app.py": "x = 1\n"})
    code, report, _ = _run(root)
    assert [f for f in report["findings"] if f["path"] == "" or f["rule_id"] == "VENV003"] == []
    assert "not judged" in report["settings"]["environment"]
    assert code in (0, 1)


def test_the_trees_own_lock_is_still_judged(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"requirements.lock": "requests==2.31.0\n", "app.py": "x = 1\n"})
    assert "VENV004" in _ids(_run(root)[1])  # a pin without a hash: a fact of the tree, not of the scanner


# --- nothing written into the tree -------------------------------------------------------------------------------


def test_nothing_is_written_into_the_scanned_tree(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": BAD, "README.md": "hello\n"})
    before = _listing(root)
    code, _, _ = _run(root, audit=tmp_path / "elsewhere")
    assert code == 1
    assert _listing(root) == before
    assert (tmp_path / "elsewhere" / ".oracle" / "audit.jsonl").read_text().count('"result":"fail"') == 1


def test_a_read_only_tree_can_be_scanned(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": BAD, "lib/util.py": "x = 1\n"})
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        before = _listing(root)
        code, report, stderr = _run(root, audit=tmp_path / "log")
        assert (code, _ids(report)) == (1, ["EXT001"]), stderr
        assert _listing(root) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)


def test_attest_is_refused_for_a_tree_that_is_not_ours(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": "x = 1\n"})
    before = _listing(root)
    code, _, stderr = _run(root, "--attest")
    assert code == 2
    assert "not an Oracle checkout" in stderr
    assert _listing(root) == before


def test_an_oracle_checkout_keeps_its_own_audit_log(tmp_path: Path, generic_floor: Path) -> None:
    here = Path(__file__).resolve().parents[2]  # this checkout's pyproject and the lock stamped from it
    files = {name: (here / name).read_text() for name in ("pyproject.toml", "requirements.lock")}
    root = _repo(tmp_path / "tree", {**files, "app.py": "x = 1\n"})
    result = cli.invoke(app, ["guards", "run", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "an Oracle checkout (pyproject.toml names the project 'oracle')" in result.stdout
    assert '"result":"pass"' in (root / ".oracle" / "audit.jsonl").read_text()


def test_audit_must_name_a_folder_or_its_log(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": "x = 1\n"})
    code, _, stderr = _run(root, audit=tmp_path / "decisions.jsonl")
    assert code == 2
    assert ".oracle/audit.jsonl" in stderr
    code, _, _ = _run(root, audit=tmp_path / "project" / ".oracle" / "audit.jsonl")
    assert code == 0
    assert (tmp_path / "project" / ".oracle" / "audit.jsonl").is_file()


# --- file selection fails closed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [".venv", ".nox", ".oracle", "__pycache__", "pkg/__pycache__"])
def test_a_tracked_file_under_a_run_time_folder_is_scanned(tmp_path: Path, folder: str) -> None:
    name = f"{folder}/load.py"
    root = _repo(tmp_path / "tree", {".gitignore": f"{folder}/\n", name: BAD}, force=(name,))
    code, report, _ = _run(root)
    assert code == 1
    assert [f["path"] for f in report["findings"]] == [name]


@pytest.mark.parametrize("folder", [".venv", ".nox", ".oracle", "__pycache__"])
def test_an_untracked_file_there_is_left_out(tmp_path: Path, folder: str) -> None:
    root = _repo(tmp_path / "tree", {"app.py": "x = 1\n"})
    (root / folder).mkdir()
    (root / folder / "load.py").write_text(BAD)  # not ignored, not tracked: what a tool wrote at run time
    assert _run(root)[0] == 0


def test_an_unreadable_file_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _repo(tmp_path / "tree", {"app.py": "x = 1\n", "secret.py": BAD})
    readable = os.access
    monkeypatch.setattr(os, "access", lambda p, m: not str(p).endswith("secret.py") and readable(p, m))
    code, report, _ = _run(root)
    assert code == 1
    (finding,) = report["findings"]
    assert (finding["rule_id"], finding["path"]) == ("COV001", "secret.py")
    assert "unreadable" in finding["message"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_file_without_read_permission_is_a_finding(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"app.py": "x = 1\n", "secret.py": BAD})
    os.chmod(root / "secret.py", 0)
    try:
        assert _ids(_run(root)[1]) == ["COV001"]
    finally:
        os.chmod(root / "secret.py", 0o644)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/srv/shared/notes.txt", "symlink leaving the tree"),
        (
            "/home/ml/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/01c7f73d",
            "model hub cache (to /home/ml/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/01c7f73d)"
            ": a weights reference",
        ),
        ("../../.cache/torch/hub/checkpoints/resnet50.pth", ": a weights reference"),
    ],
)
def test_a_tracked_symlink_leaving_the_tree_is_a_finding(tmp_path: Path, target: str, expected: str) -> None:
    root = tmp_path / "tree"
    (root / "models").mkdir(parents=True)
    (root / "models" / "base").symlink_to(target)
    _repo(root, {"app.py": "x = 1\n"})
    code, report, _ = _run(root)
    assert code == 1
    (finding,) = report["findings"]
    assert (finding["rule_id"], finding["path"]) == ("COV001", "models/base")
    assert expected in finding["message"]


def test_a_symlink_inside_the_tree_is_not_a_finding(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "data" / "2024-06-01").mkdir(parents=True)
    (root / "data" / "2024-06-01" / "README.md").write_text("snapshot\n")
    (root / "data" / "current").symlink_to("2024-06-01")
    _repo(root, {})
    code, report, _ = _run(root)
    assert (code, _ids(report)) == (0, [])


def test_a_file_over_the_size_limit_is_named_and_never_a_pass(tmp_path: Path) -> None:
    pyproject = "[tool.oracle.scan]\nmax_file_bytes = 1000\n"
    root = _repo(tmp_path / "tree", {"pyproject.toml": pyproject, "notes.txt": "x" * 999, "big.txt": "y" * 5000})
    code, report, _ = _run(root)
    assert code == 1
    assert [(f["rule_id"], f["path"]) for f in report["findings"]] == [("COV001", "big.txt")]
    text = cli.invoke(app, ["guards", "run", "--root", str(root), "--audit", str(tmp_path / "log")]).stdout
    assert "big.txt: larger than scan.max_file_bytes" in text


# --- a real repository ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (REALCODE / "flask.tar.gz").is_file(), reason="needs ../shared/realcode/flask.tar.gz")
def test_a_web_framework_without_ml_passes_clean_and_is_left_untouched(tmp_path: Path) -> None:
    root = tmp_path / "flask"
    root.mkdir()
    with tarfile.open(REALCODE / "flask.tar.gz") as archive:
        archive.extractall(root, filter="data")
    _repo(root, {})
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        code, report, stderr = _run(root)
        assert (code, report["findings"], report["errors"]) == (0, [], []), stderr
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
        assert status.stdout == ""
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)


def test_an_oracle_checkout_without_its_lock_is_a_finding(tmp_path: Path, generic_floor: Path) -> None:
    root = _repo(tmp_path / "tree", {"pyproject.toml": '[project]\nname = "oracle"\n', "app.py": "x = 1\n"})
    result = cli.invoke(app, ["guards", "run", "--root", str(root)])
    assert result.exit_code == 1
    assert "VENV004" in result.stdout


def test_settings_in_policies_toml_alone_do_not_make_the_lock_required(tmp_path: Path) -> None:
    root = _repo(tmp_path / "tree", {"policies/policies.toml": "[scan]\nexclude = []\n", "app.py": "x = 1\n"})
    code, stdout, _ = _run(root, audit=tmp_path / "log")
    assert code == 0, stdout
    assert "VENV004" not in stdout


def test_a_link_into_git_annex_objects_is_not_a_pass(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    annex = root / ".git" / "annex" / "objects" / "ab" / "SHA256E-s4976--f00.safetensors"
    root.mkdir()
    (root / "app.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    annex.parent.mkdir(parents=True)
    annex.write_bytes(b"\0" * 64)
    (root / "models").mkdir()
    (root / "models" / "model.safetensors").symlink_to("../.git/annex/objects/ab/SHA256E-s4976--f00.safetensors")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=root, check=True)
    code, report, _ = _run(root)
    assert code == 1
    assert [(f["rule_id"], f["path"]) for f in report["findings"]] == [("COV001", "models/model.safetensors")]
    assert "git-annex" in report["findings"][0]["message"]
