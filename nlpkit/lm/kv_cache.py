"""What generation needs beyond the model itself: the KV cache, and the decoding copy of a
Llama (float16 matrices with a float32 residual stream, fused projections).

    cache = model.new_cache(batch, max_len)           # a KVCache, filled by model(idx, cache=cache)
    decoder = fuse_projections(half_matrices(copy.deepcopy(model), torch.float16))

Used by generate.Generator: the prompt runs through the float32 model, then the cache is
handed (``cache.to(torch.float16)``) to the decoder for one token at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from nlpkit.lm.config import ModelConfig


class LayerCache:
    """One layer's keys and values of past positions, preallocated: (B, n_kv_head, max_len, hs)."""

    def __init__(self, B: int, n_kv: int, max_len: int, hs: int, dtype: torch.dtype, device: Any):
        self.k = torch.zeros(B, n_kv, max_len, hs, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)
        self.k[:, :, pos : pos + T] = k
        self.v[:, :, pos : pos + T] = v
        return self.k[:, :, : pos + T], self.v[:, :, : pos + T]


class KVCache:
    """Keys and values for every layer, and how many positions they hold (``pos``).

    Batched prompts of different lengths are left-padded: ``valid`` (B, max_len) marks the
    real tokens (None: all are real) and ``next_pos`` (B,) is each row's next position.
    """

    def __init__(self, cfg: ModelConfig, B: int, dtype: torch.dtype, device: Any, max_len: int = 0):
        self.max_len = min(max_len or cfg.block_size, cfg.block_size)
        self.layers = [
            LayerCache(B, cfg.kv_heads, self.max_len, cfg.hs, dtype, device) for _ in range(cfg.n_layer)
        ]
        self.pos = 0
        self.valid: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None

    def to(self, dtype: torch.dtype) -> KVCache:
        """The same cache with keys and values in ``dtype`` (a prefill in float32 handing over
        to a float16 decoder)."""
        for layer in self.layers:
            layer.k, layer.v = layer.k.to(dtype), layer.v.to(dtype)
        return self


def half_matrices(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """For decoding only: the matrices (linear layers, embeddings) in ``dtype``, the norms and
    the rotary tables in float32, so the residual stream stays float32 (SmolLM2's reaches
    ~2.5e4, where float16's step is 16) while the bytes read per token are halved."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear | nn.Embedding):
            mod.to(dtype)
    return model


def fuse_projections(model: nn.Module) -> nn.Module:
    """For inference only: concatenate each layer's q/k/v and gate/up matrices, so a generated
    token costs two matrix-vector products fewer per layer (kernel launches dominate when
    decoding one token). The separate parameters become views of the fused matrices, so
    ``state_dict()`` and saving are unchanged; training the fused model is not supported."""
    from nlpkit.lm.layers import Attention, SwiGLU

    for mod in model.modules():
        if isinstance(mod, Attention) and mod.qkv is None:
            qkv = torch.cat([mod.q_proj.weight, mod.k_proj.weight, mod.v_proj.weight]).detach()
            mod.qkv = qkv
            q, k, v = qkv.split(mod.splits)
            mod.q_proj.weight, mod.k_proj.weight, mod.v_proj.weight = (
                nn.Parameter(t, False) for t in (q, k, v)
            )
            if mod.q_proj.bias is not None:  # Qwen2
                assert mod.k_proj.bias is not None and mod.v_proj.bias is not None
                mod.qkv_bias = torch.cat([mod.q_proj.bias, mod.k_proj.bias, mod.v_proj.bias]).detach()
        elif isinstance(mod, SwiGLU) and mod.gate_up is None:
            gate_up = torch.cat([mod.gate_proj.weight, mod.up_proj.weight]).detach()
            mod.gate_up = gate_up
            g, u = gate_up.chunk(2)
            mod.gate_proj.weight, mod.up_proj.weight = nn.Parameter(g, False), nn.Parameter(u, False)
    return model
