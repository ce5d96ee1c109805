"""A BERT encoder in plain PyTorch, loading Hugging Face ``BertModel`` folders as they are.

Embeddings (word + position + token type, then LayerNorm), N post-LN layers of multi-head
self-attention and a GELU feed-forward, exactly as ``transformers.BertModel`` computes them
(without dropout: inference only). ``SentenceBert`` adds mean pooling over the real tokens and
L2 normalisation, the sentence-transformers recipe of all-MiniLM-L6-v2:

    model = load_bert("folder/")                   # config.json + model.safetensors
    emb = SentenceBert(model)(input_ids, attention_mask)  # (B, C) unit rows

Tensor names are Hugging Face's (``encoder.layer.0.attention.self.query.weight``...), with or
without the ``bert.`` prefix of ``BertFor*`` checkpoints; the pooler and heads are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.embed.config import ACTIVATIONS, BertConfig
from nlpkit.errors import DataError, InputMissing

# Hugging Face name inside ``encoder.layer.N.`` -> ours inside ``layers.N.``
LAYER_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "ln_attn",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "ln_ffn",
}
IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")


class Layer(nn.Module):
    """Self-attention then feed-forward, each followed by residual + LayerNorm (post-LN)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        C, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.n_head, self.head_size = cfg.num_attention_heads, C // cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.attn_out, self.ln_attn = nn.Linear(C, C), nn.LayerNorm(C, eps=eps)
        self.ffn_up, self.ffn_down = nn.Linear(C, cfg.intermediate_size), nn.Linear(cfg.intermediate_size, C)
        self.ln_ffn = nn.LayerNorm(C, eps=eps)
        self.approximate = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_size  # Python ints: constants in an exported graph

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if torch.onnx.is_in_onnx_export():
            # Written out for export: the pattern ONNX Runtime's BERT optimizer recognises
            # and fuses into one Attention kernel.
            att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hs) + bias  # (B, nh, T, T)
            y = torch.matmul(att.softmax(dim=-1), v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = self.ln_attn(x + self.attn_out(y))
        h = self.ffn_up(x)
        h = F.relu(h) if self.approximate is None else F.gelu(h, approximate=self.approximate)
        return self.ln_ffn(x + self.ffn_down(h))


class Bert(nn.Module):
    """``transformers.BertModel``'s last hidden state, for inference."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, C)
        self.position = nn.Embedding(cfg.max_position_embeddings, C)
        self.token_type = nn.Embedding(cfg.type_vocab_size, C)
        self.ln_emb = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and 0/1 mask -> (B, T, C) hidden states; token types are all 0."""
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        x = self.word(input_ids) + self.position(pos) + self.token_type.weight[0]
        x = self.ln_emb(x)
        # Padding keys get a large negative bias (HF's extended attention mask).
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x


class SentenceBert(nn.Module):
    """Mean of the hidden states over real tokens, L2-normalised (sentence-transformers' recipe)."""

    def __init__(self, bert: Bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids, attention_mask)  # (B, T, C)
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        mean = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(mean, p=2.0, dim=1)


def hf_to_ours(name: str) -> str | None:
    """A Hugging Face BERT tensor name -> this module's name (None: not part of the encoder)."""
    name = name.removeprefix("bert.")
    if name.startswith(IGNORED_PREFIXES):
        return None
    emb = {
        "embeddings.word_embeddings.weight": "word.weight",
        "embeddings.position_embeddings.weight": "position.weight",
        "embeddings.token_type_embeddings.weight": "token_type.weight",
        "embeddings.LayerNorm.weight": "ln_emb.weight",
        "embeddings.LayerNorm.bias": "ln_emb.bias",
    }
    if name in emb:
        return emb[name]
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["encoder", "layer"]:
        inner, leaf = ".".join(parts[3:-1]), parts[-1]
        if inner in LAYER_NAMES:
            return f"layers.{parts[2]}.{LAYER_NAMES[inner]}.{leaf}"
    return None


def load_bert(folder: str | Path) -> Bert:
    """Build a ``Bert`` from ``config.json`` + ``model.safetensors`` (validated, never pickles)."""
    import numpy as np

    from nlpkit.io.tensors import load_tensors

    folder = Path(folder)
    cfg = BertConfig.from_file(folder / "config.json")
    path = folder / "model.safetensors"
    if not path.is_file():
        raise InputMissing("no model.safetensors", where=str(folder), hint="a BERT folder needs one")
    tensors, _ = load_tensors(str(path))
    model = Bert(cfg)
    expected = model.state_dict()
    state: dict[str, Any] = {}
    for name, arr in tensors.items():
        ours = hf_to_ours(name)
        if ours is None or ours not in expected:
            continue
        if tuple(arr.shape) != tuple(expected[ours].shape):
            raise DataError(
                f"tensor {name} has shape {list(arr.shape)}, config.json implies "
                f"{list(expected[ours].shape)}",
                where=str(path),
            )
        state[ours] = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable fp32 copy
    missing = sorted(set(expected) - set(state))
    if missing:
        raise DataError(
            f"{len(missing)} encoder tensors missing (e.g. {missing[0]})",
            where=str(path),
            hint="expected Hugging Face BertModel names",
        )
    model.load_state_dict(state)
    return model.eval()
