"""The recurrent and the encoder-decoder language models (the Llama decoder is in llama.py).

* ``lstm``: embedding -> ``nn.LSTM`` -> head (tied or untied).
* ``seq2seq``: the original Transformer's encoder-decoder (Vaswani et al. 2017), pre-LN.

Built through ``nlpkit.lm.model.build_model(cfg)`` like every model; see layers.py for the shared
building blocks, the config and saving/loading.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from nlpkit.errors import UsageError
from nlpkit.lm.config import ModelConfig
from nlpkit.lm.layers import Attention, FeedForward, lm_loss


class LSTMState:
    def __init__(self) -> None:
        self.hc: Any = None  # (h, c) for an LSTM, h for a GRU or a plain RNN


CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # nn.RNN: h' = tanh(W x + U h), no gates


class LSTMLM(nn.Module):
    """Embedding -> recurrent layers (``cfg.cell``: nn.LSTM by default, nn.GRU, or a plain tanh
    nn.RNN; n_layer layers of n_embd units, dropout between) -> head. The recurrent module keeps
    the attribute name ``lstm`` whatever the cell, so saved LSTM models load unchanged."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = CELLS[cfg.cell](cfg.n_embd, cfg.n_embd, cfg.n_layer, batch_first=True,
                                    dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)  # fmt: skip
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size)
        # U(-0.1, 0.1), the classic LSTM LM initialisation (Zaremba et al. 2014): GPT's N(0, 0.02)
        # makes a tied head's first logits so small that learning starts slowly
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if cfg.cell == "lstm":
            # forget gates open at the start (bias 1: Gers et al. 2000, Jozefowicz et al. 2015):
            # with PyTorch's small random biases the cell halves its memory every step, and on
            # bench_rnn's recall task the LSTM then learned a 20-step gap only half the time
            H = cfg.n_embd
            with torch.no_grad():
                for name, b in self.lstm.named_parameters():
                    if name.startswith("bias_ih"):  # gates in PyTorch's order: input, forget, cell, output
                        b[H : 2 * H] = 1.0
                    elif name.startswith("bias_hh"):
                        b[H : 2 * H] = 0.0
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: LSTMState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.drop(self.embed(idx))  # (B, T, C)
        x, hc = self.lstm(x, cache.hc if cache is not None else None)
        if cache is not None:
            cache.hc = hc
        logits = self.head(self.drop(x))  # (B, T, vocab)
        return logits, lm_loss(logits, targets) if targets is not None else None

    def new_cache(self, B: int = 1, max_len: int = 0) -> LSTMState:
        return LSTMState()

    def step(self, ids: torch.Tensor, cache: LSTMState) -> torch.Tensor:
        return self(ids, cache=cache)[0][:, -1]


# --------------------------------------------------------------------------- encoder-decoder


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1, self.self_attn = nn.LayerNorm(cfg.n_embd), Attention(cfg)
        self.ln_2, self.mlp = nn.LayerNorm(cfg.n_embd), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.ln_1(x), mask=mask))
        return x + self.drop(self.mlp(self.ln_2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1, self.self_attn = nn.LayerNorm(cfg.n_embd), Attention(cfg)
        self.ln_2, self.cross_attn = nn.LayerNorm(cfg.n_embd), Attention(cfg)
        self.ln_3, self.mlp = nn.LayerNorm(cfg.n_embd), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.ln_1(x), causal=True))
        x = x + self.drop(self.cross_attn(self.ln_2(x), memory=memory, mask=mask))
        return x + self.drop(self.mlp(self.ln_3(x)))


class Seq2SeqState:
    """What generation keeps: the encoded source, its padding mask, the output so far."""

    def __init__(self) -> None:
        self.memory: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.out: torch.Tensor | None = None


class Seq2Seq(nn.Module):
    """Encoder-decoder transformer over one shared vocabulary: ``model(src, tgt_in, targets)``."""

    pe: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.pad_id is None or cfg.bos_id is None:
            raise UsageError("an encoder-decoder needs pad and bos token ids")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.encoder_norm = nn.LayerNorm(cfg.n_embd)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.decoder_norm = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("pe", _sinusoids(cfg.block_size, cfg.n_embd), persistent=False)
        # Xavier, as the paper and nn.Transformer: from GPT's N(0, 0.02) attention starts so flat that
        # learning an alignment (reversing a sequence) stalls for hundreds of steps, seed-dependently
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        if idx.size(1) > self.cfg.block_size:
            raise UsageError(f"sequence of {T} tokens is longer than the model's {self.cfg.block_size}")
        return self.drop(self.embed_tokens(idx) * math.sqrt(self.cfg.n_embd) + self.pe[:T])  # (B, T, C)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output (B, S, C) and the mask of real (not padding) source tokens."""
        mask = src.ne(int(self.cfg.pad_id or 0))[:, None, None, :]  # (B, 1, 1, S): True where attended
        x = self._embed(src)
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x), mask

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self._embed(tgt)
        for block in self.decoder:
            x = block(x, memory, mask)
        return self.lm_head(self.decoder_norm(x))  # (B, T, vocab)

    def forward(
        self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.decode(tgt, *self.encode(src))
        return logits, lm_loss(logits, targets) if targets is not None else None

    def new_cache(self, B: int = 1, max_len: int = 0) -> Seq2SeqState:
        return Seq2SeqState()

    def step(self, ids: torch.Tensor, cache: Seq2SeqState) -> torch.Tensor:
        """The first call takes the source; later calls one output token each. The decoder
        reruns over the whole output so far (no self-attention cache: outputs are short)."""
        if cache.memory is None:
            cache.memory, cache.mask = self.encode(ids)
            cache.out = torch.full(
                (ids.size(0), 1), int(self.cfg.bos_id or 0), dtype=torch.long, device=ids.device
            )
        else:
            assert cache.out is not None
            cache.out = torch.cat((cache.out, ids), dim=1)[:, -self.cfg.block_size :]
        assert cache.mask is not None
        return self.decode(cache.out, cache.memory, cache.mask)[:, -1]


def _sinusoids(T: int, C: int) -> torch.Tensor:
    pos = torch.arange(T).float()[:, None]
    div = torch.exp(torch.arange(0, C, 2).float() * (-math.log(10000.0) / C))
    pe = torch.zeros(T, C)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)[:, : C // 2]
    return pe
