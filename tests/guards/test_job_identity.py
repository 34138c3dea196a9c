"""guards.job_identity without a scheduler: the comment format, and the refusals that need no cluster. The checks
that ask the scheduler run against the real one-node SLURM cluster in tests/security/test_submission_binding.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from guards.job_identity import JobIdentityError, comment_for, digest_in_comment, verify_k8s_pod, verify_slurm_job

DIGEST = "ab" * 32


def test_the_comment_carries_the_mark_and_the_digest_last() -> None:
    comment = comment_for("oracle:commit=c:config=h", DIGEST)
    assert comment == f"oracle:commit=c:config=h:digest={DIGEST}"
    assert digest_in_comment(comment) == DIGEST
    assert digest_in_comment(comment + "  ") == DIGEST  # squeue pads


@pytest.mark.parametrize(
    "comment",
    [
        "",
        "oracle:commit=c:config=h",  # no digest
        f"digest={DIGEST}",  # nothing before it
        f":digest={DIGEST}",  # an empty mark
        "oracle:commit=c:digest=" + "AB" * 32,  # not lower-case hex
        "oracle:commit=c:digest=" + "ab" * 31,  # too short
        f"oracle:commit=c:digest={DIGEST}:more",  # not last
        f"oracle:digest={DIGEST}x",
    ],
)
def test_a_comment_without_a_well_formed_trailing_digest_carries_none(comment: str) -> None:
    assert digest_in_comment(comment) is None


@pytest.mark.parametrize("job_id", ["", "4242; true", "../1", "12a", " 12", "\u0664\u0662"])
def test_a_job_id_that_is_not_a_number_is_refused_before_any_client_runs(job_id: str) -> None:
    with pytest.raises(JobIdentityError, match="is not a job id"):
        verify_slurm_job(job_id, DIGEST, {})


def test_a_pod_needs_the_downward_api_name_and_the_service_host() -> None:
    with pytest.raises(JobIdentityError, match="no POD_NAME"):
        verify_k8s_pod(DIGEST, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    with pytest.raises(JobIdentityError, match="no POD_NAME"):
        verify_k8s_pod(DIGEST, {"POD_NAME": "p"})


def test_a_pod_without_a_service_account_token_is_refused(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "POD_NAME": "oracle-train-0"}
    with pytest.raises(JobIdentityError, match="no service-account token, namespace or CA"):
        verify_k8s_pod(DIGEST, env, account=tmp_path / "serviceaccount")
    (tmp_path / "serviceaccount").mkdir()
    (tmp_path / "serviceaccount" / "token").write_text("t")
    (tmp_path / "serviceaccount" / "namespace").write_text("oracle")
    (tmp_path / "serviceaccount" / "ca.crt").write_text("not a certificate")
    with pytest.raises(JobIdentityError, match="not inside a Kubernetes pod"):
        verify_k8s_pod(DIGEST, env, account=tmp_path / "serviceaccount")
