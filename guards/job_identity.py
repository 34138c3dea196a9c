"""Is this process inside the scheduler's job that carries the submission digest? Asked of the scheduler, never of
the environment: a variable that names a job (SLURM_JOB_ID, a pod name) only says which job to ask about.

SLURM, four checks that must all hold:
1. the controller (`squeue`, free text last so a comment or name cannot shift the other fields; `scontrol show job`
   prints `Key=Value` pairs whose free-text values may themselves hold ` Key=`, so it cannot be parsed without
   ambiguity) lists the job as RUNNING, owned by this process's uid, and its comment carries `digest=<digest>`
   (the comment `oracle submit` gives it; `comment_for`);
2. `scontrol write batch_script <job> -` gives back the very script the record was signed for (its spec_hash);
3. `scontrol listpids <job>` (answered by this node's slurmd, which tracks the job's processes) lists this process
   or one of its ancestors;
4. this process descends from the job's step daemon: an ancestor whose executable is the root-owned `slurmstepd`
   binary and whose title is `slurmstepd: [<job>.<step>]`.
The test cluster runs `proctrack/linuxproc` without a cgroup plugin, so there is no job cgroup to read; (3) and (4)
are the two process signals it supports, and they must agree. The clients are found in the system's binary folders,
never through PATH, and must be root-owned and not writable by others.

What this cannot prove: the clients find the controller through slurm.conf (or SLURM_CONF), so on a machine whose
root is the adversary (a laptop), a fake controller and a fake `slurmstepd` can answer anything; the binding holds
on machines whose SLURM installation the organisation controls.

Kubernetes: the pod named by the downward API (POD_NAME; its namespace from the service account's own namespace
file) is read through the API server with the pod's service-account token, verified against the service-account CA.
It must be Running, carry the digest as the annotation `oracle.dev/submission-digest`, and be this pod: its uid must
appear in this process's cgroup path. On a machine that is not a pod there is no token, CA or namespace file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from oracle_base.errors import Refused

SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/usr/local/sbin", "/sbin")
DIGEST_FIELD = "digest="
POD_DIGEST_ANNOTATION = "oracle.dev/submission-digest"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_STEPD_TITLE = re.compile(r"^slurmstepd: \[(\d+)\.([A-Za-z0-9_]+)\]")
_TIMEOUT = 30


class JobIdentityError(Refused):
    """This process cannot be shown to run inside the job its record names; one line, with the fix."""


def comment_for(mark: str, digest: str) -> str:
    """The SLURM comment of a submitted job: the project's mark (the kill switch and duplicate check match its
    prefix) and the submission digest."""
    return f"{mark}:{DIGEST_FIELD}{digest}"


def digest_in_comment(comment: str) -> str | None:
    head, sep, digest = comment.strip().rpartition(f":{DIGEST_FIELD}")
    return digest if sep and head and re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _system_client(name: str) -> str:
    for folder in SYSTEM_BIN_DIRS:
        path = Path(folder) / name
        if path.is_file():
            real = path.resolve()
            info = real.stat()
            if info.st_uid != 0 or info.st_mode & 0o022:
                raise JobIdentityError(f"{real} is not root-owned or is writable by others: it cannot vouch for a job")
            return str(real)
    raise JobIdentityError(f"`{name}` is not installed in {', '.join(SYSTEM_BIN_DIRS[:3])}: this is not a SLURM node")


def _ask(args: list[str], environ: Mapping[str, str]) -> str:
    env = {"PATH": ":".join(SYSTEM_BIN_DIRS)}
    if environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = environ["SLURM_CONF"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobIdentityError(f"`{Path(args[0]).name}` did not answer ({exc})") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise JobIdentityError(f"`{Path(args[0]).name} {args[1]}` failed: {said[-1] if said else done.returncode}")
    return done.stdout


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _ancestry(pid: int) -> list[int]:
    chain, seen = [], set()
    current: int | None = pid
    while current and current not in seen:
        seen.add(current)
        chain.append(current)
        current = _parent(current)
    return chain


def _stepd_job(pid: int) -> str | None:
    """The job id when `pid` is a real slurmstepd (root-owned binary and process) titled for a step; else None."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
        process_uid = Path(f"/proc/{pid}").stat().st_uid
        binary = exe.stat()
    except OSError:
        return None
    match = _STEPD_TITLE.match(title)
    if match is None or not exe.name.startswith("slurmstepd") or process_uid != 0:
        return None
    if binary.st_uid != 0 or binary.st_mode & 0o022:
        return None
    return match.group(1)


PENDING_DIGEST = "0" * 64  # what the spec a record's spec_hash covers carries in place of the record's own digest


def _check_batch_script(job_id: str, digest: str, spec_hash: str, environ: Mapping[str, str]) -> None:
    """The job's batch script, as the controller stores it, must be the one the record was signed for: a job of
    one's own making that merely carries the digest in its comment (and runs anything) is not the submitted job.
    The record's spec_hash covers the script with PENDING_DIGEST where the digest goes (it is signed before its
    digest exists)."""
    script = _ask([_system_client("scontrol"), "write", "batch_script", job_id, "-"], environ)
    if hashlib.sha256(script.replace(digest, PENDING_DIGEST).encode()).hexdigest() != spec_hash:
        raise JobIdentityError(
            f"SLURM job {job_id}'s batch script is not the one this submission was signed for: only the job "
            "`oracle submit` started may use the record"
        )


