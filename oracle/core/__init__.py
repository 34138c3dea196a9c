"""Building blocks of the decoder: RMSNorm, rotary embeddings, grouped-query attention, KV cache, SwiGLU MLP."""

from oracle.core.attention import Attention
from oracle.core.kv_cache import KVCache
from oracle.core.mlp import SwiGLU
from oracle.core.norm import RMSNorm
from oracle.core.rope import RotaryEmbedding, apply_rotary

__all__ = ["Attention", "KVCache", "RMSNorm", "RotaryEmbedding", "SwiGLU", "apply_rotary"]
