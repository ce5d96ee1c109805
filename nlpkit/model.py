"""Every language model nlpkit trains: an LSTM, a Llama-family decoder, an encoder-decoder (the
LSTM and the encoder-decoder themselves live in seqmodels.py).

    cfg = ModelConfig(arch="llama", vocab_size=70, n_layer=2, n_embd=32, n_head=4)
    model = build_model(cfg)
    logits, loss = model(idx, targets)        # idx, targets: (B, T) token ids
    save_model(model, cfg, "out/")            # config.json + model.safetensors
    model, cfg = load_model("out/")

* ``lstm``: embedding -> ``nn.LSTM`` -> head (tied or untied).
* ``llama``: RMSNorm, rotary position embeddings (Hugging Face's rotate-halves layout), SwiGLU,
  grouped-query attention through ``scaled_dot_product_attention``, optional tied embeddings and
  a KV cache. Parameter names and ``config.json`` keys are Hugging Face's Llama ones, so an
  nlpkit folder loads in ``transformers.LlamaForCausalLM`` (and SmolLM2's weights load here).
* ``seq2seq``: the original Transformer's encoder-decoder (Vaswani et al. 2017): sinusoidal
  positions, encoder layers of self-attention + feed-forward, decoder layers of masked
  self-attention + encoder-decoder attention + feed-forward, one embedding shared by source,
  target and output, the paper's Xavier initialisation. One change from the paper: LayerNorm
  before each sublayer (pre-LN, as in GPT-2), which trains without the paper's careful warmup.

Every model offers ``new_cache(batch)`` and ``step(ids, cache) -> (B, vocab) logits`` for
generation: a KV cache (llama), the recurrent state (lstm), the encoded source (seq2seq).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.decoding import KVCache, LayerCache
from nlpkit.errors import DataError, InputMissing, UsageError

ARCHS = ("lstm", "llama", "seq2seq")
MODEL_TYPES = {"lstm": "nlpkit-lstm", "llama": "llama", "seq2seq": "nlpkit-seq2seq"}
IGNORE = -100  # target id that takes no part in the loss (Hugging Face's convention)


@dataclass
class ModelConfig:
    """The shape of a model; ``to_hf``/``from_hf`` map it to and from config.json.

    Field names are nanoGPT's (the flags mirror them: ``--n-embd``); config.json uses
    Hugging Face's keys (``hidden_size``...), so transformers reads a llama folder as it is.
    """

    arch: str = "llama"
    vocab_size: int = 256
    block_size: int = 256  # longest sequence trained on (max_position_embeddings)
    n_layer: int = 4  # layers (seq2seq: in the encoder and in the decoder each)
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads; None: n_head; fewer: grouped-query attention
    head_dim: int | None = None  # None: n_embd // n_head
    intermediate_size: int | None = None  # feed-forward width; None: see ffn_size()
    dropout: float = 0.0
    tie_embeddings: bool = True  # the output head shares the token embedding matrix
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UsageError(f"unknown architecture {self.arch!r}", hint=f"use one of {', '.join(ARCHS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_embd", "n_head"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError("--dropout must be in [0, 1)")
        if self.arch == "lstm":
            return
        if self.head_dim is None and self.n_embd % self.n_head:
            raise UsageError(f"--n-embd {self.n_embd} is not a multiple of --n-head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise UsageError(f"--n-head {self.n_head} is not a multiple of --n-kv-head {self.kv_heads}")
        if self.hs % 2:
            raise UsageError(f"the head size ({self.hs}) must be even for rotary embeddings")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hs(self) -> int:
        """Size of one attention head."""
        return self.head_dim or self.n_embd // self.n_head

    def ffn_size(self) -> int:
        """SwiGLU's three matrices of 8/3 n_embd (floored to 16) hold as many weights as a GPT-2
        MLP's two of 4 n_embd (576 -> 1536, SmolLM2's); seq2seq keeps the paper's 4 n_embd."""
        if self.intermediate_size:
            return self.intermediate_size
        return 4 * self.n_embd if self.arch == "seq2seq" else 8 * self.n_embd // 3 // 16 * 16 or 16

    def to_hf(self) -> dict[str, Any]:
        """config.json: Hugging Face's keys (LlamaConfig for llama), nlpkit's extras under "nlpkit"."""
        d: dict[str, Any] = {"model_type": MODEL_TYPES[self.arch]}
        d |= {hf: getattr(self, ours) for ours, hf in _HF_KEYS.items()}
        if self.arch == "llama":
            d |= {"architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "attention_bias": False,
                  "mlp_bias": False, "attention_dropout": 0.0}  # fmt: skip
        else:  # no attention heads in an LSTM, no rotary embeddings or RMSNorm in either
            d = {k: v for k, v in d.items() if k not in ("rope_theta", "rms_norm_eps")}
            d |= {"hidden_act": "relu"} if self.arch == "seq2seq" else {}
        if self.arch != "lstm":
            d |= {
                "intermediate_size": self.ffn_size(),
                "num_key_value_heads": self.kv_heads,
                "head_dim": self.hs,
            }
        else:
            d.pop("num_attention_heads")
        d |= {"torch_dtype": "float32", "nlpkit": {"arch": self.arch, "dropout": self.dropout}}
        return d

    @classmethod
    def from_hf(cls, d: dict[str, Any], where: str = "config.json") -> ModelConfig:
        """Read a config.json written by nlpkit or by transformers (a Llama checkpoint)."""
        extra = d.get("nlpkit") or {}
        arch = extra.get("arch") or {v: k for k, v in MODEL_TYPES.items()}.get(d.get("model_type", ""))
        if arch is None:
            raise DataError(f"unsupported model_type {d.get('model_type')!r}", where=where,
                            hint="nlpkit reads llama, nlpkit-lstm and nlpkit-seq2seq models")  # fmt: skip
        kw: dict[str, Any] = {ours: d[hf] for ours, hf in _HF_KEYS.items() if d.get(hf) is not None}
        if "rope_theta" not in kw and isinstance(d.get("rope_parameters"), dict):  # transformers >= 5
            kw["rope_theta"] = d["rope_parameters"].get("rope_theta", 10000.0)
        kw["intermediate_size"] = d.get("intermediate_size")
        kw["n_kv_head"], kw["head_dim"] = d.get("num_key_value_heads"), d.get("head_dim")
        plain = not (d.get("rope_scaling") or d.get("attention_bias") or d.get("mlp_bias"))
        if arch == "llama" and (d.get("hidden_act", "silu") != "silu" or not plain):
            raise DataError("only plain Llama models (silu, no rope scaling, no biases) load", where=where)
        try:
            return cls(arch=arch, dropout=float(extra.get("dropout", 0.0)), **kw)
        except (UsageError, TypeError) as e:
            raise DataError(f"invalid model config ({e})", where=where) from None


