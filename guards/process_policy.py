"""The process policy: what a gated process (`oracle train`, `oracle serve`, `oracle data run`, `oracle hub publish`,
`oracle export`) may reach at run time, enforced with Python audit hooks (PEP 578) installed before any third-party
import.

Static analysis misses things; these hooks are the layer behind it. In a gated process:
- **Network**: `socket.connect`/`sendto`/`sendmsg` reach only the addresses the command needs (the job's rendezvous
  and nodes, the Kubernetes API server for the job-identity check, the data endpoints named on the command line,
  the Hub endpoint only inside `oracle hub publish`), and name resolution (`getaddrinfo`, `gethostbyname`) only
  their host names. Anything else is refused, naming the host.
- **Weight files**: a file opened for reading whose bytes are weights (`policies.weight_formats`, the same content
  sniffing the gates use, not the name) must be one the command may read: the files of the checkpoint being served
  (its signed provenance verified them), the job's own run folder (checkpoints it writes and resumes), or the locked
  virtualenv and interpreter. `safetensors.safe_open`, which opens files in Rust where no audit event is raised, is
  wrapped to ask the same question.
- **Programs**: no package installer or downloader is started (`pip`, `uv`, `conda`, `curl`, `wget`, `git clone`,
  `huggingface-cli`, `hf`, ...), also not through a shell, `env` or `python -m pip`.
- **Unpickling**: nothing is unpickled with arbitrary globals. `TORCH_FORCE_WEIGHTS_ONLY_LOAD` makes every
  `torch.load` use torch's weights-only unpickler, even where the caller asks for `weights_only=False` (DeepSpeed
  does, for its own checkpoint files: `train` allows the two DeepSpeed classes they hold instead,
  `oracle.train.trainer.DEEPSPEED_SAFE_GLOBALS`); a load that still reaches another unpickler is refused, whatever
  the file (the venv, a checkpoint being served or exported: readable weights are not unpicklable).
The Hub clients' offline switches are set too (`OFFLINE_ENV`), but the hooks are what is relied on.

A refusal is one line on stderr, an entry in the audit log (gate `runtime`, naming the host, file or program and
the code that asked) and the end of the process with exit 1 (`os._exit`: model code cannot catch it and carry on).
The policy is configured in two steps: `install_for_argv` at start-up (before typer, torch or the model are
imported) with what the command line says, then the command adds what it learns once its own checks have run (the
recipe's run folder, the checkpoint whose provenance verified) and calls `seal()`; after that nothing can widen it.

Limits (docs/security.md, "Runtime layer"): audit hooks see only what goes through the interpreter. A native
extension that opens files or sockets itself (a Rust or C++ reader, NCCL, gloo, DNS inside libc) is not seen, and
code written to defeat the hooks in-process can (ctypes, rewriting this module's state). The Kubernetes
NetworkPolicy, read-only mounts and provenance checked on load are the layers that do not depend on the process.
"""

from __future__ import annotations

import _socket
import contextlib
import json
import os
import posix
import shlex
import socket
import stat
import sys
import threading
import zipimport
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oracle_base.errors import InternalError
from policies.bytecode import describe, stop_reading_bytecode
from policies.weight_formats import weights_kind_at

EXIT_REFUSED = 1
HUB_STAGING = (
    Path(".oracle") / "hub"
)  # where `oracle hub publish` stages what it sends (hub.stage.DEFAULT_OUT's parent)
GATE = "runtime"

# Set in every gated process but `oracle hub publish`; read by huggingface_hub, transformers and datasets at import.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_ENABLE_HF_TRANSFER": "0",  # the Rust transfer backend opens its own sockets
    "HF_HUB_DISABLE_XET": "1",  # so does the Xet storage backend
}

# Every torch.load uses the weights-only unpickler, even where the caller passes weights_only=False.
WEIGHTS_ONLY_ENV = {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}

