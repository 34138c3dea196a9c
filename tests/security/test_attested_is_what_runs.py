"""Attack 3: what is attested is not what runs.

`git update-index --skip-worktree` (or `--assume-unchanged`) hid a working-tree edit from the dirty check, so the gate
scanned clean bytes while HEAD's tree held a violation, and the attestation named that tree and still verified; the
same trick on guards/runtime.py let training start unchecked. An untracked sitecustomize.py or .pth hidden through
.git/info/exclude was neither scanned nor dirty, yet ran at start-up in a job whose PYTHONPATH is the checkout.
Each is reproduced here in a checkout of this repository and refused with one line; the clean checkout (holding
the bytecode caches any run leaves) still attests and verifies. The lies repository config and the environment can
tell git (filters, stat caches, fsmonitor, redirected index or work tree, replace objects) are tried on small
repositories against `guards.git.dirty_paths`.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest

from guards import git as guards_git
from guards.attestation import PAYLOAD_TYPE, build_statement, write_attestation
from guards.keys import load_signing_key, seal
from guards.result import GateResult
from guards.startup import JOB_SITE_HOOK, startup_hazards
from oracle_base.digests import canonical_json
from policies.rule import Gate
from tests.checkouts import attest, git, make_repository_checkout, oracle
from tests.infra.test_checks import request as job_request
from tests.infra.test_checks import sbatch

VIOLATION = '\n\ndef load_foreign():\n    from transformers import AutoModel\n\n    return AutoModel.from_pretrained("meta-llama/Llama-2-7b")\n'  # noqa: E501
TARGET = "oracle/__init__.py"  # a tracked file every command imports
SKIP_THE_CHECK = (
    '\n\ndef training_decision(root, environ):  # the check, skipped\n    return TrainingDecision(True, "x")\n'
)
HIDING_FLAGS = ["--skip-worktree", "--assume-unchanged"]
PAYLOAD = "import os\nos.environ['ORACLE_PLANTED'] = '1'\n"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository_checkout(tmp_path_factory.mktemp("attested"))


@pytest.fixture
def checkout(pristine: Path) -> Iterator[Path]:
    """The module's checkout at its first commit, flags cleared and nothing planted, after each test."""
    base = git(pristine, "rev-list", "--max-parents=0", "HEAD")
    exclude = pristine / ".git" / "info" / "exclude"
    excluded = exclude.read_text()
    yield pristine
    (pristine / ".git" / "index").unlink()  # drops the flags with the entries they were set on
    git(pristine, "reset", "-q", "--hard", base)
    exclude.write_text(excluded)
    git(pristine, "clean", "-qfdx", "-e", "/.venv", "-e", "/data/", "-e", "/.oracle/")
    # the same violation commits to the same tree in every test: no test may find another's attestation of it
    shutil.rmtree(pristine / ".oracle" / "attestations", ignore_errors=True)


def _key(root: Path) -> Path:
    return root.parent / "signing.pem"


