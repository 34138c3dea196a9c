"""`oracle serve` as a process: refusing weights whose provenance does not verify, a full queue answered with 429,
graceful shutdown, and the load test (32 concurrent streaming clients x 10 requests, zero errors)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from guards.keys import generate_keypair, load_signing_key
from guards.provenance import write_provenance
from oracle.serve import API_KEY_ENV
from oracle_base.weight_files import PARTITIONS_FILE, part_file
from tests.serve.fixtures import (
    RunningServer,
    ServedCheckpoint,
    flip_last_byte,
    metric_value,
    serve_command,
    serve_env,
    start_server,
)

MODEL = "oracle-mini"


def serve_once(
    served: ServedCheckpoint, checkpoint: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `oracle serve` expecting it to exit by itself (a refusal or a failed load)."""
    return subprocess.run(
        serve_command(served, checkpoint, *extra),
        cwd=served.root,
        env=serve_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


SIGNED = [PARTITIONS_FILE, part_file(0, 2), part_file(1, 2), "config.json", "tokenizer.json"]


def copy_checkpoint(served: ServedCheckpoint, target: Path) -> Path:
    return Path(shutil.copytree(served.checkpoint, target))


def unsigned(served: ServedCheckpoint, tmp_path: Path) -> Path:
    checkpoint = copy_checkpoint(served, tmp_path / "unsigned")
    write_provenance(checkpoint, SIGNED, {"run": "x"}, None)
    return checkpoint


def foreign_key(served: ServedCheckpoint, tmp_path: Path) -> Path:
    checkpoint = copy_checkpoint(served, tmp_path / "foreign")
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")  # not in the trust root
    key = load_signing_key({"ORACLE_SIGNING_KEY": str(tmp_path / "other.pem")})
    write_provenance(checkpoint, SIGNED, {"run": "x"}, key)
    return checkpoint


def altered_weights(served: ServedCheckpoint, tmp_path: Path) -> Path:
    checkpoint = copy_checkpoint(served, tmp_path / "altered")
    flip_last_byte(checkpoint / part_file(0, 2))  # rank 0's part of the weights
    return checkpoint


def altered_config(served: ServedCheckpoint, tmp_path: Path) -> Path:
    checkpoint = copy_checkpoint(served, tmp_path / "config")
    config = json.loads((checkpoint / "config.json").read_text())
    config["rope_theta"] = 500000.0  # same shapes, another model
    (checkpoint / "config.json").write_text(json.dumps(config))
    return checkpoint


def no_record(served: ServedCheckpoint, tmp_path: Path) -> Path:
    checkpoint = copy_checkpoint(served, tmp_path / "bare")
    (checkpoint / "provenance.json").unlink()
    return checkpoint


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (unsigned, "is unsigned"),
        (foreign_key, "which is not a provenance key of the trust root"),
        (altered_weights, "model-rank-00000-of-00002.safetensors is missing or its sha256 differs"),
        (altered_config, "config.json is missing or its sha256 differs"),
        (no_record, "provenance.json is missing"),
    ],
)
def test_weights_without_verifying_provenance_are_refused_before_listening(
    served: ServedCheckpoint, tmp_path: Path, make: object, reason: str
) -> None:
    checkpoint = make(served, tmp_path)  # type: ignore[operator]
    result = serve_once(served, checkpoint)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: RUN002 serving refused:")
    assert reason in lines[0]
    assert "Uvicorn running" not in result.stdout + result.stderr
    entry = json.loads((served.root / ".oracle" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["gate"] == "serve"
    assert entry["result"] == "refused"
    assert reason in entry["details"]["reason"]


def test_a_run_folder_serves_its_newest_complete_checkpoint(served: ServedCheckpoint, tmp_path: Path) -> None:
    run = served.checkpoint.parent
    server = start_server(served, tmp_path / "run.log", checkpoint=run)
    try:
        assert httpx.get(f"{server.url}/ready", timeout=30).json()["status"] == "ready"
    finally:
        server.stop()
    assert str(served.checkpoint) in server.output()
    entry = json.loads((served.root / ".oracle" / "audit.jsonl").read_text().splitlines()[-1])
    assert entry["gate"] == "serve"
    assert entry["result"] == "allowed"
    assert entry["details"]["step"] == 1


def test_a_model_that_fails_to_load_stops_the_server_with_exit_2(served: ServedCheckpoint) -> None:
    result = serve_once(served, served.checkpoint, "--device", "cuda:99")  # no such device: the load fails
    assert result.returncode == 2, result.stderr
    assert "Uvicorn running" in result.stderr  # it was up (liveness) while loading
    assert result.stderr.splitlines()[-1].startswith(f"error: loading {served.checkpoint} failed:")


def test_a_full_queue_answers_429_with_retry_after(served: ServedCheckpoint, tmp_path: Path) -> None:
    server = start_server(served, tmp_path / "busy.log", "--max-concurrency", "1", "--max-queue", "0")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        long = {"model": MODEL, "prompt": "Numbers", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=long, timeout=120) as busy:
            lines = busy.iter_lines()  # kept: a dropped iterator closes the stream, and the server cancels it
            assert next(lines).startswith("data: ")  # the slot is taken once the first token has come
            refused = httpx.post(f"{server.url}/v1/completions", json={**long, "stream": False}, timeout=30)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model=MODEL, prompt="x", max_tokens=1)
        # closing the stream cancels its request; the SDK's own retries (honouring Retry-After) then get the slot
        patient = client.with_options(max_retries=5)
        assert patient.completions.create(model=MODEL, prompt="x", max_tokens=1).usage is not None
        refusals = metric_value(server.url, "oracle_serve_requests_total", endpoint="/v1/completions", status="429")
        assert refusals is not None
        assert 2 <= refusals <= 7  # the two above, and the retries that came before the slot was free
        assert metric_value(server.url, "oracle_serve_requests_total", endpoint="/v1/completions", status="200") == 2
        # the stream closed midway counts as a 200 (its headers went out first), but its generation as cancelled
        assert metric_value(server.url, "oracle_serve_generations_total", outcome="cancelled") == 1
    finally:
        server.stop()


def test_an_api_key_guards_the_v1_routes_and_leaves_the_probes_open(served: ServedCheckpoint, tmp_path: Path) -> None:
    key = "sk-oracle-test-" + "k" * 24
    server = start_server(served, tmp_path / "auth.log", env={API_KEY_ENV: key})
    body = {"model": MODEL, "prompt": "Numbers", "max_tokens": 2}
    try:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": key}):  # the last lacks Bearer
            refused = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=30)
            assert refused.status_code == 401, refused.text
            assert refused.headers["www-authenticate"] == "Bearer"
            error = refused.json()["error"]
            assert error["code"] == "invalid_api_key"
            assert error["type"] == "invalid_request_error"
            assert key not in refused.text
        for path in ("/v1/models", "/openapi.json", "/v2/anything"):  # deny by default: only the probes are open
            assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 401
        lower = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"bearer {key}"}, timeout=30)
        assert lower.status_code == 200  # the scheme is case-insensitive
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)
        assert [model.id for model in client.models.list()] == [MODEL]
        reply = client.completions.create(**body)
        assert reply.usage is not None
        assert reply.usage.completion_tokens >= 1
        for path in ("/health", "/ready", "/metrics"):  # probes and scrapers need no key
            assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200
        assert metric_value(server.url, "oracle_serve_requests_total", endpoint="/v1/completions", status="401") == 3
        assert metric_value(server.url, "oracle_serve_requests_total", endpoint="/v1/completions", status="200") == 1
    finally:
        server.stop()
    assert key not in server.output()
    assert f"require the API key from {API_KEY_ENV}" in server.output()