# Programs a gated process never starts: package installers and downloaders.
DENIED_PROGRAMS = frozenset(
    {
        "pip", "pip3", "pipx", "uv", "uvx", "conda", "mamba", "micromamba", "easy_install", "poetry", "pdm",
        "curl", "wget", "aria2c", "axel", "huggingface-cli", "hf", "ollama", "kaggle", "git-lfs", "dvc",
        "aws", "gsutil", "gcloud", "azcopy", "rclone", "s5cmd", "scp", "sftp", "ftp", "modelscope",
    }
)  # fmt: skip
DENIED_PYTHON_MODULES = frozenset({"pip", "uv", "ensurepip", "conda", "huggingface_hub", "kagglehub", "modelscope"})
DENIED_GIT_COMMANDS = frozenset({"clone", "fetch", "pull", "lfs", "submodule", "ls-remote", "fetch-pack"})
_WRAPPERS = frozenset({"env", "sudo", "nohup", "exec", "time", "nice", "ionice", "stdbuf", "command", "xargs"})
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox"})
_SHELL_OPERATORS = frozenset({";", "&&", "||", "|", "&", "(", ")", "\n", "|&", ";;"})
_LOCAL_FAMILIES = frozenset(
    family for family in (getattr(socket, "AF_UNIX", None), getattr(socket, "AF_NETLINK", None)) if family is not None
)
_FRAMES = 64  # how far up the stack a refusal looks for the code that asked


class ProcessPolicyError(InternalError):
    """The policy cannot be set up or widened (installed twice, widened after `seal()`)."""


