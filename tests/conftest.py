"""Shared fixtures: small configs and seeded models, and an attested checkout of this repository for the gates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from oracle.moe850b.config import MoEConfig, load_config
from oracle.moe850b.model import OracleMoE


def micro_config(**overrides: object) -> MoEConfig:
    """The smallest config that exercises every part: 2 layers, GQA, 4 experts, top-2, a shared expert."""
    fields: dict[str, object] = {
        "name": "micro",
        "vocab_size": 32,
        "hidden_size": 16,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "context_length": 64,
        "n_experts": 4,
        "top_k": 2,
        "expert_hidden_size": 16,
        "shared_expert_hidden_size": 8,
        "initializer_range": 0.2,
    }
    fields.update(overrides)
    return MoEConfig.model_validate(fields)


@pytest.fixture
def mini_model() -> OracleMoE:
    torch.manual_seed(0)
    return OracleMoE(load_config("oracle-mini")).eval()


@pytest.fixture(scope="session", autouse=True)
def session_trust_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An organisation's trust root for the whole run (tests.trust): ORACLE_TRUST_ROOT names it, as on CI, cluster
    and serving machines. Tests of the development default remove the variable themselves."""
    import os

    from guards.trust import TRUST_ROOT_ENV
    from tests.trust import make_trust, set_session_trust

    trust = make_trust(tmp_path_factory.mktemp("trust"))
    set_session_trust(trust)
    previous = os.environ.get(TRUST_ROOT_ENV)
    os.environ[TRUST_ROOT_ENV] = str(trust.path)
    yield trust.path
    if previous is None:
        os.environ.pop(TRUST_ROOT_ENV, None)
    else:
        os.environ[TRUST_ROOT_ENV] = previous


@pytest.fixture(autouse=True)
def reads_bytecode_again() -> Iterator[None]:
    """A gate judged in this process stops it reading bytecode caches for good (policies.bytecode), as it must in a
    command; the test session's later imports and subprocesses go back to the interpreter's defaults."""
    import os
    import sys

    prefix, dont_write = sys.pycache_prefix, sys.dont_write_bytecode
    environ = {name: os.environ.get(name) for name in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    yield
    sys.pycache_prefix, sys.dont_write_bytecode = prefix, dont_write
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def repository_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One attested checkout of this repository for the session (tests.checkouts); tests that change it make their
    own. The signing key that attested it is `repository_checkout.parent / "signing.pem"`."""
    from tests.checkouts import attest, make_repository_checkout

    tmp = tmp_path_factory.mktemp("checkout")
    root = make_repository_checkout(tmp)
    attest(root, tmp / "signing.pem")
    return root


@pytest.fixture(scope="session")
def slurm_cluster(session_trust_root: Path) -> Iterator[object]:
    """A real one-node SLURM cluster for the session (tests.infra.slurm_cluster): installed from Debian's packages
    when missing, torn down at the end. In CI (CI=true) it must come up; elsewhere a machine that cannot install it
    skips the tests that need it. As an organisation configures its nodes, the cluster, not the submitter, gives
    every job its trust root and its signing key (a provenance key of that trust root): its TaskProlog exports
    ORACLE_TRUST_ROOT and ORACLE_SIGNING_KEY (nothing of the submitting shell reaches a job)."""
    import os
    import shutil
    import tempfile

    from tests.infra.slurm_cluster import SlurmCluster, SlurmError, ensure_installed
    from tests.trust import session_trust

    try:
        ensure_installed()
    except SlurmError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"SLURM cannot be installed here: {exc}")
    state = Path(tempfile.mkdtemp(prefix="oracle-slurm-", dir="/tmp"))  # short: the daemons' unix sockets live here
    prolog = state / "task-prolog.sh"
    key = session_trust().keys["provenance"]
    prolog.write_text(
        f"#!/bin/sh\necho 'export ORACLE_TRUST_ROOT={session_trust_root}'\necho 'export ORACLE_SIGNING_KEY={key}'\n"
    )
    prolog.chmod(0o755)
    cluster = SlurmCluster(state, extra_conf={"TaskProlog": prolog})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
