"""A real one-node SLURM cluster (Debian's Slurm 22.05 and munge) for tests, with all state in one directory.

The daemons (munged, slurmctld, slurmd) run in the foreground as children of this process, so `SlurmCluster.stop`
can end them and nothing outlives the test session. Clients find the cluster through `SlurmCluster.env`
(``SLURM_CONF``). Needs root: slurmd starts jobs as the submitting user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("sbatch", "squeue", "scancel", "sacct", "sinfo", "slurmctld", "slurmd", "munged")
DAEMONS = ("munged", "slurmctld", "slurmscriptd", "slurmd", "slurmstepd")
DEFAULT_PARTITION = "gpu"
PARTITIONS = ("gpu", "debug")
# Job states after which a job never changes again (squeue %T / sacct State spellings).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)
# AF_UNIX paths are limited to 107 bytes; slurmd puts `<node>_<job>.<step>` sockets in its spool directory.
_MAX_SOCKET_DIR = 70


class SlurmError(RuntimeError):
    """The cluster could not be installed, started or queried."""


def _which(name: str) -> str | None:
    """The program's path; daemons live in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _missing_binaries() -> list[str]:
    return [name for name in BINARIES if _which(name) is None]


def ensure_installed(timeout: float = 600.0) -> None:
    """Install Debian's slurmctld, slurmd, slurm-client and munge with apt when any of their programs is missing.

    Runs ``apt-get install`` first and ``apt-get update`` plus a second install only when the first fails (a fresh
    machine has no package lists). Raises `SlurmError` with apt's last lines when that fails.
    """
    if not _missing_binaries():
        return
    if os.geteuid() != 0:
        raise SlurmError(f"SLURM is not installed ({', '.join(_missing_binaries())} missing) and installing needs root")
    if shutil.which("apt-get") is None:
        raise SlurmError("SLURM is not installed and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        update = subprocess.run(
            ["apt-get", "update"], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if update.returncode != 0:
            raise SlurmError(f"apt-get update failed ({update.returncode}):\n{_tail(update.stdout + update.stderr)}")
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise SlurmError(f"apt-get install failed ({result.returncode}):\n{_tail(result.stdout + result.stderr)}")
    if missing := _missing_binaries():
        raise SlurmError(f"apt-get installed {', '.join(PACKAGES)} but {', '.join(missing)} is still missing")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(_free_port())
    return sorted(ports)


def _read_tail(path: Path, lines: int = 20) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


class SlurmCluster:
    """One slurmctld and one slurmd on this host, with munge, configured and kept under ``root``.

    Layout of ``root``: ``slurm.conf``, ``munge/`` (key, socket, pid, seed), ``state/`` (StateSaveLocation),
    ``spool/`` (SlurmdSpoolDir), ``log/`` (``slurmctld.log``, ``slurmd.log`` and each daemon's stdout and stderr as
    ``<name>.out``; munged in the foreground logs to stderr only), ``jobcomp.txt`` (JobCompLoc).
    """

    def __init__(
        self,
        root: Path,
        cluster_name: str = "oracle",
        start_timeout: float = 30.0,
        extra_conf: Mapping[str, object] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.cluster_name = cluster_name
        self.extra_conf = dict(extra_conf or {})
        self.start_timeout = start_timeout
        self.hostname = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.state_dir = self.root / "state"
        self.spool_dir = self.root / "spool"
        self.log_dir = self.root / "log"
        self.jobcomp = self.root / "jobcomp.txt"
        self.ctld_port, self.slurmd_port = 0, 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- life cycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether any daemon started by this object is still alive."""
        return any(proc.poll() is None for proc in self._procs.values())

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the daemons this object started, by program name."""
        return {name: proc.pid for name, proc in self._procs.items()}

    @property
    def env(self) -> dict[str, str]:
        """Variables that point SLURM clients at this cluster; merge them into ``os.environ``."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        """Write the config, start munged, slurmctld and slurmd, and wait until the node is idle."""
        if self.running:
            raise SlurmError("cluster already running")
        if os.geteuid() != 0:
            raise SlurmError("a SLURM test cluster needs root (slurmd runs jobs as their user)")
        if len(str(self.spool_dir)) > _MAX_SOCKET_DIR:
            raise SlurmError(f"{self.root} is too long a path for the daemons' unix sockets; use a shorter one")
        if missing := _missing_binaries():
            raise SlurmError(f"SLURM is not installed: {', '.join(missing)} missing (see ensure_installed)")
        for path in (self.root, self.munge_dir, self.state_dir, self.spool_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        # munged refuses a socket directory that others cannot enter; the key itself stays private.
        self.munge_dir.chmod(0o755)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.ctld_port, self.slurmd_port = _free_ports(2)
        self.conf.write_text(self.render_conf())
        try:
            self._start_munged()
            self._spawn("slurmctld", [self._bin("slurmctld"), "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [self._bin("slurmd"), "-D", "-f", str(self.conf)])
            self._wait_idle()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job, then end slurmd, slurmctld and munged (SIGTERM, then SIGKILL after ``timeout``)."""
        if self._procs.get("slurmctld") is not None and self._procs["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
                if jobs:
                    self.run("scancel", "--full", "--quiet", *jobs, check=False)
                self._wait_no_jobs(timeout)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _terminate(proc, timeout)
        self._kill_strays(timeout)

    # -- clients ------------------------------------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client (``sbatch``, ``squeue``, ...) against this cluster; raise `SlurmError` on failure."""
        result = subprocess.run(
            list(args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable``; return the job id."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str | None:
        """The job's state: from squeue while slurmctld holds the job (MinJobAge), else from ``sacct -c``.

        ``sacct`` reads the jobcomp/filetxt file (JobCompLoc); there is no slurmdbd. None when neither knows the job.
        """
        result = self.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T", check=False)
        if result.returncode == 0 and (state := result.stdout.strip()):
            return state.split()[0]
        result = self.run("sacct", "-c", "-n", "-P", "-j", job_id, "-o", "State", check=False)
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        # `CANCELLED by 0` -> CANCELLED
        return lines[-1].split()[0] if lines else None

    def wait_for_state(self, job_id: str, states: set[str] | frozenset[str], timeout: float = 30.0) -> str:
        """Poll until the job is in one of ``states`` (or any final state) and return that state."""
        deadline = time.monotonic() + timeout
        state: str | None = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state is not None and (state in states or state in FINAL_STATES):
                return state
            time.sleep(0.1)
        raise SlurmError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s (last state {state})")

    def logs(self, lines: int = 20) -> str:
        """The last lines of each daemon's log, for error messages."""
        paths = sorted(path for path in self.log_dir.iterdir() if path.stat().st_size)
        return "\n".join(f"--- {path.name}\n{_read_tail(path, lines)}" for path in paths)

    # -- internals ----------------------------------------------------------------------------------------------

    def render_conf(self) -> str:
        """The slurm.conf text for this cluster."""
        node = subprocess.run(
            [self._bin("slurmd"), "-C"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        settings: dict[str, object] = {
            "ClusterName": self.cluster_name,
            "SlurmctldHost": f"{self.hostname}(127.0.0.1)",
            "SlurmctldPort": self.ctld_port,
            "SlurmdPort": self.slurmd_port,
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "CredType": "cred/munge",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": self.state_dir,
            "SlurmdSpoolDir": self.spool_dir,
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.log_dir / "slurmctld.log",
            "SlurmdLogFile": self.log_dir / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SwitchType": "switch/none",
            "MpiDefault": "none",
            "SchedulerType": "sched/backfill",
            # Without this a batch job waits up to 3 s (batch_sched_delay) for the periodic scheduler pass.
            "SchedulerParameters": "batch_sched_delay=0",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "ReturnToService": 2,
            "SlurmdParameters": "config_overrides",
            "MailProg": "/bin/true",
            "JobCompType": "jobcomp/filetxt",
            "JobCompLoc": self.jobcomp,
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "KillWait": 5,
            "MinJobAge": 300,
        }
        settings.update(self.extra_conf)
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(f"{node} NodeAddr=127.0.0.1 State=UNKNOWN")
        nodename = node.split()[0].removeprefix("NodeName=")
        for partition in PARTITIONS:
            default = "YES" if partition == DEFAULT_PARTITION else "NO"
            lines.append(f"PartitionName={partition} Nodes={nodename} Default={default} MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _bin(name: str) -> str:
        path = _which(name)
        if path is None:
            raise SlurmError(f"{name} not found (see ensure_installed)")
        return path

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = (self.log_dir / f"{name}.out").open("ab")
        try:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        finally:
            out.close()

    def _start_munged(self) -> None:
        d = self.munge_dir
        self._spawn(
            "munged",
            [
                self._bin("munged"),
                "--foreground",
                # Without --force munged refuses a socket whose parent directories others cannot enter (pytest's
                # temp directories are 0700); with it, it only warns.
                "--force",
                f"--key-file={d / 'munge.key'}",
                f"--socket={self.munge_socket}",
                f"--pid-file={d / 'munged.pid'}",
                f"--log-file={self.log_dir / 'munged.log'}",
                f"--seed-file={d / 'munged.seed'}",
            ],
        )
        deadline = time.monotonic() + self.start_timeout
        while not self.munge_socket.exists():
            if self._procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmError(f"munged did not start:\n{_read_tail(self.log_dir / 'munged.out')}")
            time.sleep(0.02)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited with {proc.returncode} during start-up:\n{self.logs()}")
            result = self.run("sinfo", "-h", "-o", "%T", check=False)
            state = result.stdout.strip() or result.stderr.strip()
            if result.returncode == 0 and state and all(s == "idle" for s in state.split()):
                return
            time.sleep(0.1)
        raise SlurmError(f"node not idle after {self.start_timeout:.0f} s (sinfo: {state!r}):\n{self.logs()}")

    def _wait_no_jobs(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.run("squeue", "-h", "-o", "%i %T", check=False)
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.1)

    def _kill_strays(self, timeout: float) -> None:
        """SIGKILL what `stray_pids` finds: step daemons and job processes that outlived their daemons."""
        for pid in self.stray_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.stray_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stray_pids(self) -> list[int]:
        """Live (not zombie) processes of this cluster: its daemons and step daemons, and its jobs' processes.

        Both are recognised by ``SLURM_CONF=<our slurm.conf>`` in their environment; job processes also carry
        ``SLURM_JOB_ID``.
        """
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError, IndexError):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
                if marker not in environ:
                    continue
                is_job = any(var.startswith(b"SLURM_JOB_ID=") for var in environ)
                if is_job or (entry / "comm").read_text().strip() in DAEMONS:
                    pids.append(int(entry.name))
        return pids


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