@dataclass
class ProcessPolicy:
    """What one gated process may reach. `hosts`: names or addresses reachable on any port; `endpoints`: (host,
    port) pairs; `read_roots`: folders whose weight files may be read; `read_files`: single files."""

    command: str
    root: Path  # where the audit log is (the working directory)
    hosts: set[str] = field(default_factory=set)
    endpoints: set[tuple[str, int]] = field(default_factory=set)
    read_roots: set[str] = field(default_factory=set)
    read_files: set[str] = field(default_factory=set)
    sealed: bool = False
    # resolved once per name: the addresses the hosts and endpoints stand for
    _addresses: set[str] = field(default_factory=set)
    _address_ports: set[tuple[str, int]] = field(default_factory=set)
    _names: set[str] = field(default_factory=set)

    def allow(
        self,
        *,
        hosts: Iterable[str] = (),
        endpoints: Iterable[tuple[str, int]] = (),
        read_roots: Iterable[Path | str] = (),
        read_files: Iterable[Path | str] = (),
    ) -> None:
        if self.sealed:
            raise ProcessPolicyError("the process policy is sealed: nothing can be allowed after start-up")
        for host in hosts:
            self._add_host(host, None)
        for host, port in endpoints:
            self._add_host(host, int(port))
        self.read_roots.update(os.path.realpath(path) for path in read_roots)
        self.read_files.update(os.path.realpath(path) for path in read_files)

    def seal(self) -> None:
        """No more `allow()`: called by the command once it knows everything it needs, before model code runs."""
        if self.sealed:
            return
        self.sealed = True
        if self is _policy:
            _wrap_torch()

    def _add_host(self, host: str, port: int | None) -> None:
        host = host.strip("[]").lower()
        if not host:
            return
        self._names.add(host)
        if port is None:
            self.hosts.add(host)
        else:
            self.endpoints.add((host, port))
        for address in _resolve(host):
            if port is None:
                self._addresses.add(address)
            else:
                self._address_ports.add((address, port))

    # --- the decisions ----------------------------------------------------------------------------------------------
    def name_allowed(self, host: str) -> bool:
        host = host.strip("[]").lower().rstrip(".")
        return host in self._names or _is_address(host) or host in ("localhost", _hostname)

    def address_known(self, address: str) -> bool:
        """An address one of the allowed names stands for (any port), or this machine's loopback."""
        address = _canonical_address(address)
        known = {item for item, _ in self._address_ports} | self._addresses
        return address in known or address in ("127.0.0.1", "::1")

    def address_allowed(self, address: str, port: int) -> bool:
        """`address` (an IP, or a name as given to connect) on `port` is one of the command's endpoints. A miss is
        checked again against the names resolved now: the addresses behind a CDN or an object store rotate."""
        if not _is_address(address.strip("[]")):
            name = address.strip("[]").lower().rstrip(".")
            return name in self.hosts or (name, port) in self.endpoints
        address = _canonical_address(address)
        if address in self._addresses or (address, port) in self._address_ports:
            return True
        _state.resolving = True  # resolving the allowed names: only those lookups are not judged again
        try:
            for host in self.hosts:
                self._addresses.update(_resolve(host))
            for host, allowed_port in self.endpoints:
                self._address_ports.update((item, allowed_port) for item in _resolve(host))
        finally:
            _state.resolving = False
        return address in self._addresses or (address, port) in self._address_ports

    def may_read_weights(self, real: str) -> bool:
        return real in self.read_files or any(_under(real, root) for root in self.read_roots)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _is_address(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


def _canonical_address(address: str) -> str:
    address = address.split("%", 1)[0].lower()
    if address.startswith("::ffff:") and _is_address(address[7:]):
        return address[7:]  # an IPv4 address in IPv6 form
    return address


def _resolve(host: str) -> set[str]:
    """The addresses `host` stands for now (a name that does not resolve contributes none)."""
    if _is_address(host):
        return {_canonical_address(host)}
    try:
        return {_canonical_address(str(info[4][0])) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


# --- programs ---------------------------------------------------------------------------------------------------------
_PYTHON_OPTIONS_WITH_VALUES = frozenset({"-X", "-W", "-Q", "--check-hash-based-pycs"})
# In a shell string: expansions that assemble a program name at run time, code from elsewhere, raw network paths.
_SHELL_INDIRECTIONS = ("$'", '$"', "${", "$(", "`", "<<<", "/dev/tcp/", "/dev/udp/")
_SHELL_WORDS = frozenset({"eval", "source", ".", "exec"})


def _program_name(word: str) -> str:
    return os.path.basename(word).lower()


def _denied_name(name: str) -> bool:
    return name in DENIED_PROGRAMS or name.startswith(("pip3.", "pip-", "git-remote-", "git-lfs", "git-fetch-pack"))


def denied_program(argv: Sequence[str] | str, depth: int = 0) -> str | None:
    """What about `argv` would start an installer or downloader, or None. Any word that names one counts, wherever
    a wrapper put it (`env -u X`, `nice -n 5`, `timeout -s KILL 5`, `setsid`, `flock`, `busybox`, `find -exec`,
    `xargs`): a deny-list by position would have to know every wrapper's options."""
    if isinstance(argv, str):
        return _denied_in_shell(argv, depth)
    words = [os.fsdecode(word) if isinstance(word, bytes) else str(word) for word in argv]
    for index, word in enumerate(words):
        if _denied_name(_program_name(word)):
            return " ".join(words[index : index + 3])
    for index, word in enumerate(words):
        name = _program_name(word)
        rest = words[index + 1 :]
        if name in _SHELLS and depth < 4:
            for argument in rest:  # the command string of -c (wherever the options put it), or a script
                if not argument.startswith("-") and (found := _denied_in_shell(argument, depth + 1)):
                    return found
            if not [argument for argument in rest if not argument.startswith("-")]:
                return f"{word} reading commands from its input"
        if name.startswith("python") or name in ("pypy", "pypy3"):
            found = _denied_python(word, rest)
            if found:
                return found
        if name == "git":
            for position, argument in enumerate(rest):
                if argument in DENIED_GIT_COMMANDS or argument.startswith(("alias.", "--upload-pack", "--exec=")):
                    return " ".join([word, *rest[: position + 1]])
                if argument == "archive" and any(item.startswith("--remote") for item in rest):
                    return f"{word} archive --remote"
    return None


def _denied_python(program: str, rest: list[str]) -> str | None:
    skip = False
    for position, word in enumerate(rest):
        if skip:
            skip = False
            continue
        if word in _PYTHON_OPTIONS_WITH_VALUES:
            skip = True
            continue
        module = (
            rest[position + 1] if word == "-m" and position + 1 < len(rest) else word[2:] if word[:2] == "-m" else ""
        )
        if module:
            return f"{program} -m {module}" if module.split(".", 1)[0] in DENIED_PYTHON_MODULES else None
        if word == "-c" or not word.startswith("-"):
            return None  # inline code or a script (child processes: docs/security.md, "The runtime layer's limits")
    return None


def _denied_in_shell(command: str, depth: int) -> str | None:
    for indirection in _SHELL_INDIRECTIONS:
        if indirection in command:
            return f"a shell command assembled at run time ({indirection!r} in {command[:80]!r})"
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        tokens = command.split()  # unbalanced quotes: judge the words as they stand
    if any(token in _SHELL_WORDS for token in tokens):
        return f"a shell command that runs code from elsewhere ({command[:80]!r})"
    simple: list[str] = []
    for token in [*tokens, ";"]:
        if token in _SHELL_OPERATORS or set(token) <= set(";&|()\n{}"):
            if simple and any(char in simple[0] for char in "*?[\\$"):
                return f"a program named by a pattern ({simple[0]!r})"
            found = denied_program(simple, depth + 1) if simple else None
            if found:
                return found
            simple = []
        elif not simple and token in ("if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "time"):
            continue  # shell reserved words before a command
        else:
            simple.append(token)
    return None


# --- the hook ---------------------------------------------------------------------------------------------------------
_state = threading.local()
_policy: ProcessPolicy | None = None
# (device, inode, size, mtime, ctime) -> format: ctime cannot be set back (os.utime sets mtime only), and any write
# changes it, so a file rewritten in place after it was judged is judged again
_sniffed: dict[tuple[int, int, int, int, int], str | None] = {}
_exit = posix._exit  # bound now: rebinding os._exit later does not turn a refusal into a log line
_real_family = _socket.socket.family.__get__  # the socket's own family, not a subclass's property
_hostname = socket.gethostname().lower()  # at start-up: socket.sethostname later does not widen the policy


def _busy() -> bool:
    return bool(getattr(_state, "busy", False))


def _caller() -> str:
    """file:line of the first frame that is not this module's, the standard library's or an installed package's
    wrapper around the call (the code that asked)."""
    here = __file__
    frame: Any = sys._getframe(1)
    fallback = ""
    stdlib = os.path.dirname(os.__file__)
    for _ in range(_FRAMES):
        if frame is None:
            break
        name = frame.f_code.co_filename
        if name != here:
            where = f"{name}:{frame.f_lineno}"
            fallback = fallback or where
            if not name.startswith(stdlib) and "site-packages" not in name and not name.startswith("<frozen"):
                return where
        frame = frame.f_back
    return fallback or "?"


def _refuse(what: str, details: dict[str, object]) -> None:
    """One line, one audit entry, exit 1. Runs with the hook switched off for this thread (the audit log's own
    files and the git call that names the commit are not judged)."""
    policy = _policy
    assert policy is not None
    _state.busy = True
    caller = _caller()
    line = f"oracle {policy.command}: RUN004 refused by the process policy: {what} (from {caller})\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "replace"))
    try:
        from guards.audit import append_entry

        append_entry(
            policy.root,
            gate=GATE,
            result="refused",
            commit=None,
            details={"command": policy.command, "rule": "RUN004", "reason": what, "caller": caller, **details},
        )
    except Exception as exc:  # the refusal stands; say that it could not be recorded
        os.write(2, f"oracle {policy.command}: the refusal could not be written to the audit log: {exc}\n".encode())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            _exit(EXIT_REFUSED)


def _on_open(args: tuple[Any, ...]) -> None:
    path, mode, flags = args[0], args[1], args[2]
    if isinstance(path, int):
        return  # an open file descriptor: judged when it was opened
    if mode is not None:
        if "r" not in mode and "+" not in mode:
            return  # write-only ("w", "a", "x"): nothing is read
    elif flags & os.O_ACCMODE == os.O_WRONLY:
        return
    _check_read(os.fsdecode(path))


def _kind(path: str) -> str | None:
    """The weights format of the regular file at `path` (None: not weights, not a regular file, or not there)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None  # the open itself fails
    if not stat.S_ISREG(info.st_mode):
        return None
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key in _sniffed:
        return _sniffed[key]
    _state.sniffing = path  # its own open of this path is not judged again; every other event still is
    try:
        kind = weights_kind_at(path, size=info.st_size)
    except OSError:
        kind = None  # unreadable here: the open itself fails
    finally:
        _state.sniffing = None
    _sniffed[key] = kind
    return kind


def _check_read(path: str) -> None:
    policy = _policy
    assert policy is not None
    if getattr(_state, "sniffing", None) == path:
        return
    kind = _kind(path)
    if kind is None:
        return
    real = os.path.realpath(path)
    if not policy.may_read_weights(real):
        _refuse(
            f"opening {real}: {kind} weights not covered by the signed provenance of what this process serves or "
            "resumes, nor written by it",
            {"file": real, "format": kind},
        )


def _exact_host(host: object) -> str | None:
    """A host name or address given as exactly str or bytes (a subclass could show the check one value and the
    socket another); None otherwise."""
    if type(host) is str:
        return host
    if type(host) is bytes:
        return os.fsdecode(host)
    return None


def _on_resolve(args: tuple[Any, ...]) -> None:
    if args[0] is None or getattr(_state, "resolving", False):
        return
    name = _exact_host(args[0])
    policy = _policy
    assert policy is not None
    if name is None or not policy.name_allowed(name):
        shown = name if name is not None else f"a {type(args[0]).__name__}"
        _refuse(f"resolving {shown}: not an endpoint this command may reach", {"host": shown})


def _on_reverse(args: tuple[Any, ...]) -> None:
    """gethostbyaddr (a name or an address) and getnameinfo (a socket address): DNS queries too."""
    target = args[0][0] if isinstance(args[0], tuple) and args[0] else args[0]
    name = _exact_host(target)
    policy = _policy
    assert policy is not None
    if name is None or not (policy.name_allowed(name) if not _is_address(name) else policy.address_known(name)):
        shown = name if name is not None else f"a {type(target).__name__}"
        _refuse(f"looking up {shown}: not an endpoint this command may reach", {"host": shown})


def _on_socket(args: tuple[Any, ...]) -> None:
    family, kind = args[1], args[2]
    if family == getattr(socket, "AF_PACKET", None) or (isinstance(kind, int) and kind & 0xF == socket.SOCK_RAW):
        _refuse("opening a raw or packet socket (no address the policy could judge)", {"family": int(family)})


def _on_connect(args: tuple[Any, ...]) -> None:
    sock, address = args[0], args[1]
    if address is None:
        return
    try:
        family = _real_family(sock)
    except TypeError:
        family = None
    if family in _LOCAL_FAMILIES:
        return
    policy = _policy
    assert policy is not None
    host = _exact_host(address[0]) if isinstance(address, tuple) and len(address) >= 2 else None
    port = address[1] if host is not None else None
    if host is None or type(port) is not int:
        _refuse(f"connecting to {address!r}: not an address the policy can judge", {"host": repr(address)})
        return
    if not policy.address_allowed(host, port):
        _refuse(f"connecting to {host}:{port}: not an endpoint this command may reach", {"host": host, "port": port})


def _on_move(args: tuple[Any, ...]) -> None:
    """os.link / os.rename / os.replace: a weights file the process may not read does not become one it may."""
    source = args[0]
    if isinstance(source, int) or source is None:
        return
    path = os.fsdecode(source)
    policy = _policy
    assert policy is not None
    kind = _kind(path)
    if kind is not None and not policy.may_read_weights(real := os.path.realpath(path)):
        _refuse(f"linking or moving {real}: {kind} weights this process may not read", {"file": real, "format": kind})


def _on_spawn(argv: Sequence[str] | str, program: object = None) -> None:
    found = denied_program(argv)
    if not found and isinstance(program, (str, bytes, os.PathLike)):
        # the file that really runs, whatever argv[0] says (a link named otherwise resolves to its target)
        given = os.fsdecode(program)
        real = os.path.realpath(given)
        if _denied_name(_program_name(real)) or _denied_name(_program_name(given)):
            found = real
    if found:
        _refuse(
            f"starting `{found}`: package installers and downloaders do not run in a gated process", {"program": found}
        )


def _on_find_class(args: tuple[Any, ...]) -> None:
    """An unpickler resolving a global inside torch.load: the layer behind the unpickling functions' own check
    (a plain pickle load is judged by the files it could read, when they were opened)."""
    source = _torch_load_source(start=2)
    if source is not _NO_TORCH_LOAD:
        _judge_unpickled_source(source, detail=f" (unpickling {args[0]}.{args[1]})")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    handler = _HANDLERS.get(event)
    if handler is None or _busy():
        return
    handler(args)


_HANDLERS: Mapping[str, Any] = {
    "open": _on_open,
    "socket.getaddrinfo": _on_resolve,
    "socket.gethostbyname": _on_resolve,
    "socket.gethostbyname_ex": _on_resolve,
    "socket.gethostbyaddr": _on_reverse,
    "socket.getnameinfo": _on_reverse,
    "socket.__new__": _on_socket,
    "socket.connect": _on_connect,
    "socket.sendto": _on_connect,
    "socket.sendmsg": _on_connect,
    "socket.sethostname": lambda args: _refuse("changing the host name", {"host": str(args[0])}),
    "subprocess.Popen": lambda args: _on_spawn(args[1] if args[1] is not None else [os.fsdecode(args[0])], args[0]),
    "os.system": lambda args: _on_spawn(os.fsdecode(args[0])),
    "os.exec": lambda args: _on_spawn(args[1], args[0]),
    "os.spawn": lambda args: _on_spawn(args[2], args[1]),
    "os.posix_spawn": lambda args: _on_spawn(args[1], args[0]),
    "os.link": _on_move,
    "os.rename": _on_move,
    "shutil.move": _on_move,
    "pickle.find_class": _on_find_class,
    # a subinterpreter starts without this process's audit hooks
    "cpython.PyInterpreterState_New": lambda args: _refuse(
        "starting a subinterpreter (it would run without the hooks)", {}
    ),
}


# --- installing -------------------------------------------------------------------------------------------------------
def current() -> ProcessPolicy | None:
    """The policy installed in this process, if any."""
    return _policy


def install(policy: ProcessPolicy, *, offline: bool = True) -> ProcessPolicy:
    """Install `policy` for the rest of the process (audit hooks cannot be removed). Once per process."""
    global _policy
    if _policy is not None:
        raise ProcessPolicyError("the process policy is already installed")
    if offline:
        os.environ.update(OFFLINE_ENV)
    os.environ.update(WEIGHTS_ONLY_ENV)  # read by torch.load at each call; the wrapper below is the enforcement
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    # the interpreter and the locked virtualenv: the venv check in the job vouches for their files
    policy.allow(read_roots=sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}))
    _policy = policy
    sys.addaudithook(_hook)
    _wrap_native_readers()
    return policy


def stop_reading_bytecode_or_refuse() -> None:
    """From here on this process and the interpreters it starts compile every module from its source
    (policies.bytecode), also not from a zip archive on the path (zipimport takes bytecode from an archive without
    its source); a forged cache that has already run is refused."""
    _state.busy = True  # the check reads the caches of what was imported before
    try:
        found = stop_reading_bytecode(os.environ)
    finally:
        _state.busy = False
    sys.path_hooks[:] = [hook for hook in sys.path_hooks if hook is not zipimport.zipimporter]
    sys.path_importer_cache.clear()
    for source, cache, why in found:
        _refuse(describe(source, cache, why), {"bytecode": cache})


def _wrap_native_readers() -> None:
    """Readers that open files where no audit event is raised ask the hook first: safetensors' `safe_open` (Rust),
    and `os.open` with `dir_fd` (the event names the path without the folder it is relative to)."""
    native_open = os.open

    def open_with_dir_fd(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and not os.path.isabs(os.fsdecode(path)):
            sys.audit("open", f"/proc/self/fd/{dir_fd}/{os.fsdecode(path)}", None, flags)
        return native_open(path, flags, mode, dir_fd=dir_fd)

    os.open = open_with_dir_fd
    posix.open = open_with_dir_fd
    try:
        import safetensors
        import safetensors._safetensors_rust as rust
    except ImportError:
        return
    native = rust.safe_open

    def safe_open(filename: Any, *args: Any, **kwargs: Any) -> Any:
        path = os.fspath(filename)  # evaluated once: the path judged is the path opened
        sys.audit("open", path, "rb", os.O_RDONLY)
        return native(path, *args, **kwargs)

    safetensors.safe_open = safe_open  # type: ignore[misc,assignment]
    rust.safe_open = safe_open


def _wrap_torch() -> None:
    """torch's readers that bypass Python's open (`torch.from_file`, `UntypedStorage.from_file`, `torch.jit.load`)
    ask the hook first, and `torch.load` unpickles only with torch's weights-only unpickler (the `pickle.find_class`
    check is the layer behind it). Called when the policy is sealed, torch being imported."""
    import functools

    torch: Any = sys.modules.get("torch")
    if torch is None:
        try:
            import torch as imported  # train and serve need it anyway
        except ImportError:
            return
        torch = imported

    def asking(reader: Any, argument: int = 0) -> Any:
        @functools.wraps(reader)
        def read(*args: Any, **kwargs: Any) -> Any:
            source = args[argument] if len(args) > argument else kwargs.get("filename", kwargs.get("f"))
            if isinstance(source, (str, bytes, os.PathLike)):
                sys.audit("open", os.fsdecode(source), "rb", os.O_RDONLY)
            elif source is not None and isinstance(getattr(source, "name", None), str):
                sys.audit("open", source.name, "rb", os.O_RDONLY)
            return reader(*args, **kwargs)

        return read

    torch.from_file = asking(torch.from_file)
    torch.UntypedStorage.from_file = staticmethod(asking(torch.UntypedStorage.from_file))
    if hasattr(torch, "jit"):
        torch.jit.load = asking(torch.jit.load)
    # torch.load unpickles in serialization._load / _legacy_load, with its weights-only unpickler when
    # weights_only=True and with `pickle_module` (any Unpickler, which need not raise `pickle.find_class`) otherwise:
    # the latter never runs
    serialization = torch.serialization
    safe = serialization._weights_only_unpickler
    for name in ("_load", "_legacy_load"):
        native = getattr(serialization, name)

        def unpickling(*args: Any, __native: Any = native, **kwargs: Any) -> Any:
            pickle_module = args[2] if len(args) > 2 else kwargs.get("pickle_module")
            if pickle_module is not safe:
                _judge_unpickled_source(_torch_load_source())
            return __native(*args, **kwargs)

        setattr(serialization, name, functools.wraps(native)(unpickling))


_NO_TORCH_LOAD = object()


def _torch_load_source(start: int = 2) -> Any:
    """The `f` torch.load was called with, from its frame; `_NO_TORCH_LOAD` when no torch.load frame is on the stack
    (the unpickling functions refuse that: a copy of torch.load, renamed, gives bytes from an unknown source)."""
    frame: Any = sys._getframe(start)
    for _ in range(_FRAMES):
        if frame is None:
            return _NO_TORCH_LOAD
        code = frame.f_code
        if code.co_name == "load" and code.co_filename.endswith(os.path.join("torch", "serialization.py")):
            return frame.f_locals.get("f")
        frame = frame.f_back
    return _NO_TORCH_LOAD


def _judge_unpickled_source(source: Any, detail: str = "") -> None:
    """torch.load of `source` reached an unpickler other than torch's weights-only one: refused, whatever the file
    (TORCH_FORCE_WEIGHTS_ONLY_LOAD was switched off, or the caller passed its own `pickle_module`)."""
    name = source if isinstance(source, (str, bytes, os.PathLike)) else getattr(source, "name", None)
    if source is _NO_TORCH_LOAD:
        _refuse(f"unpickling outside torch.load, without weights_only=True{detail}", {"file": "unknown"})
    if isinstance(name, (str, bytes, os.PathLike)):
        what = os.path.realpath(os.fsdecode(name))
    else:
        what = f"a {type(source).__name__}"
    _refuse(f"torch.load of {what} without weights_only=True{detail}", {"file": what})


GATED = {
    ("train",): "train",
    ("serve",): "serve",
    ("data", "run"): "data run",
    ("data", "stage"): "data stage",
    ("hub", "publish"): "hub publish",
    ("export",): "export",
}


def gated_command(argv: Sequence[str]) -> str | None:
    """The gated command `argv` (the words after `oracle`) runs, or None."""
    words = [word for word in argv if not word.startswith("-")][:2]
    for prefix, name in GATED.items():
        if tuple(words[: len(prefix)]) == prefix:
            return name
    return None


def _option(argv: Sequence[str], name: str) -> list[str]:
    values = []
    for index, word in enumerate(argv):
        if word == name and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif word.startswith(name + "="):
            values.append(word.split("=", 1)[1])
    return values


def _url_endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, the scheme's port when it names none; None when it names no host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def _plan_inputs(work: Path) -> list[str]:
    """The remote inputs of a data run's plan (oracle/data/pipeline.py, WORK/run.json); none when it cannot be
    read (the stage then refuses with its own message, and no endpoint is allowed)."""
    try:
        with open(work / "run.json", "rb") as handle:
            plan = json.loads(handle.read(16 * 2**20))
    except (OSError, ValueError):
        return []
    inputs = plan.get("inputs") if isinstance(plan, dict) else None
    return [item for item in inputs if isinstance(item, str)] if isinstance(inputs, list) else []


def _allow_data_inputs(policy: ProcessPolicy, inputs: Sequence[str], environ: Mapping[str, str]) -> None:
    """The endpoints the pipeline's remote inputs need: an https:// URL's host and port, an s3:// bucket's endpoint."""
    for item in inputs:
        if item.startswith(("https://", "http://")):
            policy.allow(endpoints=[found] if (found := _url_endpoint(item)) else [])
        elif item.startswith("s3://"):
            endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
            found = _url_endpoint(endpoint) if endpoint else None
            if found:
                policy.allow(endpoints=[found])
            else:
                bucket = item.removeprefix("s3://").split("/", 1)[0]
                region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
                policy.allow(
                    hosts=[
                        f"{bucket}.s3.amazonaws.com",
                        f"{bucket}.s3.{region}.amazonaws.com",
                        "s3.amazonaws.com",
                        f"s3.{region}.amazonaws.com",
                    ]
                )


def policy_for(command: str, argv: Sequence[str], environ: Mapping[str, str], root: Path) -> ProcessPolicy:
    """The start-up policy of `command`, from its command line and the environment the job spec sets."""
    policy = ProcessPolicy(command=command, root=root)
    if command == "train":
        # the rendezvous store (torchrun's MASTER_ADDR:MASTER_PORT; the collectives themselves are native) and the
        # Kubernetes API server the job-identity check asks
        master, port = environ.get("MASTER_ADDR"), environ.get("MASTER_PORT", "")
        if master and port.isdigit():
            policy.allow(endpoints=[(master, int(port))])
        api = environ.get("KUBERNETES_SERVICE_HOST")
        if api:
            policy.allow(endpoints=[(api, int(environ.get("KUBERNETES_SERVICE_PORT", "443") or 443))])
    elif command in ("data run", "data stage"):
        inputs = _option(argv, "--input")
        if command == "data stage":  # the stages after init read the inputs the plan names
            inputs += [item for work in _option(argv, "--work") for item in _plan_inputs(Path(work))]
        _allow_data_inputs(policy, inputs, environ)
    elif command == "hub publish":
        endpoint = (_option(argv, "--endpoint") or [environ.get("HF_ENDPOINT", "https://huggingface.co")])[-1]
        policy.allow(endpoints=[found] if (found := _url_endpoint(endpoint)) else [])
        # the checkpoint, or the folder `oracle hub build` staged, and the private folder publish copies them into
        # (hub.stage: .oracle/hub/ of the working directory): publish verifies their provenance before sending a byte
        staging = root / HUB_STAGING
        policy.allow(read_roots=[*_option(argv, "--checkpoint"), *_option(argv, "--staged"), staging])
    elif command == "export":
        # the checkpoint (its provenance is verified before a tensor is read) and the folder written, with the partial
        # sibling it is written into (hub.export.partial_dir), whose shards are hashed for the record
        outs = [Path(out) for out in _option(argv, "--out")]
        policy.allow(
            read_roots=[*_option(argv, "--checkpoint"), *outs, *(o.parent / f".{o.name}.partial" for o in outs)]
        )
    return policy


def install_for_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ProcessPolicy | None:
    """Install the policy of the gated command `argv` runs (nothing for other commands, or for `--help`)."""
    command = gated_command(argv)
    if command is None:
        return None  # `--help` anywhere is no exemption: click may take it as an option's value and run the command
    env = os.environ if environ is None else environ
    policy = policy_for(command, argv, env, Path.cwd())
    install(policy, offline=command != "hub publish")
    stop_reading_bytecode_or_refuse()  # what these commands produce leaves the machine or answers users
    if command not in ("train", "serve"):
        policy.seal()  # the command line says all these commands reach; train and serve seal after their checks
    return policy


@contextlib.contextmanager
def unsealed_reads() -> Iterator[None]:
    """Reads this thread makes inside the block are not judged: for the command's own checks before it seals the
    policy (hashing the weights whose provenance it verifies). Refused once the policy is sealed."""
    policy = _policy
    if policy is None:
        yield
        return
    if policy.sealed:
        raise ProcessPolicyError("the process policy is sealed: its checks cannot be suspended")
    _state.busy = True
    try:
        yield
    finally:
        _state.busy = False


def allow_and_seal(**allowed: Any) -> None:
    """Add what the command learnt from its own checks and seal the policy (no-op when none is installed)."""
    policy = _policy
    if policy is None:
        return
    policy.allow(**allowed)
    policy.seal()
