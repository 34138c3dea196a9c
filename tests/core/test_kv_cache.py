"""The slot KV cache: sequences of different lengths decoded in one batch give the logits each gets alone."""

import pytest
import torch

from oracle.core.kv_cache import SlotKVCache
from oracle.moe850b.model import OracleMoE

pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.fixture
def no_grad() -> object:
    with torch.no_grad():
        yield


def slot_cache(model: OracleMoE, slots: int, max_length: int = 64) -> SlotKVCache:
    return model.new_slot_cache(slots, max_length)


def alone(model: OracleMoE, prompt: torch.Tensor, continuation: list[int]) -> torch.Tensor:
    """Logits of every continuation step for one sequence, through the ordinary cache."""
    cache = model.new_cache(1, 64)
    logits = [model(prompt[None], cache).logits_BSV[0, -1]]
    logits += [model(torch.tensor([[token]]), cache).logits_BSV[0, -1] for token in continuation[:-1]]
    return torch.stack(logits)


def test_batched_decoding_of_unequal_sequences_matches_each_alone(mini_model: OracleMoE) -> None:
    torch.manual_seed(3)
    prompts = [torch.randint(0, 4096, (n,)) for n in (3, 11, 7)]
    continuation = [torch.randint(0, 4096, (5,)).tolist() for _ in prompts]
    cache = slot_cache(mini_model, slots=3)
    batched: list[list[torch.Tensor]] = [[] for _ in prompts]
    for slot, prompt in enumerate(prompts):  # prefill one slot at a time, as the engine admits requests
        cache.select(slot, slot + 1)
        batched[slot].append(mini_model(prompt[None], cache).logits_BSV[0, -1])
    for step in range(4):  # then decode all three together
        cache.select(0, 3)
        tokens = torch.tensor([[c[step]] for c in continuation])
        logits = mini_model(tokens, cache).logits_BSV[:, -1]
        for slot in range(3):
            batched[slot].append(logits[slot])
    assert cache.lengths == [3 + 4, 11 + 4, 7 + 4]
    for slot, prompt in enumerate(prompts):
        expected = alone(mini_model, prompt, continuation[slot])
        torch.testing.assert_close(torch.stack(batched[slot]), expected, atol=1e-5, rtol=1e-4)


def test_moving_a_slot_keeps_its_sequence_and_reset_forgets_it(mini_model: OracleMoE) -> None:
    torch.manual_seed(4)
    first, second = torch.randint(0, 4096, (6,)), torch.randint(0, 4096, (9,))
    cache = slot_cache(mini_model, slots=2)
    cache.select(0, 1)
    mini_model(first[None], cache)
    cache.select(1, 2)
    mini_model(second[None], cache)
    cache.move(1, 0)  # the first sequence finished: compact the second into slot 0
    cache.reset(1)
    assert cache.lengths == [9, 0]
    cache.select(0, 1)
    next_token = torch.tensor([[42]])
    moved = mini_model(next_token, cache).logits_BSV[0, -1]
    expected = alone(mini_model, second, [42, 0])[1]
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=1e-4)


def test_a_slot_left_with_nan_does_not_poison_its_next_occupant(mini_model: OracleMoE) -> None:
    torch.manual_seed(5)
    prompt = torch.randint(0, 4096, (4,))
    cache = slot_cache(mini_model, slots=1)
    cache.select(0, 1)
    mini_model(torch.randint(0, 4096, (1, 20)), cache)
    for layer in cache.values:  # what an overflowing (fp16) sequence can leave behind
        layer[0, :, :20] = float("nan")
    cache.reset(0)
    logits = mini_model(prompt[None], cache).logits_BSV[0, -1]
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, alone(mini_model, prompt, [0])[0], atol=1e-5, rtol=1e-4)


def test_a_prefill_that_failed_midway_leaves_nothing_behind_after_reset() -> None:
    cache = SlotKVCache(2, 1, 2, 4, 16)
    cache.select(0, 1)
    nan = torch.full((1, 2, 5, 4), float("nan"))
    cache.update(0, nan, nan)  # layer 0 wrote 5 positions, then the pass failed: the length never advanced
    assert cache.lengths == [0]
    cache.reset(0)
    assert all(bool((layer == 0).all()) for layer in [*cache.keys, *cache.values])


def test_a_full_slot_and_bad_selections_are_refused(mini_model: OracleMoE) -> None:
    cache = slot_cache(mini_model, slots=2, max_length=8)
    with pytest.raises(ValueError, match="outside"):
        cache.select(1, 3)
    cache.select(0, 1)
    mini_model(torch.zeros((1, 8), dtype=torch.long), cache)
    with pytest.raises(ValueError, match="KV cache full"):
        mini_model(torch.zeros((1, 1), dtype=torch.long), cache)
