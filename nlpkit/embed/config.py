"""The BERT encoder configuration (config.json fields), importable without torch."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
from dataclasses import dataclass, fields
from pathlib import Path

from nlpkit.errors import DataError, InputMissing

ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "relu": None}


@dataclass
class BertConfig:
    """The keys of a Hugging Face BERT ``config.json`` that shape the network."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self) -> None:
        sizes = (self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads)
        if min(*sizes, self.intermediate_size, self.max_position_embeddings, self.type_vocab_size) < 1:
            raise ValueError("sizes must be positive")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            raise ValueError("only position_embedding_type 'absolute' is supported")

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputMissing(
                "no config.json", where=str(path.parent), hint="a BERT folder needs one"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"invalid config.json ({e})", where=str(path)) from None
        if not isinstance(raw, dict):
            raise DataError("config.json must be a JSON object", where=str(path))
        if raw.get("model_type", "bert") != "bert":
            raise DataError(f"model_type {raw.get('model_type')!r} is not 'bert'", where=str(path))
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError) as e:
            raise DataError(f"unusable BERT config ({e})", where=str(path)) from None


Runner = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]
