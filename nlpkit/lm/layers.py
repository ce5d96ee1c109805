"""Transformer layers: RMSNorm, rotary embeddings, attention, SwiGLU feed-forward, the LM loss."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.lm.config import IGNORE, ModelConfig
from nlpkit.lm.kv_cache import LayerCache

# --------------------------------------------------------------------------- building blocks


class _RMSNormFn(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * w with a hand-written backward: on the CPU, half the time of
    ``F.rms_norm``, whose backward autograd derives from its half-dozen elementwise ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # (B, T, 1)
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, w)
        return xhat * w

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        xhat, rstd, w = ctx.saved_tensors
        gw = g * w
        dx = (gw - xhat * (gw * xhat).mean(-1, keepdim=True)).mul_(rstd)
        dw = (g * xhat).sum(dim=tuple(range(g.dim() - 1)))
        return dx, dw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype or not torch.is_grad_enabled():  # mixed dtypes, inference
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        return _RMSNormFn.apply(x, self.weight, self.eps)


class Rotary(nn.Module):
    """Tables of rotary embeddings, Hugging Face layout: the first half of a head is rotated
    against its second half, ``x * cos + cat(-x2, x1) * sin`` (GGUF files interleave pairs;
    convert by permuting rows). ``cat(-x2, x1)`` is ``roll(x, hs/2) * [-1..., 1...]``, so the
    sign is folded into the sin table (``sin_f``; ``sin_b`` is its roll, for the backward)."""

    cos: torch.Tensor
    sin_f: torch.Tensor
    sin_b: torch.Tensor

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        freqs = torch.outer(torch.arange(max_len).float(), inv_freq)  # (T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
        sign = torch.cat((-torch.ones(head_dim // 2), torch.ones(head_dim // 2)))
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin_f", emb.sin() * sign, persistent=False)
        self.register_buffer("sin_b", (emb.sin() * sign).roll(-(head_dim // 2), -1), persistent=False)

    def forward(self, pos: int, T: int) -> tuple[torch.Tensor, ...]:
        """The tables of positions pos..pos+T-1, shaped (T, 1, hs) to broadcast over heads."""
        return self.cos[pos : pos + T, None], self.sin_f[pos : pos + T, None], self.sin_b[pos : pos + T, None]

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tables of each row's own positions (B, T): shaped (B, T, 1, hs)."""
        return self.cos[positions, None], self.sin_f[positions, None], self.sin_b[positions, None]


class _RopeFn(torch.autograd.Function):
    """y = x * cos + roll(x, h) * sin_f; dx = g * cos + roll(g, -h) * sin_b: three kernels each
    way instead of autograd's chunk/neg/cat/mul/mul/add and their backward."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin_f: torch.Tensor, sin_b: torch.Tensor
    ) -> Any:
        ctx.save_for_backward(cos, sin_b)
        return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, -1), sin_f)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        cos, sin_b = ctx.saved_tensors
        return torch.addcmul(g * cos, g.roll(-(g.size(-1) // 2), -1), sin_b), None, None, None


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Rotate (B, T, nh, hs) queries or keys by their positions' angles."""
    if not torch.is_grad_enabled():  # inference: skip the autograd.Function machinery
        cos, sin_f = rope[0].to(x.dtype), rope[1].to(x.dtype)
        return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, -1), sin_f)
    return _RopeFn.apply(x, *(t.to(x.dtype) for t in rope))


