"""Oracle MoE: a decoder-only transformer whose feed-forward layers are mixtures of experts.

embed → n_layers × [x + attn(norm(x)); x + moe(norm(x))] → norm → lm_head. Shapes: B batch, S sequence,
D model width, V vocabulary. One forward pass reads top to bottom through this file, moe.py, router.py and
experts.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from oracle.core.attention import Attention
from oracle.core.kv_cache import AnyKVCache, KVCache, SlotKVCache
from oracle.core.norm import RMSNorm
from oracle.core.rope import RotaryEmbedding
from oracle.moe850b.config import MoEConfig
from oracle.moe850b.experts import GroupedExperts
from oracle.moe850b.moe import MoE, RoutingStats
from oracle.moe850b.router import TopKRouter
from oracle.moe850b.sampling import sample_next_token

CacheT = TypeVar("CacheT", KVCache, SlotKVCache)


@dataclass
class ModelOutput:
    logits_BSV: torch.Tensor
    load_balance_loss: torch.Tensor  # mean over layers of the Switch loss
    z_loss: torch.Tensor  # mean over layers of the router z-loss
    aux_loss: torch.Tensor  # the coefficient-weighted sum the trainer adds to the LM loss
    routing: list[RoutingStats]  # one entry per layer


class DecoderBlock(nn.Module):
    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config.hidden_size, config.n_heads, config.n_kv_heads, config.resolved_head_dim)
        self.moe_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.moe = MoE(config)

    def forward(
        self, x_BSD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: AnyKVCache | None, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RoutingStats]:
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), cos, sin, cache, layer)
        moe_out = self.moe(self.moe_norm(x_BSD))
        return x_BSD + moe_out.y_BSD, moe_out.load_balance_loss, moe_out.z_loss, moe_out.stats


class OracleMoE(nn.Module):
    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rope = RotaryEmbedding(config.resolved_head_dim, config.context_length, config.rope_theta)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if self.embed_tokens.weight.device.type != "meta":
            self.init_weights()
        # training only: recompute each block in backward instead of keeping its activations (a recipe's
        # `activation_checkpointing`; the trainer sets it). The same numbers, about a third more compute.
        self.activation_checkpointing = False

    def blocks(self) -> list[DecoderBlock]:
        return [cast(DecoderBlock, layer) for layer in self.layers]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, σ) everywhere; projections that write into the residual stream scaled by 1/√(2·layers)."""
        for name, module in self.named_modules():
            self.init_module(name, module)

    @torch.no_grad()
    def init_module(self, name: str, module: nn.Module) -> None:
        """Initialise the parameters and state that `module` (named `name` in this model) holds itself. One module
        at a time, so a sharded trainer can gather, initialise and re-shard each in turn."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.n_layers)
        if isinstance(module, nn.Linear | nn.Embedding):
            residual_out = name.endswith(("o_proj", "down_proj"))
            nn.init.normal_(module.weight, std=out_std if residual_out else std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, GroupedExperts):
            module.reset_parameters(std, out_std)
        elif isinstance(module, TopKRouter):
            module.expert_bias.zero_()

    def forward(self, input_ids_BS: torch.Tensor, cache: AnyKVCache | None = None) -> ModelOutput:
        S = input_ids_BS.shape[1]
        end = cache.end(S) if cache is not None else S
        if end > self.config.context_length:
            raise ValueError(f"{end} positions exceed the context length {self.config.context_length}")
        if cache is None:
            positions = torch.arange(S, device=input_ids_BS.device)
        else:
            positions = cache.positions(S, input_ids_BS.device)  # (S,) or, per row, (B, S)
        cos, sin = self.rope(positions)
        if cos.dim() == 3:  # per-row positions: broadcast over the heads of (B, H, S, Hd)
            cos, sin = cos[:, None], sin[:, None]
        x_BSD = self.embed_tokens(input_ids_BS)
        load_balance, z, routing = [], [], []
        recompute = self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for index, layer in enumerate(self.blocks()):
            if recompute:  # non-reentrant: ZeRO-3's gather hooks run again for the recomputation, as in forward
                x_BSD, layer_lb, layer_z, stats = checkpoint(layer, x_BSD, cos, sin, None, index, use_reentrant=False)
            else:
                x_BSD, layer_lb, layer_z, stats = layer(x_BSD, cos, sin, cache, index)
            load_balance.append(layer_lb)
            z.append(layer_z)
            routing.append(stats)
        if cache is not None:
            cache.advance(S)
        logits_BSV = self.lm_head(self.norm(x_BSD))
        lb_loss, z_loss = torch.stack(load_balance).mean(), torch.stack(z).mean()
        aux = self.config.router_aux_loss_coef * lb_loss + self.config.router_z_loss_coef * z_loss
        return ModelOutput(logits_BSV, lb_loss, z_loss, aux, routing)

    def loss(self, input_ids_BS: torch.Tensor, labels_BS: torch.Tensor) -> tuple[torch.Tensor, ModelOutput]:
        """Next-token cross-entropy (labels already aligned with the inputs; -100 ignored) plus the router losses."""
        out = self(input_ids_BS)
        lm = lm_loss(out.logits_BSV, labels_BS)
        return lm + out.aux_loss, out

    @torch.no_grad()
    def update_router_biases(self, routing: list[RoutingStats]) -> None:
        """Aux-loss-free balancing: after a step, move each layer's selection bias towards even load."""
        self.update_router_biases_from_counts(torch.stack([stats.tokens_per_expert_E for stats in routing]))

    @torch.no_grad()
    def update_router_biases_from_counts(self, tokens_per_expert_LE: torch.Tensor) -> None:
        """The same from per-layer assignment counts, e.g. summed over micro-batches and data-parallel ranks."""
        for layer, counts_E in zip(self.blocks(), tokens_per_expert_LE.unbind(0), strict=True):
            if layer.moe.router.bias_balancing:
                layer.moe.router.update_bias(counts_E)

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """A cache whose rows all start together (`generate`)."""
        return self._new_cache(KVCache, batch_size, max_length)

    def new_slot_cache(self, n_slots: int, max_length: int | None = None) -> SlotKVCache:
        """A cache of `n_slots` independent sequences (continuous batching, oracle/serve/engine.py)."""
        return self._new_cache(SlotKVCache, n_slots, max_length)

    def _new_cache(self, kind: type[CacheT], rows: int, max_length: int | None) -> CacheT:
        weight = self.embed_tokens.weight
        config = self.config
        length = max_length or config.context_length
        shape = (config.n_layers, rows, config.n_kv_heads, config.resolved_head_dim, length)
        return kind(*shape, dtype=weight.dtype, device=weight.device)

    @torch.no_grad()
    def generate(
        self,
        input_ids_BS: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_token_ids: Iterable[int] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt plus up to max_new_tokens new tokens, decoded with the KV cache. A row that produced a stop token
        keeps repeating it until every row has stopped (or the budget is spent)."""
        B, S = input_ids_BS.shape
        total = min(S + max_new_tokens, self.config.context_length)
        cache = self.new_cache(B, total)
        stops = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=input_ids_BS.device)
        finished_B = torch.zeros(B, dtype=torch.bool, device=input_ids_BS.device)
        tokens_BS = input_ids_BS
        step_input_BS = input_ids_BS
        for _ in range(total - S):
            logits_BV = self(step_input_BS, cache).logits_BSV[:, -1]
            next_B = sample_next_token(
                logits_BV, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            next_B = torch.where(finished_B, tokens_BS[:, -1], next_B)
            tokens_BS = torch.cat([tokens_BS, next_B[:, None]], dim=1)
            finished_B |= torch.isin(next_B, stops)
            if bool(finished_B.all()):
                break
            step_input_BS = next_B[:, None]
        return tokens_BS


def lm_loss(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), labels_BS.flatten(), ignore_index=-100)
