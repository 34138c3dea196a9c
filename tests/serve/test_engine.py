"""The engine alone: text deltas and stop sequences, continuous batching, seeds, capacity, cancellation."""

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from oracle.moe850b.weights import load_checkpoint
from oracle.serve.engine import (
    Delta,
    Engine,
    Event,
    Failed,
    Finished,
    QueueFullError,
    SamplingParams,
    TextTracker,
)
from oracle.tokenization.special_tokens import never_generated
from oracle.tokenization.tokenizer import load_tokenizer
from tests.serve.fixtures import ServedCheckpoint


class Collector:
    """Collects one request's events; `wait` blocks until it finished."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Finished | Failed):
            self.done.set()

    def wait(self) -> tuple[str, Finished]:
        assert self.done.wait(120), "the request never finished"
        final = self.events[-1]
        assert isinstance(final, Finished), final
        return "".join(e.text for e in self.events if isinstance(e, Delta)), final


@pytest.fixture(scope="module")
def engine_parts(served: ServedCheckpoint) -> tuple[torch.nn.Module, object]:
    model = load_checkpoint(served.checkpoint)
    tokenizer = load_tokenizer(served.tokenizer)
    return model, tokenizer


def make_engine(engine_parts: tuple, **kwargs: object) -> Engine:
    model, tokenizer = engine_parts
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    suppress = [i for token, i in vocab.items() if never_generated(token)]
    options: dict = {"stop_token_ids": [0, 5], "suppress_token_ids": suppress, "max_batch": 4, "max_queue": 4}
    options.update(kwargs)
    return Engine(model, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), **options)


@pytest.fixture
def engine(engine_parts: tuple) -> Iterator[Engine]:
    running = make_engine(engine_parts)
    running.start()
    yield running
    running.stop(timeout=60)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run(engine: Engine, prompt: list[int], **params: object) -> tuple[str, Finished]:
    collector = Collector()
    engine.submit(prompt, SamplingParams(**params), collector)  # type: ignore[arg-type]
    return collector.wait()


PROMPTS = [[10, 20, 30], list(range(40, 60)), [7], list(range(100, 109))]


def test_text_tracker_holds_back_what_may_become_a_stop_sequence() -> None:
    pieces = ["Hel", "lo, wo", "rld", "! END", " more"]
    tracker = TextTracker(lambda ids: "".join(pieces[i] for i in ids), stop=["END", "world!"])
    deltas = [tracker.push(list(range(n + 1))) for n in range(len(pieces))]
    # "wo" could start "world!": held back until "rld! E" shows the stop sequence
    assert deltas[0] == ("Hel", False)
    assert deltas[1] == ("lo, ", False)
    assert deltas[2] == ("", False)  # "world" is still a prefix of "world!"
    assert deltas[3] == ("", True)  # "world!" found: everything from it on is cut
    assert tracker.emitted == len("Hello, ")


def test_text_tracker_waits_for_whole_characters_and_flushes_at_the_end() -> None:
    texts = ["a\ufffd", "aé", "aéb\ufffd"]
    tracker = TextTracker(lambda ids: texts[len(ids) - 1], stop=[])
    assert tracker.push([0]) == ("a", False)
    assert tracker.push([0, 1]) == ("é", False)
    assert tracker.push([0, 1, 2]) == ("b", False)
    assert tracker.flush([0, 1, 2]) == "\ufffd"  # a truly broken sequence is shown once generation ended


def test_streamed_text_equals_the_full_decode_of_long_random_outputs(engine_parts: tuple) -> None:
    """Random ids (broken UTF-8, special tokens, multi-byte characters) decoded incrementally through the moving
    window give exactly the text of decoding everything at once."""
    _, tokenizer = engine_parts

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    generator = torch.Generator().manual_seed(5)
    learned = tokenizer.get_vocab_size(with_added_tokens=False)
    for _ in range(5):
        ids = torch.randint(0, learned, (300,), generator=generator).tolist()
        tracker = TextTracker(decode, stop=[])
        pieces = [tracker.push(ids[: n + 1])[0] for n in range(len(ids))]
        assert "".join(pieces) + tracker.flush(ids) == decode(ids)
        assert tracker._base_ids > 200  # the window moved on: old ids are not decoded again


def test_greedy_output_is_the_same_alone_and_in_a_busy_batch(engine_parts: tuple, engine: Engine) -> None:
    alone = [run(engine, prompt, max_tokens=12) for prompt in PROMPTS]
    collectors = [Collector() for _ in PROMPTS]
    for prompt, collector in zip(PROMPTS, collectors, strict=True):  # all four at once: one batch
        engine.submit(prompt, SamplingParams(max_tokens=12), collector)
    together = [collector.wait() for collector in collectors]
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert [f.completion_tokens for _, f in together] == [f.completion_tokens for _, f in alone]
    assert engine.stats.steps > 0


def test_seeded_sampling_reproduces_and_other_seeds_differ(engine: Engine) -> None:
    first = run(engine, PROMPTS[1], max_tokens=16, temperature=1.0, seed=7)
    again = run(engine, PROMPTS[1], max_tokens=16, temperature=1.0, seed=7)
    others = {run(engine, PROMPTS[1], max_tokens=16, temperature=1.0, seed=s)[0] for s in (8, 9, 10)}
    assert first == again
    assert others - {first[0]}


def test_max_tokens_ends_with_length_and_counts_every_token(engine: Engine) -> None:
    _text, finished = run(engine, PROMPTS[0], max_tokens=5, ignore_eos=True)
    assert finished == Finished("length", prompt_tokens=3, completion_tokens=5)


def test_a_stop_token_ends_with_stop_and_is_counted(engine_parts: tuple) -> None:
    _, tokenizer = engine_parts
    greedy = run_ids(engine_parts, PROMPTS[1], 12)
    k = next(k for k in range(2, 12) if greedy[k] not in greedy[:k])  # make the k+1-th greedy token a stop token
    stopping = make_engine(engine_parts, stop_token_ids=[greedy[k]])
    stopping.start()
    try:
        text, finished = run(stopping, PROMPTS[1], max_tokens=12)
    finally:
        stopping.stop(timeout=60)
    assert finished == Finished("stop", prompt_tokens=len(PROMPTS[1]), completion_tokens=k + 1)
    assert text == tokenizer.decode(greedy[:k], skip_special_tokens=True)


def run_ids(engine_parts: tuple, prompt: list[int], n: int) -> list[int]:
    """The first n greedy ids after `prompt` through the model's own cached generate (reserved ids suppressed as the
    engine does, by taking the greedy path over the masked logits)."""
    model, tokenizer = engine_parts
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    masked = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    masked[[i for token, i in vocab.items() if never_generated(token)]] = True
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.inference_mode():
        cache = model.new_cache(1, len(prompt) + n)
        logits = model(ids, cache).logits_BSV[:, -1]
        for _ in range(n):
            token = int(logits.float().masked_fill(masked, float("-inf")).argmax(dim=-1))
            out.append(token)
            logits = model(torch.tensor([[token]]), cache).logits_BSV[:, -1]
    return out


def test_requests_leaving_a_batch_at_different_steps_keep_the_others_intact(engine: Engine) -> None:
    """Finished requests leave mid-batch and the last slot moves into the hole: everyone's text stays its own."""
    lengths = [3, 9, 5, 12]
    alone = [run(engine, p, max_tokens=n, ignore_eos=True) for p, n in zip(PROMPTS, lengths, strict=True)]
    collectors = [Collector() for _ in PROMPTS]
    for prompt, n, collector in zip(PROMPTS, lengths, collectors, strict=True):
        engine.submit(prompt, SamplingParams(max_tokens=n, ignore_eos=True), collector)
    assert [c.wait() for c in collectors] == alone


