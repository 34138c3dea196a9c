"""A trust root vouches for the keys in it only where root alone can change it (guards.trust.require_protected):
the training job, the ALLOW_LOCAL_TRAIN override and serving refuse one that the user could have written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guards.runtime import training_decision
from guards.trust import TRUST_ROOT_ENV, TrustError, load_trust_root, require_protected
from policies.floor import PolicyFloor
from tests.trust import make_trust, session_trust

NOBODY = 65534


@pytest.fixture
def own_trust(tmp_path: Path) -> Path:
    """A trust root of the user's own making whose floor allows the local-training override."""
    floor = PolicyFloor().model_dump(mode="json")
    floor["settings"]["local_train"]["allow_override"] = True
    trust = make_trust(tmp_path / "own", floor=floor, keys_from=session_trust())
    return trust.path


def _refusal(path: Path) -> str:
    with pytest.raises(TrustError) as caught:
        require_protected(load_trust_root(None, {TRUST_ROOT_ENV: str(path)}), "training")
    return str(caught.value)


def test_a_trust_root_another_user_owns_or_may_write_is_refused(own_trust: Path) -> None:
    if os.geteuid() != 0:  # not root: the file one just made is one's own, which is exactly what is refused
        assert f"is owned by uid {os.geteuid()}, not root" in _refusal(own_trust)
        return
    require_protected(load_trust_root(None, {TRUST_ROOT_ENV: str(own_trust)}), "training")  # root's, 0644: fine
    os.chown(own_trust, NOBODY, -1)
    assert f"is owned by uid {NOBODY}, not root" in _refusal(own_trust)
    os.chown(own_trust, 0, -1)
    own_trust.chmod(0o666)
    assert "is writable by group or others" in _refusal(own_trust)
    own_trust.chmod(0o644)
    folder = own_trust.parent
    folder.chmod(0o777)
    assert f"lies in {folder}, which group or others may write" in _refusal(own_trust)
    folder.chmod(0o1777)  # sticky, as /tmp: others cannot replace the file
    require_protected(load_trust_root(None, {TRUST_ROOT_ENV: str(own_trust)}), "training")
    folder.chmod(0o755)
    os.chown(folder, NOBODY, -1)
    assert f"lies in {folder}, owned by uid {NOBODY}" in _refusal(own_trust)
    os.chown(folder, 0, -1)


def test_the_override_is_refused_under_a_self_made_trust_root(own_trust: Path, tmp_path: Path) -> None:
    """The attack: one's own trust root whose floor allows the override, plus allow_override in policies.toml."""
    checkout = tmp_path / "checkout"
    (checkout / "policies").mkdir(parents=True)
    (checkout / "policies" / "policies.toml").write_text("[local_train]\nallow_override = true\n")
    env = {TRUST_ROOT_ENV: str(own_trust), "ALLOW_LOCAL_TRAIN": "true"}
    if os.geteuid() == 0:
        os.chown(own_trust, NOBODY, -1)  # as a user other than root would have it
    decision = training_decision(checkout, env)
    assert not decision.allowed
    assert "ALLOW_LOCAL_TRAIN=true refused: trust root" in decision.reason
    assert "not root" in decision.reason