def verify_slurm_job(
    job_id: str, digest: str, environ: Mapping[str, str], pid: int | None = None, *, spec_hash: str | None = None
) -> str:
    """A one-line description of the verified job; JobIdentityError when any check fails (the batch script's too,
    given the record's `spec_hash`)."""
    if not (job_id.isascii() and job_id.isdigit()):  # str.isdigit alone accepts other scripts' digits
        raise JobIdentityError(f"SLURM_JOB_ID={job_id!r} is not a job id")
    pid = os.getpid() if pid is None else pid
    try:
        answer = _ask(
            # %A: the job id, one for each element of a job array (%i would print an element as ARRAY_TASK)
            [_system_client("squeue"), "--noheader", "--jobs", job_id, "--states=all", "--format=%A|%T|%U|%k"],
            environ,
        )
    except JobIdentityError as exc:
        if "Invalid job id" not in str(exc):  # squeue's words for a job the controller does not hold
            raise
        answer = ""
    rows = [line.split("|", 3) for line in answer.splitlines() if line.split("|", 1)[0].strip() == job_id]
    if len(rows) != 1 or len(rows[0]) != 4:
        raise JobIdentityError(f"the SLURM controller does not know job {job_id}: the record must be used in its job")
    _, state, uid, comment = (part.strip() for part in rows[0])
    if state != "RUNNING":
        raise JobIdentityError(f"SLURM job {job_id} is {state}, not RUNNING: the record must be used inside it")
    if uid != str(os.getuid()):
        raise JobIdentityError(f"SLURM job {job_id} belongs to uid {uid}, not this process's uid {os.getuid()}")
    if digest_in_comment(comment) != digest:
        raise JobIdentityError(
            f"SLURM job {job_id} does not carry this submission's digest in its comment: it was not started by "
            "`oracle submit` for this record"
        )
    if spec_hash is not None:
        _check_batch_script(job_id, digest, spec_hash, environ)
    try:
        listed = _ask([_system_client("scontrol"), "listpids", job_id], environ)
    except JobIdentityError as exc:  # this node's slurmd holds no step of the job: we are not in it here
        raise JobIdentityError(
            f"this process ({pid}) is not one of SLURM job {job_id}'s processes on this node ({exc})"
        ) from exc
    job_pids = {int(line.split()[0]) for line in listed.splitlines()[1:] if line.split() and line.split()[0].isdigit()}
    chain = _ancestry(pid)
    if not job_pids.intersection(chain):
        raise JobIdentityError(f"this process ({pid}) is not one of SLURM job {job_id}'s processes on this node")
    steps = [found for found in map(_stepd_job, chain) if found is not None]
    if steps[:1] != [job_id]:
        raise JobIdentityError(f"this process ({pid}) does not descend from a slurmstepd of SLURM job {job_id}")
    return f"SLURM job {job_id}"


def _pod_uid_in_cgroup(uid: str) -> bool:
    try:
        cgroups = Path("/proc/self/cgroup").read_text()
    except OSError:
        return False
    return uid in cgroups or uid.replace("-", "_") in cgroups


def verify_k8s_pod(digest: str, environ: Mapping[str, str], account: Path = SERVICE_ACCOUNT_DIR) -> str:
    """A one-line description of the verified pod; JobIdentityError unless the API server shows the pod the downward
    API names, running, annotated with `digest`, and this process runs in it."""
    pod = environ.get("POD_NAME", "")
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not pod or not host:
        raise JobIdentityError("no POD_NAME (downward API) or KUBERNETES_SERVICE_HOST: not inside a submitted pod")
    try:
        token = (account / "token").read_text().strip()
        namespace = (account / "namespace").read_text().strip()
        context = ssl.create_default_context(cafile=str(account / "ca.crt"))
    except (OSError, ssl.SSLError) as exc:
        raise JobIdentityError(
            f"no service-account token, namespace or CA under {account} ({exc}): not inside a Kubernetes pod"
        ) from exc
    name = urllib.parse.quote(pod, safe="")
    url = f"https://{host}:{port}/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/pods/{name}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=_TIMEOUT) as response:
            document = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise JobIdentityError(f"the Kubernetes API did not confirm pod {namespace}/{pod}: {exc}") from exc
    metadata = document.get("metadata") or {}
    if (metadata.get("annotations") or {}).get(POD_DIGEST_ANNOTATION) != digest:
        raise JobIdentityError(
            f"pod {namespace}/{pod} does not carry this submission's digest ({POD_DIGEST_ANNOTATION})"
        )
    if (document.get("status") or {}).get("phase") != "Running":
        raise JobIdentityError(f"pod {namespace}/{pod} is not Running")
    uid = str(metadata.get("uid") or "")
    if not uid or not _pod_uid_in_cgroup(uid):
        raise JobIdentityError(f"this process does not run in pod {namespace}/{pod} (its uid is not in our cgroup)")
    return f"Kubernetes pod {namespace}/{pod}"