@pytest.mark.parametrize(
    ("value", "why"),
    [("  ", "is set but empty"), ("clé-secrète", "holds characters an Authorization header cannot carry")],
)
def test_an_api_key_that_cannot_work_is_refused_before_listening(
    served: ServedCheckpoint, value: str, why: str
) -> None:
    result = serve_once(served, served.checkpoint, env={API_KEY_ENV: value})
    assert result.returncode == 2, result.stderr  # a setting to fix (as a file that fails to load), not a refusal
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {API_KEY_ENV} {why}")
    assert value.strip() not in line or not value.strip()  # the value itself is never shown
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_sigterm_lets_the_stream_in_flight_finish(served: ServedCheckpoint, tmp_path: Path) -> None:
    server = start_server(served, tmp_path / "shutdown.log", "--shutdown-timeout", "60")
    body = {"model": MODEL, "prompt": "Numbers", "max_tokens": 300, "ignore_eos": True, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
        iterator = response.iter_lines()
        lines.append(next(iterator))
        server.process.send_signal(signal.SIGTERM)
        lines.extend(iterator)
    code = server.process.wait(60)
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-2].removeprefix("data: "))
    assert final["choices"][0]["finish_reason"] == "length"  # all 300 tokens, though the signal came after one
    assert code in (0, -signal.SIGTERM), server.output()  # uvicorn re-raises the signal once drained
    assert "Waiting for connections to close" in server.output()  # it did wait for the stream
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=5)


def test_load_32_concurrent_streaming_clients_x_10_requests_without_an_error(
    server: RunningServer,
) -> None:
    clients, per_client = 32, 10
    errors: list[str] = []
    finished: list[tuple[str, int]] = []
    max_running = 0
    stop_polling = threading.Event()

    def poll_running() -> None:  # the engine really batches: several requests share the decode steps
        nonlocal max_running
        while not stop_polling.is_set():
            max_running = max(max_running, int(metric_value(server.url, "oracle_serve_running_requests") or 0))
            stop_polling.wait(0.05)

    async def one_client(index: int, client: openai.AsyncOpenAI) -> None:
        for request in range(per_client):
            try:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"client {index} request {request}"}],
                    max_tokens=12,
                    temperature=0.8,
                    seed=index * 100 + request,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                reason, usage = None, None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        reason = chunk.choices[0].finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
                assert reason in {"stop", "length"}
                assert usage is not None
                assert 1 <= usage.completion_tokens <= 12
                finished.append((reason, usage.completion_tokens))
            except Exception as exc:  # every kind of failure counts as an error of the load test
                errors.append(f"client {index} request {request}: {type(exc).__name__}: {exc}")

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        async with client:
            await asyncio.gather(*(one_client(i, client) for i in range(clients)))

    ok_before = _ok_chat(server)
    poller = threading.Thread(target=poll_running)
    poller.start()
    try:
        asyncio.run(main())
    finally:
        stop_polling.set()
        poller.join()
    assert errors == []
    assert len(finished) == clients * per_client
    assert _ok_chat(server) - ok_before == clients * per_client
    assert max_running > 1


def _ok_chat(server: RunningServer) -> float:
    return metric_value(server.url, "oracle_serve_requests_total", endpoint="/v1/chat/completions", status="200") or 0.0