def test_a_tiny_temperature_decodes_greedily(engine: Engine) -> None:
    greedy = run(engine, PROMPTS[3], max_tokens=10, ignore_eos=True)
    assert run(engine, PROMPTS[3], max_tokens=10, ignore_eos=True, temperature=1e-300, seed=1) == greedy


def test_a_failing_sample_ends_only_its_own_request(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import oracle.serve.engine as engine_module

    real = engine_module.sample_next_token

    def flaky(logits: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if kwargs["temperature"] == 0.5:
            raise RuntimeError("probability tensor contains nan")
        return real(logits, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "sample_next_token", flaky)
    doomed, healthy = Collector(), Collector()
    engine.submit(PROMPTS[0], SamplingParams(max_tokens=40, ignore_eos=True, temperature=1.0, seed=3), healthy)
    engine.submit(PROMPTS[1], SamplingParams(max_tokens=40, temperature=0.5), doomed)
    _, finished = healthy.wait()
    assert finished.completion_tokens == 40
    assert doomed.done.wait(60)
    assert isinstance(doomed.events[-1], Failed)
    assert "probability tensor contains nan" in doomed.events[-1].message


def test_a_failing_decode_step_ends_the_batch_and_the_engine_goes_on(engine_parts: tuple) -> None:
    model, _ = engine_parts
    engine = make_engine(engine_parts)
    real_forward = model.forward
    calls = {"n": 0}

    def forward_failing_once(input_ids_BS: torch.Tensor, cache: object = None) -> object:
        calls["n"] += 1
        if calls["n"] == 3:  # the second decode step
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_forward(input_ids_BS, cache)

    model.forward = forward_failing_once
    engine.start()
    try:
        failed = Collector()
        engine.submit(PROMPTS[0], SamplingParams(max_tokens=20, ignore_eos=True), failed)
        assert failed.done.wait(60)
        assert isinstance(failed.events[-1], Failed)
        assert "out of memory" in failed.events[-1].message
        assert run(engine, PROMPTS[0], max_tokens=4, ignore_eos=True)[1].completion_tokens == 4
        assert engine.alive
        assert wait_until(lambda: engine.running == 0)  # its slot is freed right after its last event
    finally:
        del model.forward
        engine.stop(timeout=60)


def test_requests_being_prefilled_count_against_the_queue_bound(engine_parts: tuple) -> None:
    model, _ = engine_parts
    engine = make_engine(engine_parts, max_batch=1, max_queue=0)
    entered, release = threading.Event(), threading.Event()
    real_forward = model.forward

    def slow_prefill(input_ids_BS: torch.Tensor, cache: object = None) -> object:
        entered.set()
        release.wait(60)
        return real_forward(input_ids_BS, cache)

    model.forward = slow_prefill
    engine.start()
    try:
        first = Collector()
        engine.submit(PROMPTS[0], SamplingParams(max_tokens=2, ignore_eos=True), first)
        assert entered.wait(60)  # taken from the queue, not yet in its slot
        assert engine.running == 1
        assert engine.queue_depth == 0
        with pytest.raises(QueueFullError):
            engine.submit(PROMPTS[1], SamplingParams(max_tokens=2), Collector())
        release.set()
        assert first.wait()[1].completion_tokens == 2
    finally:
        release.set()
        del model.forward
        engine.stop(timeout=60)


def test_a_full_queue_is_refused_and_cancelled_requests_free_their_slots(engine_parts: tuple) -> None:
    engine = make_engine(engine_parts, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    engine.submit([1, 2], SamplingParams(max_tokens=4), Collector())
    waiting = Collector()
    handle = engine.submit([1, 2], SamplingParams(max_tokens=4), waiting)
    with pytest.raises(QueueFullError):
        engine.submit([1, 2], SamplingParams(max_tokens=4), Collector())
    handle.cancel()
    engine.start()
    try:
        _text, finished = run(engine, [3, 4], max_tokens=3)  # admitted once the others are gone
        assert finished.completion_tokens <= 3
        assert waiting.events == []  # the cancelled request produced nothing
    finally:
        engine.stop(timeout=60)


def test_prompts_beyond_the_context_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="exceed 512"):
        engine.submit(list(range(500)), SamplingParams(max_tokens=13), Collector())