def _refused(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


def _attested(root: Path) -> None:
    """The clean commit attested by CI (written in-process: `oracle guards attest` itself is tested on its own)."""
    signing_key = load_signing_key({"ORACLE_SIGNING_KEY": str(_key(root))})
    write_attestation(root, GateResult(Gate.ci, str(root), []), signing_key)


def _attestation_by_the_old_gate(root: Path) -> None:
    """What `oracle guards attest` wrote for HEAD's tree before this fix: the ci gate passed on the clean bytes in
    the working tree, and the attestation named HEAD's tree, signed by the CI key."""
    result = GateResult(Gate.ci, str(root), [])
    statement = build_statement(root, result, commit=guards_git.head_commit(root), tree=guards_git.head_tree(root))
    signing_key = load_signing_key({"ORACLE_SIGNING_KEY": str(_key(root))})
    path = root / ".oracle" / "attestations" / f"{guards_git.head_tree(root)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(seal(PAYLOAD_TYPE, canonical_json(statement.document()), [signing_key]).to_bytes())


def _last_audit(root: Path, gate: str) -> dict[str, object]:
    entries = [json.loads(line) for line in (root / ".oracle" / "audit.jsonl").read_text().splitlines()]
    return next(entry for entry in reversed(entries) if entry["gate"] == gate)


# --- the legitimate path -----------------------------------------------------------------------------------------


def test_clean_checkout_with_its_bytecode_caches_attests_and_verifies(checkout: Path) -> None:
    for optimize in ([], ["-O"], ["-OO"]):  # the caches a developer's runs leave, at each optimisation level
        compiled = [sys.executable, *optimize, "-m", "compileall", "-q", "guards", "oracle", "policies", "hub", "tests"]
        subprocess.run(compiled, cwd=checkout, check=True, capture_output=True)
    assert len(list(checkout.glob("guards/__pycache__/*.pyc"))) >= 3 * len(list(checkout.glob("guards/*.py")))
    attest(checkout, _key(checkout))
    verify = oracle(checkout, "guards", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert startup_hazards(checkout) == []


# --- (a) an edit hidden from git status -------------------------------------------------------------------------


@pytest.mark.parametrize("flag", HIDING_FLAGS)
def test_violation_in_head_hidden_behind_clean_working_tree_bytes_is_refused(checkout: Path, flag: str) -> None:
    clean = (checkout / TARGET).read_text()
    (checkout / TARGET).write_text(clean + VIOLATION)
    git(checkout, "commit", "-qam", "a hub loader call")
    (checkout / TARGET).write_text(clean)  # the gate scans these bytes
    git(checkout, "update-index", flag, TARGET)
    assert git(checkout, "status", "--porcelain") == ""  # the hiding works: git calls the tree clean

    _refused(oracle(checkout, "guards", "attest", env={"ORACLE_SIGNING_KEY": str(_key(checkout))}), TARGET, flag[2:])
    assert not list((checkout / ".oracle" / "attestations").glob(f"{guards_git.head_tree(checkout)}.json"))

    _attestation_by_the_old_gate(checkout)
    line = _refused(oracle(checkout, "guards", "verify"), "cannot verify the attestation", TARGET, flag[2:])
    assert f"--no{flag[1:]}" in line  # the fix names the flag to clear


@pytest.mark.parametrize("flag", HIDING_FLAGS)
def test_runtime_check_edited_out_and_hidden_is_refused_before_submit(checkout: Path, flag: str) -> None:
    _attested(checkout)  # CI attested the clean commit
    runtime = checkout / "guards" / "runtime.py"
    runtime.write_text(runtime.read_text() + SKIP_THE_CHECK)
    git(checkout, "update-index", flag, "guards/runtime.py")
    assert git(checkout, "status", "--porcelain") == ""

    _refused(oracle(checkout, "guards", "verify"), "guards/runtime.py", "differs from HEAD", flag[2:])
    submit = oracle(checkout, "submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0")
    _refused(submit, "guards/runtime.py")
    entry = _last_audit(checkout, "submit")
    assert entry["result"] == "refused"
    assert "guards/runtime.py" in str(entry["details"])


def test_hidden_edit_undone_and_flag_cleared_verifies_again(checkout: Path) -> None:
    _attested(checkout)
    clean = (checkout / TARGET).read_bytes()
    (checkout / TARGET).write_bytes(clean + VIOLATION.encode())
    git(checkout, "update-index", "--skip-worktree", TARGET)
    assert oracle(checkout, "guards", "verify").returncode == 1
    (checkout / TARGET).write_bytes(clean)
    git(checkout, "update-index", "--no-skip-worktree", TARGET)
    verify = oracle(checkout, "guards", "verify")
    assert verify.returncode == 0, verify.stderr


# --- (b) code outside the tree that runs at start-up ------------------------------------------------------------


@pytest.mark.parametrize(
    "planted",
    ["sitecustomize.py", "usercustomize.py", "oracle-hook.pth", "oracle/data/hook.pth", "runs/x/sitecustomize.py"],
)
def test_start_up_file_hidden_through_info_exclude_is_refused(checkout: Path, planted: str) -> None:
    _attested(checkout)
    (checkout / planted).parent.mkdir(parents=True, exist_ok=True)
    (checkout / planted).write_text(PAYLOAD if planted.endswith(".py") else f"import os; {PAYLOAD.splitlines()[1]}\n")
    with (checkout / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(f"/{planted}\n")
    assert git(checkout, "status", "--porcelain") == ""  # neither dirty nor scanned

    _refused(oracle(checkout, "guards", "verify"), "cannot verify the attestation", planted, "delete them")
    _refused(oracle(checkout, "guards", "attest", env={"ORACLE_SIGNING_KEY": str(_key(checkout))}), planted)


def test_sitecustomize_in_the_checkout_really_runs_in_a_job_started_from_it(checkout: Path) -> None:
    """Why (b) matters: the job's PYTHONPATH is the checkout, and `site` imports sitecustomize from it."""
    (checkout / "sitecustomize.py").write_text("print('planted code ran')\n")
    done = subprocess.run(
        [sys.executable, "-c", "pass"], env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True
    )
    assert "planted code ran" in done.stdout


def test_a_running_jobs_own_site_hook_is_not_a_hazard_but_any_change_to_it_is(checkout: Path) -> None:
    """A SLURM job keeps its private sitecustomize (JOB_SITE_HOOK, which only takes the live checkout off the path)
    under `.oracle/jobs/<id>/site/` while it runs; a command started beside the job must be refused for what it is
    (not one of the job's processes), not for that file. One byte more, or the same text elsewhere, is a hazard."""
    hook = checkout / ".oracle" / "jobs" / "12" / "site" / "sitecustomize.py"
    hook.parent.mkdir(parents=True)
    hook.write_text(JOB_SITE_HOOK)
    assert f"<<'SITE'\n{JOB_SITE_HOOK}SITE\n" in sbatch(job_request(checkout.parent / "job"))  # what the job writes
    assert startup_hazards(checkout) == []

    hook.write_text(JOB_SITE_HOOK + PAYLOAD)
    assert [entry for entry in startup_hazards(checkout) if entry.startswith(".oracle/jobs/12/site/sitecustomize.py")]
    hook.write_text(JOB_SITE_HOOK)
    elsewhere = checkout / ".oracle" / "jobs" / "12" / "sitecustomize.py"
    elsewhere.write_text(JOB_SITE_HOOK)
    assert [entry for entry in startup_hazards(checkout) if entry.startswith(".oracle/jobs/12/sitecustomize.py")]
    elsewhere.unlink()
    hook.unlink()
    hook.symlink_to(checkout / "planted.py")
    (checkout / "planted.py").write_text(JOB_SITE_HOOK)
    assert [entry for entry in startup_hazards(checkout) if entry.startswith(".oracle/jobs/12/site/sitecustomize.py")]
    shutil.rmtree(checkout / ".oracle" / "jobs")  # the checkout is shared with the tests after this one
    (checkout / "planted.py").unlink()


@pytest.mark.parametrize(
    ("planted", "hidden", "expected"),
    [
        # shadows an installed module the job imports (one the verifier itself imports, such as json, would run
        # before any check can: that is why the job runs from a clean export, not from this checkout)
        ("safetensors.py", "safetensors.py", "safetensors.py (untracked top-level module"),
        ("transformers/__init__.py", "transformers", "transformers (untracked top-level module"),  # an installed one
        ("guards/audit_hook.py", "guards/audit_hook.py", "guards/audit_hook.py (untracked code inside the package"),
        (f"oracle/x{EXTENSION_SUFFIXES[0]}", f"oracle/x{EXTENSION_SUFFIXES[0]}", "(untracked code inside the package"),
    ],
)
def test_ignored_module_that_shadows_or_joins_our_code_is_refused(
    checkout: Path, planted: str, hidden: str, expected: str
) -> None:
    (checkout / planted).parent.mkdir(parents=True, exist_ok=True)
    (checkout / planted).write_text(PAYLOAD)
    with (checkout / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(f"/{hidden}\n")
    assert git(checkout, "status", "--porcelain") == ""
    assert [entry for entry in startup_hazards(checkout) if expected in entry]
    _refused(oracle(checkout, "guards", "verify"), hidden)


def test_planted_bytecode_for_a_tracked_module_is_refused(checkout: Path) -> None:
    _attested(checkout)
    source = checkout / "guards" / "paths.py"
    cache = checkout / "guards" / "__pycache__" / f"paths.{sys.implementation.cache_tag}.pyc"
    cache.parent.mkdir(exist_ok=True)
    stat = source.stat()
    mtime, size = int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF
    header = importlib.util.MAGIC_NUMBER + bytes(4) + mtime.to_bytes(4, "little") + size.to_bytes(4, "little")
    planted = compile(source.read_text() + PAYLOAD, str(source), "exec", dont_inherit=True)
    cache.write_bytes(header + marshal.dumps(planted))  # Python would load this: the header matches the source

    _refused(oracle(checkout, "guards", "verify"), f"guards/__pycache__/{cache.name}", "not compiled from it")
    cache.unlink()
    assert oracle(checkout, "guards", "verify").returncode == 0


def test_stale_bytecode_that_python_would_recompile_is_not_a_hazard(checkout: Path) -> None:
    source = checkout / "guards" / "paths.py"
    cache = checkout / "guards" / "__pycache__" / f"paths.{sys.implementation.cache_tag}.pyc"
    cache.parent.mkdir(exist_ok=True)
    header = importlib.util.MAGIC_NUMBER + bytes(4) + (1).to_bytes(4, "little") + (1).to_bytes(4, "little")
    cache.write_bytes(header + marshal.dumps(compile("x = 1\n", str(source), "exec")))
    assert startup_hazards(checkout) == []


def test_unchecked_hash_based_bytecode_is_compared_with_its_source(checkout: Path) -> None:
    source = checkout / "guards" / "paths.py"
    cache = checkout / "guards" / "__pycache__" / f"paths.{sys.implementation.cache_tag}.pyc"
    cache.parent.mkdir(exist_ok=True)
    header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + bytes(8)  # hash-based, never checked
    cache.write_bytes(header + marshal.dumps(compile("x = 1\n", str(source), "exec")))
    assert [entry for entry in startup_hazards(checkout) if "not compiled from it" in entry]


# --- lies the repository's config or the environment can tell git ------------------------------------------------

STAT_LIE = "differs from HEAD although git status may call it clean: a filter or stat-cache setting"
ASSUMED = "differs from HEAD, hidden from git status by assume-unchanged"
CLEAN = "def f():\n    return 1\n"
EVIL = "def f():\n    return 2\n"  # the same size as CLEAN: a stat cache that skips content checks misses it


def _small_repo(path: Path, *init: str) -> Path:
    path.mkdir()
    git(path, "init", "-q", *init)
    (path / "a.py").write_text(CLEAN)
    os.utime(path / "a.py", (1_600_000_000, 1_600_000_000))  # old: never "racily clean", so git trusts its stat
    git(path, "add", "a.py")
    git(path, "commit", "-qm", "clean")
    return path


def _plain_status(root: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout


@pytest.mark.parametrize("init", [(), ("--object-format=sha256",)], ids=["sha1", "sha256"])
@pytest.mark.parametrize("flag", HIDING_FLAGS)
def test_edit_hidden_by_an_index_flag_is_dirty(tmp_path: Path, flag: str, init: tuple[str, ...]) -> None:
    root = _small_repo(tmp_path / "r", *init)
    (root / "a.py").write_text(EVIL)
    git(root, "update-index", flag, "a.py")
    assert _plain_status(root) == ""
    assert guards_git.dirty_paths(root) == [f"a.py (differs from HEAD, hidden from git status by {flag[2:]})"]


def test_file_deleted_behind_skip_worktree_is_dirty(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "r")
    git(root, "update-index", "--skip-worktree", "a.py")
    (root / "a.py").unlink()
    assert _plain_status(root) == ""
    assert guards_git.dirty_paths(root) == [
        "a.py (missing or not a regular file, hidden from git status by skip-worktree)"
    ]


def test_edit_hidden_by_a_clean_filter_in_git_config_is_dirty(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "r")
    (root / ".git" / "info" / "attributes").write_text("*.py filter=hide\n")
    git(root, "config", "filter.hide.clean", "sed s/2/1/")  # git sees the committed bytes; Python runs the edit
    (root / "a.py").write_text(EVIL)
    git(root, "add", "a.py")  # re-stats the entry through the filter: the index blob stays the clean one
    assert _plain_status(root) == ""
    assert [entry for entry in guards_git.dirty_paths(root) if entry.startswith("a.py (differs from HEAD")]


@pytest.mark.parametrize(
    "setting", [("core.trustctime", "false"), ("core.checkStat", "minimal"), ("core.ignoreStat", "true")]
)
def test_edit_hidden_by_a_forged_stat_cache_is_dirty(tmp_path: Path, setting: tuple[str, str]) -> None:
    root = _small_repo(tmp_path / "r")
    git(root, "config", *setting)
    if setting[0] == "core.ignoreStat":
        git(root, "update-index", "--refresh")
    (root / "a.py").write_text(EVIL)  # same size, same inode
    os.utime(root / "a.py", (1_600_000_000, 1_600_000_000))  # the mtime the index recorded
    assert _plain_status(root) == ""
    assert guards_git.dirty_paths(root) in (["a.py"], [f"a.py ({STAT_LIE})"], [f"a.py ({ASSUMED})"])


def test_git_variables_in_the_environment_do_not_redirect_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _small_repo(tmp_path / "r")
    decoy = _small_repo(tmp_path / "decoy")
    (decoy / "a.py").write_text(EVIL)
    git(decoy, "commit", "-qam", "another tree")
    (root / "a.py").write_text(EVIL)  # dirty here; the decoy's index and work tree match EVIL
    for name, value in {
        "GIT_DIR": str(decoy / ".git"),
        "GIT_WORK_TREE": str(decoy),
        "GIT_INDEX_FILE": str(decoy / ".git" / "index"),
    }.items():
        monkeypatch.setenv(name, value)
    assert guards_git.head_tree(root) != git(decoy, "rev-parse", "HEAD^{tree}")
    assert guards_git.dirty_paths(root) == ["a.py"]


def test_work_tree_moved_elsewhere_by_core_worktree_is_refused(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "r")
    elsewhere = tmp_path / "clean-copy"
    elsewhere.mkdir()
    (elsewhere / "a.py").write_text(CLEAN)
    (root / "a.py").write_text(EVIL)
    git(root, "config", "core.worktree", str(elsewhere))
    assert _plain_status(root) == ""
    assert [entry for entry in guards_git.dirty_paths(root) if "unset core.worktree" in entry]


def test_replace_object_does_not_change_which_tree_is_attested(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "r")
    clean_commit = git(root, "rev-parse", "HEAD")
    (root / "a.py").write_text(EVIL)
    git(root, "commit", "-qam", "violation")
    violating_tree = git(root, "rev-parse", "HEAD^{tree}")
    git(root, "replace", git(root, "rev-parse", "HEAD"), clean_commit)  # git now shows HEAD as the clean commit
    git(root, "read-tree", "HEAD")
    (root / "a.py").write_text(CLEAN)
    assert _plain_status(root) == ""
    assert guards_git.head_tree(root) == violating_tree
    assert guards_git.dirty_paths(root) == ["a.py"]  # HEAD (the violation) against the index


def test_committed_symlink_out_of_the_checkout_is_refused(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "r")
    (tmp_path / "outside.py").write_text(EVIL)
    (root / "b.py").symlink_to(tmp_path / "outside.py")  # committed as a link: its target's bytes are never attested
    (root / "c.py").symlink_to("a.py")  # a link inside the checkout is fine
    git(root, "add", "b.py", "c.py")
    git(root, "commit", "-qm", "links")
    assert guards_git.dirty_paths(root) == [
        "b.py (a symlink out of the checkout: what it points at is not in the attested tree)"
    ]


# --- (d) the live checkout's git set-up inside the job --------------------------------------------------------------


def test_a_filter_in_the_live_checkouts_git_config_does_not_run_in_the_job(tmp_path: Path, slurm_cluster: Any) -> None:
    """A smudge filter set in .git/config and selected for every path in .git/info/attributes would run, as the
    user, when the job checks the commit out (a `git worktree add` did): the job's export is a fresh clone with a
    config of its own, so the filter never runs and the job trains on the commit's bytes."""
    root = make_repository_checkout(tmp_path)
    attest(root, _key(root))
    marker = tmp_path / "filter-ran"
    git(root, "config", "filter.planted.smudge", f"sh -c 'touch {marker}; cat'")
    (root / ".git" / "info" / "attributes").write_text("* filter=planted\n")
    submit = ["submit", "--target", "slurm", "--config", "oracle-mini", "--gpus-per-node", "0", "--time", "00:15:00"]
    done = oracle(root, *submit, "--format", "json", env={**slurm_cluster.env, "ORACLE_SIGNING_KEY": str(_key(root))})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists()  # nothing on the submitting side checked anything out
    job_id = json.loads(done.stdout)["job_id"]
    log = root / "runs" / "slurm" / f"oracle-train-oracle-mini-{job_id}.out"
    try:
        deadline = time.monotonic() + 300
        while "step 1:" not in (log.read_text() if log.exists() else ""):  # exported, checked, training
            assert slurm_cluster.job_state(job_id) in {"PENDING", "RUNNING"}, log.read_text() if log.exists() else ""
            assert time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.5)
        assert not marker.exists()
    finally:
        slurm_cluster.run("scancel", job_id)
