"""The Llama-family decoder (Hugging Face layout and tensor names)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from nlpkit.errors import UsageError
from nlpkit.lm.config import ModelConfig
from nlpkit.lm.kv_cache import KVCache
from nlpkit.lm.layers import Attention, RMSNorm, Rotary, SwiGLU, _init_weights, frozen_head_loss, lm_loss

# --------------------------------------------------------------------------- llama


class LlamaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, rope: Any, mask: Any, causal: bool, cache: Any, pos: int
    ) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), rope, None, mask, causal, cache, pos))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class LlamaBody(nn.Module):
    """Hugging Face's ``LlamaModel``: the ``model.`` prefix of every tensor name."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)


class Llama(nn.Module):
    """Decoder-only transformer; ``Llama(cfg).state_dict()`` keys are LlamaForCausalLM's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.hs, cfg.block_size, cfg.rope_theta)
        self.drop = nn.Dropout(cfg.dropout)
        _init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and the loss against ``targets``; with a cache, the positions
        continue from ``cache.pos`` and only the last position's logits are computed.

        ``pad_mask`` (B, T), True for real tokens, starts a cache on left-padded prompts:
        padding is never attended to and each row's positions count its real tokens only.
        """
        x = self.hidden(idx, cache, pad_mask)  # (B, T, C)
        if targets is not None and self.training and cache is None and not self.lm_head.weight.requires_grad:
            # a frozen head (LoRA): the loss without materialising the logits, which nobody reads
            return x.new_empty(0), frozen_head_loss(
                x.to(self.lm_head.weight.dtype), self.lm_head.weight, targets
            )
        if cache is not None:
            cache.pos += idx.size(1)
            x = x[:, -1:]  # generation needs the last position only
        logits = self.lm_head(x.to(self.lm_head.weight.dtype))  # (B, T, vocab)
        return logits, lm_loss(logits, targets) if targets is not None else None

    def hidden(
        self, idx: torch.Tensor, cache: KVCache | None = None, pad_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final norm's output (B, T, C): what the language-model head, a reward model's
        score head and a value head read. Does not advance ``cache.pos``."""
        T = idx.size(1)
        pos = cache.pos if cache is not None else 0
        limit = cache.max_len if cache is not None else self.cfg.block_size
        if pos + T > limit:
            raise UsageError(f"sequence of {pos + T} tokens is longer than the model's {limit}")
        # the residual stream keeps the norms' dtype (float32 also when the matrices are float16)
        x = self.drop(self.model.embed_tokens(idx)).to(self.model.norm.weight.dtype)  # (B, T, C)
        rope, mask = self.rotary(pos, T), None
        if pos > 0 and T > 1:  # new queries see all cached keys and the causal part of their own
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=idx.device).tril(diagonal=pos)
        if cache is not None and (pad_mask is not None or cache.valid is not None):
            rope, mask = self._padded(cache, pad_mask, T)
        for i, block in enumerate(self.model.layers):
            x = block(x, rope, mask, pos == 0, cache.layers[i] if cache is not None else None, pos)
        return self.model.norm(x)

    def _padded(
        self, cache: KVCache, pad_mask: torch.Tensor | None, T: int
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Per-row rotary tables and the (B, 1, T, S) attention mask of a left-padded batch."""
        pos, dev = cache.pos, self.model.norm.weight.device
        B = cache.layers[0].k.size(0)
        if cache.valid is None:
            cache.valid = torch.ones(B, cache.max_len, dtype=torch.bool, device=dev)
            cache.next_pos = torch.zeros(B, dtype=torch.long, device=dev)
        assert cache.next_pos is not None
        real = (
            pad_mask.to(dev, torch.bool)
            if pad_mask is not None
            else torch.ones(B, T, dtype=torch.bool, device=dev)
        )
        cache.valid[:, pos : pos + T] = real
        positions = cache.next_pos[:, None] + real.long().cumsum(1) - 1  # (B, T)
        cache.next_pos = cache.next_pos + real.long().sum(1)
        causal = torch.ones(T, pos + T, dtype=torch.bool, device=dev).tril(diagonal=pos)
        mask = causal[None] & cache.valid[:, None, : pos + T]  # (B, T, S)
        mask |= ~real[:, :, None]  # a padding query attends to everything (its output is unused)
        return self.rotary.at(positions.clamp(min=0)), mask[:, None]

    def new_cache(self, B: int = 1, max_len: int = 0) -> KVCache:
        """A KV cache for B rows of up to ``max_len`` positions (0: the model's block size)."""
        w = self.lm_head.weight
        return KVCache(self.cfg, B, w.dtype, w.device, max_len)

    def step(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self(ids, cache=cache)[0][:, -1]
