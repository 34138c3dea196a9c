"""Policy floors for tests: the generic floor of small trees that are not this project, and trust roots carrying a
floor, signed with the session's keys (tests.trust), so attesting and approving still work under them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guards.keys import load_signing_key
from guards.trust import SIGNING_ROLES, TRUST_ROOT_ENV, TrustRoot, build_trust_root
from policies.settings import Settings
from tests.trust import session_trust

# A floor for small trees written by tests: the schema's own defaults, and no policies.toml required (such a tree
# is not a project of the organisation; this project's floor is the embedded one).
GENERIC_FLOOR: dict[str, Any] = {"settings": Settings().model_dump(mode="json"), "require_settings_file": False}
GENERIC_TRUST = TrustRoot(source="the tests' generic floor", development=True, floor=GENERIC_FLOOR)


def _key(path: Path) -> Ed25519PrivateKey:
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(path)})
    assert key is not None
    return key


def trust_root_with_floor(directory: Path, floor: dict[str, Any]) -> Path:
    """A trust root file in `directory` carrying `floor`, signed by the session's root key, its roles held by the
    session's signers; ORACLE_TRUST_ROOT may name it."""
    session = session_trust()
    members = {role: [_key(session.keys[role]).public_key()] for role in SIGNING_ROLES}
    path = directory / "trust-root.json"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_trust_root([_key(session.root_key)], members, floor=floor))
    return path


def generic_floor_env(directory: Path) -> dict[str, str]:
    """The environment entry that puts small-tree tests under the generic floor."""
    return {TRUST_ROOT_ENV: str(trust_root_with_floor(directory, GENERIC_FLOOR))}
