"""Trust for tests: a trust root made with the real `oracle keys new` and `oracle trust init`, outside every checkout.

The session fixture in tests/conftest.py makes one whose single key holds every signing role and points
ORACLE_TRUST_ROOT at it for the whole run, as an organisation configures its CI, cluster and serving machines; the
tests of the development default remove the variable. Tests that need separate signers make their own with
`make_trust`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from guards.trust import SIGNING_ROLES, TRUST_ROOT_ENV

ORACLE = str(Path(sys.executable).parent / "oracle")


@dataclass(frozen=True)
class TestTrust:
    __test__ = False  # a helper, not a test class
    path: Path  # the trust root file
    root_key: Path  # the private key that signed it
    keys: dict[str, Path]  # role -> the private key of that role's signer

    @property
    def env(self) -> dict[str, str]:
        return {TRUST_ROOT_ENV: str(self.path)}


def _oracle(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != TRUST_ROOT_ENV}
    done = subprocess.run([ORACLE, *args], capture_output=True, text=True, check=False, env=env, timeout=300)
    assert done.returncode == 0, f"oracle {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def make_trust(
    directory: Path,
    signers: dict[str, str] | None = None,
    *,
    floor: dict[str, object] | None = None,
    keys_from: TestTrust | None = None,
) -> TestTrust:
    """A trust root in `directory` (keys in directory/keys). `signers`: role -> key name; roles sharing a name share
    a key (default: one key, `signer`, for every role). `floor`: the policy floor it signs (default: the embedded
    one). `keys_from`: start from that trust root's keys (same signers, another floor)."""
    names = signers or {role: "signer" for role in SIGNING_ROLES}
    keydir = directory / "keys"
    if keys_from is not None:
        shutil.copytree(keys_from.path.parent / "keys", keydir, dirs_exist_ok=True)
    for name in {"root", *names.values()}:
        if not (keydir / f"{name}.pem").exists():
            _oracle("keys", "new", name, "--dir", str(keydir))
    args = ["trust", "init", "--out", str(directory / "trust-root.json"), "--root-key", str(keydir / "root.pem")]
    for role, name in names.items():
        args += [f"--{role}", str(keydir / f"{name}.pub")]
    if floor is not None:
        (directory / "floor.json").write_text(json.dumps(floor))
        args += ["--floor", str(directory / "floor.json")]
    _oracle(*args)
    return TestTrust(
        directory / "trust-root.json", keydir / "root.pem", {r: keydir / f"{n}.pem" for r, n in names.items()}
    )


_session: TestTrust | None = None


def set_session_trust(trust: TestTrust) -> None:
    global _session
    _session = trust


def session_trust() -> TestTrust:
    assert _session is not None, "the session trust root is made by tests/conftest.py's autouse fixture"
    return _session


def session_key(target: Path | None = None) -> Path:
    """The session's signing key (every role); copied to `target` when given (tests that expect a key there)."""
    key = session_trust().keys["attestation"]
    if target is None:
        return key
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(key, target)
    target.chmod(0o600)
    return target
