"""The OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions (JSON or server-sent events),
and /health, /ready, /metrics for the platform around it.

The model loads in a background thread once the server is up, so /health answers (a liveness probe passes) while
/ready and the API say 503 until it is loaded. Errors use the OpenAI shape `{"error": {message, type, param,
code}}`. On shutdown uvicorn stops accepting connections and waits for the requests in flight (streams included);
then the engine finishes what is left and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oracle.serve.engine import (
    Delta,
    EngineStoppedError,
    Event,
    Failed,
    Finished,
    QueueFullError,
    RequestHandle,
    SamplingParams,
)
from oracle.serve.loading import ServedModel
from oracle.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, SamplingRequest
from oracle.tokenization.chat_template import ChatTemplateError, render_chat

log = logging.getLogger("oracle.serve")

ENDPOINTS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/ready", "/metrics"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RETRY_AFTER_S = "1"
OUTCOMES = ("stop", "length", "failed", "cancelled")
DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there


class ModelSlot:
    """The model once loaded (or why it failed), shared by the loader thread and the handlers."""

    def __init__(self) -> None:
        self.model: ServedModel | None = None
        self.error: str | None = None

    def require(self) -> ServedModel:
        if self.model is None:
            status = "failed to load" if self.error else "is still loading"
            raise APIError(
                503, f"the model {status}", kind="server_error", code="model_not_ready",
                headers={"Retry-After": RETRY_AFTER_S},
            )  # fmt: skip
        return self.model


class Metrics:
    def __init__(self, slot: ModelSlot) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "oracle_serve_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "oracle_serve_request_duration_seconds", "Time from request to the last byte of the response",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.outcomes = Counter(
            "oracle_serve_generations", "Generation requests by how they ended: stop, length, failed (the model or "
            "sampler raised), cancelled (the client went away first)", ["outcome"], registry=self.registry,
        )  # fmt: skip
        for outcome in OUTCOMES:  # every series exists from the start, so rate() and alerts have one to read
            self.outcomes.labels(outcome)
        self.first_token = Histogram(
            "oracle_serve_time_to_first_token_seconds", "Time from request to the first generated text",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_EngineCollector(slot))


class _EngineCollector(Collector):
    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        model = self.slot.model
        engine = model.engine if model else None
        yield GaugeMetricFamily("oracle_serve_model_loaded", "1 once the model is loaded", value=int(bool(model)))
        yield GaugeMetricFamily(
            "oracle_serve_queue_depth", "Requests waiting for a slot", value=engine.queue_depth if engine else 0
        )
        yield GaugeMetricFamily(
            "oracle_serve_running_requests", "Requests being generated", value=engine.running if engine else 0
        )
        yield CounterMetricFamily(
            "oracle_serve_generated_tokens", "Tokens generated", value=engine.stats.generated_tokens if engine else 0
        )
        yield CounterMetricFamily(
            "oracle_serve_prompt_tokens", "Prompt tokens prefilled", value=engine.stats.prompt_tokens if engine else 0
        )


class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status, and times it to the end of its body (streams included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})  # probes and scrapers: no key, whatever the settings


class APIKeyMiddleware:
    """With an API key set, every request but the probes' and the scraper's must carry `Authorization: Bearer <key>`
    (as the OpenAI API and vLLM's --api-key): deny by default, so a route added later is never open by accident.
    The scheme is case-insensitive (RFC 9110); the key is compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            scheme, _, token = given.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.expected):
                what = "no API key was given" if not given else "the API key given is not this server's"
                error = APIError(
                    401, f"{what}; send it as `Authorization: Bearer <key>` (the openai SDK's api_key)",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
                await _error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _field_name(loc: tuple[Any, ...]) -> str:
    """The field path a validation error is about. pydantic also names the union member it tried (`str`,
    `list[int]`, `function-after[...]`); those are not fields."""
    parts = [str(part) for part in loc[1:] if part != "body"] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(p for p in parts if p not in _UNION_TAGS and "[" not in p)


def create_app(
    load: Callable[[], ServedModel],
    *,
    on_load_failure: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The API around a model that `load` returns (called once, in a thread, after the server starts); with
    `api_key`, every route but /health, /ready and /metrics requires it."""
    if api_key is not None and not api_key.strip():
        raise ValueError("the API key is empty; give a key or none")
    slot = ModelSlot()
    metrics = Metrics(slot)

    def load_in_background() -> None:
        try:
            slot.model = load()
        except Exception as exc:  # the server stays up to say so on /ready, and the CLI exits non-zero
            slot.error = str(exc) or type(exc).__name__
            log.error("loading failed: %s", exc)
            if on_load_failure is not None:
                on_load_failure(str(exc))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=load_in_background, name="oracle-load", daemon=True)
        loader.start()
        yield
        # Not joined: a load still running when the server is told to stop must not hold up the exit (the thread
        # is a daemon). A loaded engine finishes what is left, then stops.
        if slot.model is not None:
            await asyncio.to_thread(slot.model.engine.stop, 60.0)

    app = FastAPI(title="Oracle", lifespan=lifespan, docs_url=None, redoc_url=None)
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # the outermost: refused requests are counted too

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error_response(APIError(400, f"the request body is not valid JSON: {first.get('msg')}"))
        field = _field_name(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return _error_response(APIError(400, message, param=field or None, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        error = APIError(500, f"internal error: {type(exc).__name__}", kind="server_error", code="internal_error")
        return _error_response(error)

    @app.get("/health")
    async def health() -> JSONResponse:
        if slot.model is not None and not slot.model.engine.alive:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if slot.model is None:
            state = "failed" if slot.error else "loading"
            return JSONResponse({"status": state, "error": slot.error}, status_code=503)
        if not slot.model.engine.alive:
            return JSONResponse({"status": "engine stopped", "error": None}, status_code=503)
        return JSONResponse({"status": "ready", "model": slot.model.name})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(served: ServedModel) -> dict[str, Any]:
        return {"id": served.name, "object": "model", "created": _CREATED, "owned_by": "oracle"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(slot.require())]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        served = slot.require()
        if model_id != served.name:
            raise APIError(404, f"The model `{model_id}` does not exist", param="model", code="model_not_found")
        return model_card(served)

    # Tokenizing runs in a worker thread: a long prompt must not stall the streams on the event loop.
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        served = slot.require()
        prepared = await asyncio.to_thread(_prepare_chat, served, body)
        return await _respond(served, prepared, _ChatShape(served.name), metrics, request)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        served = slot.require()
        prepared = await asyncio.to_thread(_prepare_completion, served, body)
        return await _respond(served, prepared, _CompletionShape(served.name), metrics, request)

    app.state.model_slot = slot
    return app


_CREATED = int(time.time())


# --- turning requests into prompts -----------------------------------------------------------------------------


def _check_common(served: ServedModel, body: SamplingRequest) -> None:
    if body.model != served.name:
        raise APIError(
            404, f"The model `{body.model}` does not exist; this server serves `{served.name}`",
            param="model", code="model_not_found",
        )  # fmt: skip
    for field, why in body.unsupported():
        raise APIError(400, f"{field}: {why}", param=field, code="unsupported_parameter")


def _params(
    served: ServedModel, body: SamplingRequest, prompt_ids: list[int], max_tokens: int | None, what: str
) -> Prepared:
    limit = served.max_length
    n_prompt = len(prompt_ids)
    wanted = max_tokens if max_tokens is not None else max(limit - n_prompt, 1)
    if n_prompt + wanted > limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested {n_prompt + wanted} "
            f"tokens ({n_prompt} in the {what}, {wanted} in the completion). Please reduce the length of the "
            f"{what} or of max_tokens.",
            param=what if max_tokens is None or n_prompt >= limit else "max_tokens",
            code="context_length_exceeded",
        )
    params = SamplingParams(
        max_tokens=wanted,
        temperature=body.temperature if body.temperature is not None else served.temperature,
        top_p=body.top_p if body.top_p is not None else served.top_p,
        seed=body.seed,
        stop=tuple(body.stop_sequences()),
        ignore_eos=body.ignore_eos,
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return Prepared(prompt_ids, params, body.stream, include_usage)


def _prepare_chat(served: ServedModel, body: ChatCompletionRequest) -> Prepared:
    _check_common(served, body)
    messages = []
    for index, message in enumerate(body.messages):
        content = message.text()
        special = served.special_in(content)
        if special is not None:
            raise APIError(
                400,
                f"messages.{index}.content contains the control token {special}; remove it (the chat template adds "
                "the turn markers itself)",
                param=f"messages.{index}.content",
                code="invalid_value",
            )
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": content})
    if served.default_system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": served.default_system})
    try:
        text = render_chat(messages, add_generation_prompt=True)
    except ChatTemplateError as exc:
        raise APIError(400, f"messages: {exc}", param="messages") from exc
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return _params(served, body, served.encode(text), max_tokens, "messages")


def _prepare_completion(served: ServedModel, body: CompletionRequest) -> Prepared:
    _check_common(served, body)
    prompt = body.prompt
    if isinstance(prompt, str):
        ids = served.encode(prompt)
    elif all(isinstance(item, str) for item in prompt):
        ids = served.encode(str(prompt[0]))
    else:
        ids = [int(item) for item in prompt]
        bad = [i for i in ids if not 0 <= i < served.vocab_size]
        if bad:
            raise APIError(
                400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{served.vocab_size - 1})",
                param="prompt", code="invalid_value",
            )  # fmt: skip
    if not ids:
        raise APIError(400, "prompt: the prompt is empty (no tokens)", param="prompt", code="invalid_value")
    return _params(served, body, ids, body.max_tokens, "prompt")


# --- running a request and shaping the answer ------------------------------------------------------------------


class _ChatShape:
    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, model: str) -> None:
        self.model = model

    def choice(self, text: str, finish: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}

    def first_chunk(self) -> dict[str, Any] | None:
        return {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}

    def chunk(self, text: str | None, finish: str | None) -> dict[str, Any]:
        delta = {"content": text} if text is not None else {}
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}


class _CompletionShape(_ChatShape):
    object, chunk_object, prefix = "text_completion", "text_completion", "cmpl"

    def choice(self, text: str, finish: str) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    def first_chunk(self) -> dict[str, Any] | None:
        return None

    def chunk(self, text: str | None, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}


def _usage(finished: Finished) -> dict[str, int]:
    total = finished.prompt_tokens + finished.completion_tokens
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": total}  # fmt: skip


def _submit(served: ServedModel, prepared: Prepared) -> tuple[asyncio.Queue[Event], RequestHandle]:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    try:
        handle = served.engine.submit(prepared.prompt_ids, prepared.params, sink)
    except QueueFullError as exc:
        raise APIError(
            429, f"the server is at capacity ({exc}); retry after {RETRY_AFTER_S} s", kind="rate_limit_error",
            code="rate_limit_exceeded", headers={"Retry-After": RETRY_AFTER_S},
        ) from exc  # fmt: skip
    except EngineStoppedError as exc:
        raise APIError(503, str(exc), kind="server_error", code="shutting_down") from exc
    return events, handle


async def _respond(
    served: ServedModel, prepared: Prepared, shape: _ChatShape, metrics: Metrics, request: Request
) -> Response:
    start = time.perf_counter()
    events, handle = _submit(served, prepared)
    ident, created = f"{shape.prefix}-{uuid.uuid4().hex}", int(time.time())
    envelope = {"id": ident, "created": created, "model": shape.model, "system_fingerprint": None}
    progress = _Progress(metrics, start)
    if prepared.stream:
        return _GenerationStream(
            _stream(events, handle, shape, envelope, prepared.include_usage, progress),
            handle,
            progress,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    pieces: list[str] = []
    loop = asyncio.get_running_loop()
    next_check = loop.time() + DISCONNECT_POLL_S
    try:
        while True:
            event: Event | None = None
            if not events.empty():
                event = events.get_nowait()
            else:
                with contextlib.suppress(TimeoutError):
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            if loop.time() >= next_check:  # whether tokens are flowing or not
                next_check = loop.time() + DISCONNECT_POLL_S
                if await request.is_disconnected():  # the client gave up: free the slot now (counted below)
                    return Response(status_code=499)
            if event is None:
                continue
            if isinstance(event, Delta):
                progress.text()
                pieces.append(event.text)
            elif isinstance(event, Failed):
                progress.end("failed")
                raise APIError(500, event.message, kind="server_error", code="generation_failed")
            else:
                progress.end(event.reason)
                body = {**envelope, "object": shape.object, "choices": [shape.choice("".join(pieces), event.reason)]}
                return JSONResponse({**body, "usage": _usage(event)})
    except Exception:  # a fault of ours is not the client's leaving
        progress.end("failed")
        raise
    finally:
        progress.end("cancelled")  # a no-op once ended above; else the client left or the server cancelled it
        handle.cancel()  # a no-op once finished; frees the slot when the client went away mid-way


class _GenerationStream(StreamingResponse):
    """A stream that frees its engine slot and counts a client's leaving however the response ends: also before its
    generator starts, or while the generator waits at a `yield` (which a `finally` inside it would only see once the
    generator is collected)."""

    def __init__(self, content: AsyncIterator[str], handle: RequestHandle, progress: _Progress, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.handle, self.progress = handle, progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.progress.end("cancelled")  # a no-op once the stream ended by itself
            self.handle.cancel()  # a no-op once finished


class _Progress:
    """What the metrics learn of one generation: when its first text came, and how it ended (once)."""

    def __init__(self, metrics: Metrics, start: float) -> None:
        self.metrics, self.start = metrics, start
        self.first_seen = self.ended = False

    def text(self) -> None:
        if not self.first_seen:
            self.first_seen = True
            self.metrics.first_token.observe(time.perf_counter() - self.start)

    def end(self, outcome: str) -> None:
        if not self.ended:
            self.ended = True
            self.metrics.outcomes.labels(outcome).inc()


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(
    events: asyncio.Queue[Event],
    handle: RequestHandle,
    shape: _ChatShape,
    envelope: dict[str, Any],
    include_usage: bool,
    progress: _Progress,
) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return _sse({**envelope, "object": shape.chunk_object, "choices": choices, **extra})

    try:
        opening = shape.first_chunk()
        if opening is not None:
            yield chunk([opening])
        pending: Event | None = None
        while True:
            event, pending = (pending or await events.get()), None
            if isinstance(event, Delta):
                progress.text()
                texts = [event.text]
                # when the client reads slower than the engine writes, what has piled up goes out as one chunk
                while pending is None and not events.empty():
                    queued = events.get_nowait()
                    if isinstance(queued, Delta):
                        texts.append(queued.text)
                    else:
                        pending = queued
                yield chunk([shape.chunk("".join(texts), None)])
            elif isinstance(event, Failed):
                progress.end("failed")
                error = APIError(500, event.message, kind="server_error", code="generation_failed")
                yield _sse(error.body())
                break
            else:
                progress.end(event.reason)
                yield chunk([shape.chunk(None, event.reason)])
                if include_usage:
                    yield chunk([], usage=_usage(event))
                break
        yield _sse("[DONE]")
    except Exception:  # a fault of ours; the client's leaving (CancelledError, GeneratorExit) is _GenerationStream's
        progress.end("failed")
        raise