class Attention(nn.Module):
    """Multi-head attention, grouped-query when n_kv_head < n_head: self-attention over x, or
    cross-attention from x to ``memory`` (the encoder's output)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hs, self.dropout = cfg.n_head, cfg.kv_heads, cfg.hs, cfg.dropout
        bias = cfg.qkv_bias  # Qwen2
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.hs, bias=bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.hs, bias=bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.hs, bias=bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.hs, cfg.n_embd, bias=False)
        self.qkv: torch.Tensor | None = None  # see fuse_projections()
        self.qkv_bias: torch.Tensor | None = None
        self.splits = [cfg.n_head * cfg.hs, cfg.kv_heads * cfg.hs, cfg.kv_heads * cfg.hs]

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...] | None = None,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: LayerCache | None = None,
        pos: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x.size()
        src = x if memory is None else memory
        if self.qkv is not None and memory is None:  # fused for inference: one matrix-vector product
            q, k, v = F.linear(x.to(self.qkv.dtype), self.qkv, self.qkv_bias).split(self.splits, -1)
            q, k = q.view(B, T, self.n_head, self.hs), k.view(B, T, self.n_kv, self.hs)
            v = v.view(B, T, self.n_kv, self.hs).transpose(1, 2)
        else:
            q = self.q_proj(x).view(B, T, self.n_head, self.hs)  # (B, T, nh, hs)
            k = self.k_proj(src).view(B, -1, self.n_kv, self.hs)  # (B, S, nkv, hs)
            v = self.v_proj(src).view(B, -1, self.n_kv, self.hs).transpose(1, 2)  # (B, nkv, S, hs)
        if rope is not None:  # before the transpose: contiguous rows are a few % faster
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hs), (B, nkv, S, hs)
        if cache is not None:
            k, v = cache.update(k, v, pos)
        if T == 1 and cache is not None and not torch.is_grad_enabled():
            return self.o_proj(self._one_query(q, k, v, mask).reshape(B, 1, self.n_head * self.hs))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv != self.n_head,
        )  # fmt: skip  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hs))

    def _one_query(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of one new token over the cache, as three small products: on the CPU,
        ``scaled_dot_product_attention``'s flash kernel costs ~10x more for a single query.
        The query heads that share a key/value head are grouped, so nothing is repeated."""
        B, S, rep = q.size(0), k.size(2), self.n_head // self.n_kv
        qg = q.reshape(B, self.n_kv, rep, self.hs).float()  # (B, nkv, rep, hs); float32 math, tiny here
        att = torch.matmul(qg, k.float().transpose(-1, -2)) * (1.0 / math.sqrt(self.hs))  # (B, nkv, rep, S)
        if mask is not None:  # (B, 1, 1, S) for a padded batch
            att = att.masked_fill(~mask.reshape(B, 1, 1, S), float("-inf"))
        return torch.matmul(att.softmax(-1), v.float()).to(q.dtype)  # (B, nkv, rep, hs)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.ffn_size(), bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.ffn_size(), bias=False)
        self.down_proj = nn.Linear(cfg.ffn_size(), cfg.n_embd, bias=False)
        self.gate_up: torch.Tensor | None = None  # see fuse_projections()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = F.linear(x.to(self.gate_up.dtype), self.gate_up).chunk(2, -1)
            return self.down_proj(F.silu(gate).mul_(up))
        if torch.is_grad_enabled():
            return self.down_proj(_SwiGLUFn.apply(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _SwiGLUFn(torch.autograd.Function):
    """silu(gate) * up, saving gate and up only (autograd would also keep silu(gate): a third
    (B, T, ffn) tensor per layer, the largest activations of a LoRA step)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        s = torch.sigmoid(gate)
        d_up = g * gate * s  # g * silu(gate)
        d_gate = (g * up).mul_(s * (1.0 + gate * (1.0 - s)))  # silu'(x) = s (1 + x (1 - s))
        return d_gate, d_up


class FeedForward(nn.Module):
    """The original Transformer's position-wise feed-forward layer (ReLU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.ffn_size())
        self.fc2 = nn.Linear(cfg.ffn_size(), cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _init_weights(model: nn.Module, n_layer: int) -> None:
    """nanoGPT's (GPT-2's) initialisation: N(0, 0.02), residual projections scaled by
    1/sqrt(2 n_layer) so the residual stream does not grow with depth."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = (
                0.02 / math.sqrt(2 * n_layer)
                if name.endswith(("o_proj.weight", "down_proj.weight", "fc2.weight"))
                else 0.02
            )
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE
    )


class _FrozenHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of ``x W^T`` against ``targets`` for a frozen head W (LoRA, QLoRA):
    rows are taken a chunk at a time, so the (N, vocab) logits never exist whole, and since W
    takes no gradient the forward already computes d loss / dx = (softmax - onehot) W, the only
    thing the backward needs. Same arithmetic as logits + ``lm_loss``, a fraction of the memory."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        N, chunk = x.size(0), max(1, 2**24 // w.size(0))  # (chunk, vocab) float32 logits: 64 MB
        grad = torch.empty_like(x)  # (N, C)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for i in range(0, N, chunk):
            logits = F.linear(x[i : i + chunk], w).float()  # (n, vocab)
            t = targets[i : i + chunk]
            lse = torch.logsumexp(logits, -1)  # (n,)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            p[torch.arange(len(t), device=t.device), t] -= 1.0
            grad[i : i + chunk] = (p.to(w.dtype) @ w).to(x.dtype)
        ctx.save_for_backward(grad)
        ctx.n = max(N, 1)
        return total / ctx.n

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * (g / ctx.n), None, None


def frozen_head_loss(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``lm_loss(F.linear(x, w), targets)`` for a head that does not train: only the positions
    with a target are computed (prompt tokens of fine-tuning data cost nothing), in chunks."""
    keep = targets.reshape(-1) != IGNORE  # (B*T,)
    rows = x.reshape(-1, x.size(-1))[keep]  # (N, C)
    if not torch.is_grad_enabled() or not rows.requires_grad:
        return lm_loss(F.linear(rows, w), targets.reshape(-1)[keep])
    return _FrozenHeadLoss.apply(rows, w, targets.reshape(-1)[keep])
