"""Activation checkpointing (a recipe's `activation_checkpointing`): each decoder block is recomputed in backward
instead of keeping its activations; losses and gradients are the same, and fewer tensors are saved for backward."""

from __future__ import annotations

import torch

from oracle.moe850b.config import load_config
from oracle.moe850b.model import OracleMoE


def _step(model: OracleMoE, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    model.zero_grad(set_to_none=True)
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        loss, _ = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved


def test_recomputing_each_block_gives_the_same_loss_and_gradients_and_saves_less() -> None:
    torch.manual_seed(0)
    model = OracleMoE(load_config("oracle-mini")).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 65))
    loss, grads, saved = _step(model, ids)
    model.activation_checkpointing = True
    loss_ac, grads_ac, saved_ac = _step(model, ids)
    assert torch.equal(loss, loss_ac)
    assert grads.keys() == grads_ac.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ac[name], grad, rtol=0, atol=1e-6, msg=name)
    assert saved_ac < saved / 2  # only each block's input (and the head) is kept through forward
    with torch.no_grad():  # inference and the KV-cache path never recompute
        model.eval()
        assert model(ids).logits_BSV.shape[:2] == ids.shape
