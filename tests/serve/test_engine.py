"""The engine alone: text deltas and stop sequences, continuous batching, seeds, capacity, cancellation."""

import threading
from collections.abc import Iterator

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
    suppress = [i for token, i in vocab.items() if token.startswith("<|reserved_") or token == "<|pad|>"]
    options: dict = {"stop_token_ids": [0, 5], "suppress_token_ids": suppress, "max_batch": 4, "max_queue": 4}
    options.update(kwargs)
    return Engine(model, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), **options)


@pytest.fixture
def engine(engine_parts: tuple) -> Iterator[Engine]:
    running = make_engine(engine_parts)
    running.start()
    yield running
    running.stop(timeout=60)


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
    _text, finished = run(engine, PROMPTS[0], max_tokens=5)
    assert finished.reason in {"length", "stop"}
    if finished.reason == "length":
        assert finished.completion_tokens == 5
    assert finished.prompt_tokens == 3


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
