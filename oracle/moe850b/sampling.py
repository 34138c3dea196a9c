"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling."""

import torch

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily: dividing logits by less overflows to inf and NaN


def sample_next_token(
    logits_BV: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row. temperature 0 (or below GREEDY_BELOW) is greedy; top_k and top_p restrict the
    candidates before sampling."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature < GREEDY_BELOW:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[..., -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
        cumulative_BV = sorted_BV.softmax(dim=-1).cumsum(dim=-1)
        # Drop a candidate when the ones before it already reach top_p; the most likely one always stays.
        remove_sorted_BV = (cumulative_BV - sorted_BV.softmax(dim=-1)) >= top_p
        remove_BV = torch.zeros_like(remove_sorted_BV).scatter(-1, order_BV, remove_sorted_BV)
        logits_BV = logits_BV.masked_fill(remove_BV, float("-inf"))
    probs_BV = logits_BV.softmax(dim=-1)
    return torch.multinomial(probs_BV, num_samples=1, generator=generator).squeeze(-1)
