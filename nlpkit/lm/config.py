"""Model configuration (Hugging Face Llama config.json keys) for every architecture; importable
without torch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.errors import DataError, InputMissing, UsageError
from nlpkit.io.limits import LIMITS, MAX_ROTARY

ARCHS = ("lstm", "llama", "seq2seq")
CELLS = ("lstm", "gru", "rnn")
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
    cell: str = "lstm"  # the recurrent cell of arch "lstm": lstm, gru or rnn (a plain tanh RNN)
    qkv_bias: bool = False  # biases on the q/k/v projections: Qwen2 (config.json model_type "qwen2")

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UsageError(f"unknown architecture {self.arch!r}", hint=f"use one of {', '.join(ARCHS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_embd", "n_head"):
            if not _positive_int(getattr(self, name)):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        for name in ("n_kv_head", "head_dim", "intermediate_size"):  # None: derived from the others
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, not {value!r}")
        for name, least in (("rope_theta", 1.0), ("norm_eps", 0.0)):  # NaN here is NaN in every logit
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{name} must be a number, not {value!r}")
            if not (math.isfinite(value) and value > 0 and value >= least):
                want = f"at least {least:g}" if least else "above 0"
                raise UsageError(f"{name} must be finite and {want}, not {value!r}")
        for name, most in LIMITS.items():  # a width in the hundreds of millions is a typo, not a model
            value = getattr(self, name)
            if value is not None and value > most:
                raise UsageError(f"--{name.replace('_', '-')} {value} is over the limit of {most}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError("--dropout must be in [0, 1)")
        if self.cell not in CELLS:
            raise UsageError(f"unknown --cell {self.cell!r}", hint=f"use one of {', '.join(CELLS)}")
        if self.arch == "lstm":
            return
        if self.head_dim is None and self.n_embd % self.n_head:
            raise UsageError(f"--n-embd {self.n_embd} is not a multiple of --n-head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise UsageError(f"--n-head {self.n_head} is not a multiple of --n-kv-head {self.kv_heads}")
        if self.hs % 2:
            raise UsageError(f"the head size ({self.hs}) must be even for rotary embeddings")
        if self.block_size * self.hs > MAX_ROTARY:  # the cos/sin tables hold block_size x head size
            raise UsageError(
                f"--block-size {self.block_size} x head size {self.hs} is over the limit of {MAX_ROTARY} "
                "rotary table entries"
            )

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
        if self.arch == "llama" and self.qkv_bias:  # transformers' Qwen2: biases on q, k and v only
            d |= {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
                  "use_sliding_window": False, "attention_dropout": 0.0}  # fmt: skip
        elif self.arch == "llama":
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
        extra: dict[str, Any] = {"arch": self.arch, "dropout": self.dropout}
        if self.arch == "lstm" and self.cell != "lstm":
            extra["cell"] = self.cell
        d |= {"torch_dtype": "float32", "nlpkit": extra}
        return d

    @classmethod
    def from_hf(cls, d: dict[str, Any], where: str = "config.json") -> ModelConfig:
        """Read a config.json written by nlpkit or by transformers (a Llama checkpoint)."""
        extra = d.get("nlpkit") or {}
        qwen2 = d.get("model_type") == "qwen2"
        arch = extra.get("arch") or ("llama" if qwen2 else None)
        arch = arch or {v: k for k, v in MODEL_TYPES.items()}.get(d.get("model_type", ""))
        if arch is None:
            raise DataError(f"unsupported model_type {d.get('model_type')!r}", where=where,
                            hint="nlpkit reads llama, qwen2, nlpkit-lstm, nlpkit-seq2seq models")  # fmt: skip
        kw: dict[str, Any] = {ours: d[hf] for ours, hf in _HF_KEYS.items() if d.get(hf) is not None}
        if "rope_theta" not in kw and isinstance(d.get("rope_parameters"), dict):  # transformers >= 5
            kw["rope_theta"] = d["rope_parameters"].get("rope_theta", 10000.0)
        kw["intermediate_size"] = d.get("intermediate_size")
        kw["n_kv_head"], kw["head_dim"] = d.get("num_key_value_heads"), d.get("head_dim")
        plain = not (d.get("rope_scaling") or d.get("attention_bias") or d.get("mlp_bias"))
        plain = plain and not d.get("use_sliding_window")  # qwen2: biases on q/k/v are its own
        if arch == "llama" and (d.get("hidden_act", "silu") != "silu" or not plain):
            raise DataError(
                "only plain Llama and Qwen2 models (silu, no rope scaling, no sliding window, no other "
                "biases) load",
                where=where,
            )
        try:
            return cls(
                arch=arch,
                dropout=float(extra.get("dropout", 0.0)),
                cell=str(extra.get("cell", "lstm")),
                qkv_bias=qwen2,
                **kw,
            )
        except (UsageError, TypeError) as e:
            raise DataError(f"invalid model config ({e})", where=where) from None


_HF_KEYS = {
    "vocab_size": "vocab_size", "block_size": "max_position_embeddings", "n_layer": "num_hidden_layers",
    "n_embd": "hidden_size", "n_head": "num_attention_heads", "tie_embeddings": "tie_word_embeddings",
    "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps", "bos_id": "bos_token_id",
    "eos_id": "eos_token_id", "pad_id": "pad_token_id",
}  # fmt: skip


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


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
