"""The generation engine: one thread that runs the model for every request in flight, batched step by step.

Requests wait in a bounded queue. Each loop admits waiting requests into free cache slots (one prefill pass each,
which also yields their first token), then runs one decode pass over every active slot together: continuous
batching over a `SlotKVCache`, so a request that arrives mid-way joins at the next step instead of waiting for a
batch to drain, and a finished one frees its slot at once. Text comes out incrementally: a token is shown only when
its bytes form whole characters, and text that could be the start of a stop sequence is held back until it is not.

Events go to each request's `sink` from this thread (the HTTP layer forwards them to its event loop). The engine
never raises into a request: a failing pass ends the requests in it with `Failed` and the engine goes on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from oracle.moe850b.model import OracleMoE
from oracle.moe850b.sampling import GREEDY_BELOW, sample_next_token
from oracle_base.errors import Refused

log = logging.getLogger("oracle.serve")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # stop sequences (text); the model's stop tokens stop too, unless ignore_eos
    ignore_eos: bool = False  # generate through stop tokens (benchmarks, load tests), as vLLM's extension


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (a stop token or sequence) or "length" (max_tokens or the context)
    prompt_tokens: int
    completion_tokens: int  # tokens the model produced, a final stop token included


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Failed


class QueueFullError(Refused):
    """Every slot is busy and the waiting queue is full: try again later."""


class EngineStoppedError(Refused):
    """The engine is shutting down and takes no new requests."""


class TextTracker:
    """Turns the growing list of generated ids into text deltas, honouring stop sequences.

    Only the ids after the last clean boundary (a point where the decoded text ended in a whole character) are
    decoded again for each new token, so the decoding per token is bounded by the window, not the length: byte-level
    BPE decodes to UTF-8 bytes, and bytes split at a character boundary decode to the concatenation of their
    halves. (Joining the strings still copies the text: cheap next to decoding.)"""

    WINDOW = 16  # ids kept before the boundary moves on

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str]) -> None:
        self.decode, self.stop = decode, tuple(stop)
        self.emitted = 0  # characters of the decoded text already handed out
        self._base_ids, self._base_text = 0, ""  # ids[:_base_ids] decode to _base_text, ending at a boundary

    def text(self, ids: list[int]) -> str:
        """The decoded text of `ids`, which extend the ids of every earlier call."""
        if len(ids) < self._base_ids:
            raise ValueError(f"{len(ids)} ids, but {self._base_ids} were decoded before: ids only grow")
        tail = self.decode(ids[self._base_ids :])
        text = self._base_text + tail
        if len(ids) - self._base_ids > self.WINDOW and not tail.endswith("\ufffd"):
            self._base_ids, self._base_text = len(ids), text
        return text

    def push(self, ids: list[int]) -> tuple[str, bool]:
        """The new text to hand out, and whether a stop sequence ended it."""
        text = self.text(ids)
        matches = [index for index in (text.find(s, self.emitted) for s in self.stop) if index >= 0]
        if matches:
            end = min(matches)
            return self._take(text, end), True
        safe = len(text.rstrip("\ufffd"))  # a trailing U+FFFD is an incomplete UTF-8 sequence (for now)
        hold = 0
        for s in self.stop:  # keep back a tail that may grow into a stop sequence
            for k in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if text.endswith(s[:k], 0, safe):
                    hold = max(hold, k)
                    break
        return self._take(text, safe - hold), False

    def flush(self, ids: list[int]) -> str:
        """Everything not yet handed out, once generation has ended without a stop sequence."""
        return self._take(self.text(ids), None)

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        delta = text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    text: TextTracker
    generator: torch.Generator
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:  # a sink whose client went away must not stop the engine
            log.exception("a request's event sink failed")
            self.cancelled = True


class RequestHandle:
    def __init__(self, engine: Engine, request: _Request) -> None:
        self._engine, self._request = engine, request

    def cancel(self) -> None:
        """Stop generating for this request (the client went away): it leaves the queue at once, or frees its slot
        at the next step. A no-op once it has finished."""
        self._engine._cancel(self._request)


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0


class Engine:
    def __init__(
        self,
        model: OracleMoE,
        decode: Callable[[list[int]], str],
        *,
        stop_token_ids: Sequence[int],
        suppress_token_ids: Sequence[int] = (),
        max_batch: int = 16,
        max_queue: int = 64,
        max_length: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        # Capacity dropping is a training-time device: at inference every token gets its experts, so no request
        # loses them to the others in its batch.
        for block in model.blocks():
            block.moe.capacity_factor = None
        self.model = model.eval()
        self.decode = decode
        self.stop_token_ids = frozenset(stop_token_ids)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.context_length = model.config.context_length
        self.max_length = min(max_length or self.context_length, self.context_length)
        self.device = model.embed_tokens.weight.device
        self.cache = model.new_slot_cache(max_batch, self.max_length)
        vocab = model.config.vocab_size
        self.suppress_V = torch.zeros(vocab, dtype=torch.bool)
        self.suppress_V[[i for i in suppress_token_ids if 0 <= i < vocab]] = True
        self.stats = EngineStats()
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # index = cache slot
        self._admitting = 0  # taken from the queue, not yet prefilled into a slot
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- the side the HTTP layer calls ---------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._active) + self._admitting

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="oracle-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the requests in flight and those waiting, then end the thread (new ones are refused)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None]) -> RequestHandle:
        """Queue a request; its events go to `sink` (called from the engine thread)."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        if len(prompt_ids) + params.max_tokens > self.max_length:
            raise ValueError(
                f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens} exceed {self.max_length}"
            )
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        request = _Request(
            prompt_ids=list(prompt_ids),
            params=params,
            sink=sink,
            text=TextTracker(self.decode, params.stop),
            generator=torch.Generator().manual_seed(seed),
        )
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the server is shutting down")
            if self._thread is not None and not self._thread.is_alive():
                raise EngineStoppedError("the generation engine has stopped; restart the server")
            if self.running + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFullError(f"{self.running} requests running and {len(self._waiting)} waiting")
            self._waiting.append(request)
            self._cond.notify()
        return RequestHandle(self, request)

    def _cancel(self, request: _Request) -> None:
        with self._cond:
            request.cancelled = True
            if request in self._waiting:
                self._waiting.remove(request)

    # --- the engine thread -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._run()
        finally:  # normally nothing is left; after an error that escaped everything, nobody may wait forever
            with self._cond:
                for request in [*self._active, *self._waiting]:
                    self._fail(request, EngineStoppedError("the generation engine stopped"))
                self._active.clear()
                self._waiting.clear()
                self._admitting = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._active and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._waiting and not self._active:
                    return
                admitted: list[_Request] = []
                while self._waiting and len(self._active) + len(admitted) < self.max_batch:
                    admitted.append(self._waiting.popleft())
                self._admitting = len(admitted)  # still counted against the capacity while they prefill
            try:
                with torch.inference_mode():
                    for request in admitted:
                        self._prefill(request)
                    self._release_finished()
                    if self._active:
                        try:
                            self._decode_step()
                        except Exception as exc:  # e.g. out of memory: fail the batch in flight, keep serving
                            log.exception("decode step failed")
                            for request in self._active:
                                self._fail(request, exc)
                    self._release_finished()
            except Exception as exc:  # a bug in the bookkeeping: end everything in flight rather than hang it
                log.exception("engine step failed")
                with self._cond:
                    for request in [*self._active, *admitted]:
                        self._fail(request, exc)
                    self._active.clear()
                    self._admitting = 0

    def _prefill(self, request: _Request) -> None:
        """Run the prompt through a free slot; a failure here (a bad request, memory) ends only this request."""
        with self._cond:
            self._admitting -= 1
            if request.cancelled:
                return
            slot = len(self._active)
            self._active.append(request)
        try:
            self.cache.reset(slot)
            self.cache.select(slot, slot + 1)
            input_1S = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
            logits_1V = self.model(input_1S, self.cache).logits_BSV[:, -1]
            self.stats.prompt_tokens += len(request.prompt_ids)
            self._accept(request, int(self._sample(logits_1V, [request])[0]))
        except Exception as exc:
            log.exception("prefill failed")
            self._fail(request, exc)

    def _fail(self, request: _Request, exc: Exception) -> None:
        if not request.done:
            request.done = True
            request.emit(Failed(f"generation failed: {type(exc).__name__}: {exc}"))

    def _decode_step(self) -> None:
        rows = self._active
        self.cache.select(0, len(rows))
        input_B1 = torch.tensor([[r.output_ids[-1]] for r in rows], dtype=torch.long, device=self.device)
        logits_BV = self.model(input_B1, self.cache).logits_BSV[:, -1]
        self.stats.steps += 1
        for request, token in zip(rows, self._sample(logits_BV, rows).tolist(), strict=True):
            self._accept(request, token)

    def _sample(self, logits_BV: torch.Tensor, requests: Sequence[_Request]) -> torch.Tensor:
        logits_BV = logits_BV.float().cpu().masked_fill(self.suppress_V, float("-inf"))
        tokens_B = logits_BV.argmax(dim=-1)
        for row, request in enumerate(requests):
            params = request.params
            if params.temperature >= GREEDY_BELOW:
                try:
                    tokens_B[row] = sample_next_token(
                        logits_BV[row : row + 1],
                        temperature=params.temperature,
                        top_p=params.top_p,
                        generator=request.generator,
                    )[0]
                except Exception as exc:  # only this request's sampling failed: the others go on
                    log.exception("sampling failed")
                    self._fail(request, exc)
        return tokens_B

    def _accept(self, request: _Request, token: int) -> None:
        """Record one generated token, hand out its text, and end the request when it is done."""
        if request.cancelled or request.done:
            return
        request.output_ids.append(token)
        self.stats.generated_tokens += 1
        n_out = len(request.output_ids)
        if token in self.stop_token_ids and not request.params.ignore_eos:
            self._finish(request, "stop", request.text.flush(request.output_ids[:-1]))
            return
        delta, stopped = request.text.push(request.output_ids)
        if stopped:
            self._finish(request, "stop", delta)
        elif n_out >= request.params.max_tokens or len(request.prompt_ids) + n_out >= self.max_length:
            self._finish(request, "length", delta + request.text.flush(request.output_ids))
        elif delta:
            request.emit(Delta(delta))

    def _finish(self, request: _Request, reason: str, last_text: str) -> None:
        if last_text:
            request.emit(Delta(last_text))
        request.done = True
        request.emit(Finished(reason, len(request.prompt_ids), len(request.output_ids)))

    def _release_finished(self) -> None:
        """Free the slots of finished or cancelled requests, moving the last active slot into each hole."""

        def finished(request: _Request) -> bool:
            return request.done or request.cancelled

        slot = 0
        while slot < len(self._active):
            while self._active and finished(self._active[-1]):  # finished at the end: nothing to move
                self._active.pop()
                self.cache.reset(len(self._active))
            if slot < len(self._active) and finished(self._active[slot]):
                last = len(self._active) - 1
                self.cache.move(last, slot)
                self._active[slot] = self._active.pop()
                self.cache.reset(last)
            slot += 1