_HF_KEYS = {
    "vocab_size": "vocab_size", "block_size": "max_position_embeddings", "n_layer": "num_hidden_layers",
    "n_embd": "hidden_size", "n_head": "num_attention_heads", "tie_embeddings": "tie_word_embeddings",
    "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps", "bos_id": "bos_token_id",
    "eos_id": "eos_token_id", "pad_id": "pad_token_id",
}  # fmt: skip


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
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.hs, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.hs, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.hs, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.hs, cfg.n_embd, bias=False)
        self.qkv: torch.Tensor | None = None  # see fuse_projections()
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
            q, k, v = F.linear(x.to(self.qkv.dtype), self.qkv).split(self.splits, -1)
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
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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
        x = self.model.norm(x)
        if cache is not None:
            cache.pos += T
            x = x[:, -1:]  # generation needs the last position only
        logits = self.lm_head(x.to(self.lm_head.weight.dtype))  # (B, T, vocab)
        return logits, lm_loss(logits, targets) if targets is not None else None

    def _padded(
        self, cache: KVCache, pad_mask: torch.Tensor | None, T: int
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Per-row rotary tables and the (B, 1, T, S) attention mask of a left-padded batch."""
        pos, dev = cache.pos, self.lm_head.weight.device
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


# --------------------------------------------------------------------------- folders


def build_model(cfg: ModelConfig) -> nn.Module:
    from nlpkit.seqmodels import LSTMLM, Seq2Seq

    return {"lstm": LSTMLM, "llama": Llama, "seq2seq": Seq2Seq}[cfg.arch](cfg)


def count_params(model: nn.Module) -> int:
    """Parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters())


def save_model(
    model: nn.Module, cfg: ModelConfig, folder: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """config.json and model.safetensors (each written atomically); a tied head is not stored,
    as transformers does."""
    from nlpkit.formats import provenance, save_tensors, write_bytes_atomic

    folder = Path(folder)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state = {k: v for k, v in state.items() if k not in ("lm_head.weight", "head.weight")}
    meta = provenance(**(metadata or {}), format="pt")
    meta["nlpkit.config"] = json.dumps(cfg.to_hf())
    save_tensors(str(folder / "model.safetensors"), state, meta, kind=f"model.{cfg.arch}")
    write_bytes_atomic(folder / "config.json", (json.dumps(cfg.to_hf(), indent=2) + "\n").encode())


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise InputMissing(
            "no such model folder", where=str(folder), hint="give a folder written by nlpkit train-*"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputMissing("no config.json in the model folder", where=str(folder)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"config.json is not valid JSON ({e})", where=str(path)) from None
    if not isinstance(data, dict):
        raise DataError("config.json is not a JSON object", where=str(path))
    return ModelConfig.from_hf(data, str(path))


def load_model(folder: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """A model folder's network in eval mode: config.json + model.safetensors (never a pickle)."""
    from nlpkit.formats import load_tensors

    cfg = read_config(folder)
    path = str(Path(folder) / "model.safetensors")
    tensors, _ = load_tensors(path)
    with torch.device("meta"):
        model = build_model(cfg)
    model = model.to_empty(device=device)
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    expected = set(model.state_dict())
    if cfg.tie_embeddings:
        expected -= {"lm_head.weight", "head.weight"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise DataError(
            f"tensors do not match config.json (missing {missing[:3]}, unexpected {extra[:3]})", where=path
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise DataError(f"tensor shapes do not match config.json ({str(e)[:300]})", where=path) from None
    _reset_buffers(model, cfg, device)
    if cfg.tie_embeddings:  # to_empty() gave the head its own tensor: share it again
        head, embedding = _head_and_embedding(model)
        head.weight = embedding.weight
    return model.eval(), cfg


def _head_and_embedding(model: nn.Module) -> tuple[nn.Linear, nn.Embedding]:
    from nlpkit.seqmodels import LSTMLM, Seq2Seq

    if isinstance(model, Llama):
        return model.lm_head, model.model.embed_tokens
    if isinstance(model, LSTMLM):
        return model.head, model.embed
    assert isinstance(model, Seq2Seq)
    return model.lm_head, model.embed_tokens


def _reset_buffers(model: nn.Module, cfg: ModelConfig, device: str) -> None:
    """Non-persistent buffers (rotary tables, sinusoids) are not in the file: rebuild them."""
    from nlpkit.seqmodels import Seq2Seq, _sinusoids

    if isinstance(model, Llama):
        model.rotary = Rotary(cfg.hs, cfg.block_size, cfg.rope_theta).to(device)
    elif isinstance(model, Seq2Seq):
        model.pe = _sinusoids(cfg.block_size, cfg.n_embd).to(device)
