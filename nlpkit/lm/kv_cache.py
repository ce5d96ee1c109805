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

    # ---- continuous batching (nlpkit.serve.engine): rows join and leave a running batch.
    # Every row is right-aligned at ``pos`` (its real tokens end there, padding before them),
    # so one step writes one column for all rows; ``valid`` masks the padding and ``next_pos``
    # keeps each row's own rotary position. Each operation returns a new cache (or self) and
    # leaves the one it was called on unusable.

    @property
    def rows(self) -> int:
        return self.layers[0].k.size(0)

    def lengths(self) -> torch.Tensor:
        """(B,) real tokens of each row (padding excluded)."""
        if self.next_pos is not None:
            return self.next_pos.clone()
        return torch.full((self.rows,), self.pos, dtype=torch.long, device=self.layers[0].k.device)

    def select(self, rows: list[int]) -> KVCache:
        """Keep only ``rows`` (in that order): drop the finished members of a batch."""
        index = torch.tensor(rows, dtype=torch.long, device=self.layers[0].k.device)
        out = self._like(len(rows), self.max_len, self.pos)
        for mine, theirs in zip(out.layers, self.layers, strict=True):
            mine.k[:, :, : self.pos] = theirs.k[index, :, : self.pos]
            mine.v[:, :, : self.pos] = theirs.v[index, :, : self.pos]
        assert out.valid is not None
        out.valid[:, : self.pos] = self._valid()[index, : self.pos]
        out.next_pos = self.lengths()[index]
        return out

    def merge(self, other: KVCache, room: int = 0) -> KVCache:
        """The rows of ``self`` then those of ``other`` (a fresh prefill), right-aligned at the
        longer of the two ``pos`` (the shorter side is padded on the left), with ``room`` free
        columns after ``pos`` for the coming steps. Both must hold the same dtype."""
        pos = max(self.pos, other.pos)
        out = self._like(self.rows + other.rows, pos + room, pos)
        assert out.valid is not None
        start = 0
        for part in (self, other):
            off, rows = pos - part.pos, slice(start, start + part.rows)
            for mine, theirs in zip(out.layers, part.layers, strict=True):
                mine.k[rows, :, off:pos] = theirs.k[:, :, : part.pos]
                mine.v[rows, :, off:pos] = theirs.v[:, :, : part.pos]
            out.valid[rows, :off] = False
            out.valid[rows, off:pos] = part._valid()[:, : part.pos]
            start += part.rows
        out.next_pos = torch.cat([self.lengths(), other.lengths()])
        return out

    def compact(self, room: int) -> KVCache:
        """Drop the leading columns that are padding in every row, and make sure ``room``
        columns are free after ``pos``; returns ``self`` when nothing needs to move."""
        valid = self._valid()[:, : self.pos]
        used = valid.any(0).nonzero()
        first = int(used[0]) if used.numel() else self.pos
        if first == 0 and self.pos + room <= self.max_len:
            return self
        pos = self.pos - first
        out = self._like(self.rows, pos + room, pos)
        for mine, theirs in zip(out.layers, self.layers, strict=True):
            mine.k[:, :, :pos] = theirs.k[:, :, first : self.pos]
            mine.v[:, :, :pos] = theirs.v[:, :, first : self.pos]
        assert out.valid is not None
        out.valid[:, :pos] = valid[:, first:]
        out.next_pos = self.lengths()
        return out

    def _valid(self) -> torch.Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.rows, self.max_len, dtype=torch.bool, device=self.layers[0].k.device)

    def _like(self, B: int, max_len: int, pos: int) -> KVCache:
        """An empty cache of B rows and ``max_len`` columns with this one's layout and dtype."""
        k = self.layers[0].k
        out = KVCache.__new__(KVCache)
        out.max_len, out.pos = max_len, pos
        n_kv, hs = k.size(1), k.size(3)
        out.layers = [LayerCache(B, n_kv, max_len, hs, k.dtype, k.device) for _ in self.layers]
        out.valid = torch.zeros(B, max_len, dtype=torch.bool, device=k.device)
        out.next_pos = torch.zeros(B, dtype=torch.long, device=k.device)
        return out


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
