import pytest
import torch

from oracle.moe850b.model import OracleMoE, lm_loss
from oracle.moe850b.sampling import sample_next_token
from tests.conftest import micro_config


def test_forward_returns_logits_and_router_losses(mini_model: OracleMoE) -> None:
    ids = torch.randint(0, 4096, (2, 16))
    out = mini_model(ids)
    assert out.logits_BSV.shape == (2, 16, 4096)
    assert len(out.routing) == 4
    assert out.load_balance_loss.item() >= 1.0 - 1e-5  # E·Σ f·P is at least 1 for top-k routing
    expected_aux = 0.01 * out.load_balance_loss + 0.001 * out.z_loss
    torch.testing.assert_close(out.aux_loss, expected_aux)
    assert all(int(stats.tokens_per_expert_E.sum()) == 2 * 16 * 2 for stats in out.routing)


def test_changing_later_tokens_never_changes_earlier_logits(mini_model: OracleMoE) -> None:
    torch.manual_seed(1)
    ids = torch.randint(0, 4096, (1, 20))
    changed = ids.clone()
    changed[0, 12:] = torch.randint(0, 4096, (8,))
    before, after = mini_model(ids).logits_BSV, mini_model(changed).logits_BSV
    torch.testing.assert_close(before[:, :12], after[:, :12])
    assert not torch.allclose(before[:, 12:], after[:, 12:])


def test_decoding_with_the_kv_cache_reproduces_the_full_forward(mini_model: OracleMoE) -> None:
    torch.manual_seed(2)
    ids = torch.randint(0, 4096, (2, 14))
    full = mini_model(ids).logits_BSV
    cache = mini_model.new_cache(batch_size=2, max_length=14)
    steps = [mini_model(ids[:, :6], cache).logits_BSV]
    steps.append(mini_model(ids[:, 6:9], cache).logits_BSV)
    steps += [mini_model(ids[:, t : t + 1], cache).logits_BSV for t in range(9, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_greedy_generation_equals_argmax_over_full_forwards(mini_model: OracleMoE) -> None:
    prompt = torch.randint(0, 4096, (1, 5))
    generated = mini_model.generate(prompt, max_new_tokens=6)
    tokens = prompt
    for _ in range(6):
        next_token = mini_model(tokens).logits_BSV[:, -1].argmax(dim=-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    assert torch.equal(generated, tokens)


def test_generation_stops_at_a_stop_token(mini_model: OracleMoE) -> None:
    prompt = torch.randint(0, 4096, (1, 5))
    first = int(mini_model.generate(prompt, max_new_tokens=1)[0, -1])
    generated = mini_model.generate(prompt, max_new_tokens=10, stop_token_ids=[first])
    assert generated.shape == (1, 6)
    assert int(generated[0, -1]) == first


def test_seeded_sampling_reproduces(mini_model: OracleMoE) -> None:
    prompt = torch.randint(0, 4096, (2, 4))

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return mini_model.generate(prompt, 8, temperature=1.0, top_k=50, top_p=0.9, generator=generator)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = torch.randn(16, 100)
    greedy = logits.argmax(dim=-1)
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_k=1), greedy)
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_p=1e-6), greedy)


def test_top_p_keeps_only_the_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    generator = torch.Generator().manual_seed(0)
    drawn = {int(sample_next_token(probs.log(), temperature=1.0, top_p=0.75, generator=generator)) for _ in range(300)}
    assert drawn == {0, 1}


def test_sampling_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="top_p"):
        sample_next_token(torch.zeros(1, 4), temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(torch.zeros(1, 4), temperature=-1.0)


def test_inputs_beyond_the_context_are_refused() -> None:
    model = OracleMoE(micro_config(context_length=8))
    with pytest.raises(ValueError, match="context length 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_tied_embeddings_share_one_tensor() -> None:
    model = OracleMoE(micro_config(tie_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight


def test_loss_adds_router_losses_to_cross_entropy_and_trains() -> None:
    torch.manual_seed(0)
    model = OracleMoE(micro_config(bias_balancing=True, bias_update_rate=0.01))
    ids = torch.randint(0, 32, (4, 12))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        total, out = model.loss(ids, labels)
        torch.testing.assert_close(total, lm_loss(out.logits_BSV, labels) + out.aux_loss)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        model.update_router_biases(out.routing)
        first = first if first is not None else total.item()
    assert total.item() < 0.5 * first
    assert model.blocks()[0].moe.router.expert_bias.abs().sum() > 0


def test_the_whole_model_gives_the_same_logits_with_grouped_and_loop_experts() -> None:
    torch.manual_seed(0)
    grouped = OracleMoE(micro_config(moe_impl="grouped", capacity_factor=1.25)).eval()
    loop = OracleMoE(micro_config(moe_impl="loop", capacity_factor=1.25)).eval()
    loop.load_state_dict(grouped.state_dict())
    ids = torch.randint(0, 32, (3, 16))
    torch.testing.assert_close(grouped(ids).logits_BSV, loop(ids).logits_BSV, atol=1e-5, rtol=1e-5)
