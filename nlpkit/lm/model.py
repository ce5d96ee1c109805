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
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from nlpkit.errors import DataError
from nlpkit.lm.config import ModelConfig, read_config
from nlpkit.lm.layers import Rotary
from nlpkit.lm.llama import Llama

# --------------------------------------------------------------------------- folders


def build_model(cfg: ModelConfig) -> nn.Module:
    from nlpkit.lm.seqmodels import LSTMLM, Seq2Seq

    return {"lstm": LSTMLM, "llama": Llama, "seq2seq": Seq2Seq}[cfg.arch](cfg)


def count_params(model: nn.Module) -> int:
    """Parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters())


def save_model(
    model: nn.Module, cfg: ModelConfig, folder: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """config.json and model.safetensors (each written atomically); a tied head is not stored,
    as transformers does."""
    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.tensors import provenance, save_tensors

    folder = Path(folder)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state = {k: v for k, v in state.items() if k not in ("lm_head.weight", "head.weight")}
    meta = provenance(**(metadata or {}), format="pt")
    meta["nlpkit.config"] = json.dumps(cfg.to_hf())
    save_tensors(str(folder / "model.safetensors"), state, meta, kind=f"model.{cfg.arch}")
    write_bytes_atomic(folder / "config.json", (json.dumps(cfg.to_hf(), indent=2) + "\n").encode())


def load_model(
    folder: str | Path, device: str = "cpu", build: Callable[[ModelConfig], nn.Module] = build_model
) -> tuple[nn.Module, ModelConfig]:
    """A model folder's network in eval mode: config.json + model.safetensors (never a pickle);
    ``build`` makes the network from the config (another head: a reward model's)."""
    from nlpkit.io.tensors import load_tensors

    cfg = read_config(folder)
    path = str(Path(folder) / "model.safetensors")
    tensors, _ = load_tensors(path, copy=True)  # read, not mapped: the weights are held once
    with torch.device("meta"):
        model = build(cfg)
    model = model.to_empty(device=device)
    state = {k: torch.from_numpy(tensors.pop(k)).to(device) for k in list(tensors)}
    expected = set(model.state_dict())
    if cfg.tie_embeddings:
        expected -= {"lm_head.weight", "head.weight"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise DataError(
            f"tensors do not match config.json (missing {missing[:3]}, unexpected {extra[:3]})", where=path
        )
    try:
        # assign: the copies become the parameters (no third copy of the weights at load time)
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:
        raise DataError(f"tensor shapes do not match config.json ({str(e)[:300]})", where=path) from None
    _reset_buffers(model, cfg, device)
    tied = _head_and_embedding(model) if cfg.tie_embeddings else None
    if tied is not None:  # to_empty() gave the head its own tensor: share it again
        tied[0].weight = tied[1].weight
    return model.eval(), cfg


def _head_and_embedding(model: nn.Module) -> tuple[nn.Linear, nn.Embedding] | None:
    """The output head and the embedding it is tied to (None: a model without that head)."""
    from nlpkit.lm.seqmodels import LSTMLM, Seq2Seq

    if isinstance(model, Llama):
        if not hasattr(model, "lm_head"):
            return None
        return model.lm_head, model.model.embed_tokens
    if isinstance(model, LSTMLM):
        return model.head, model.embed
    assert isinstance(model, Seq2Seq)
    return model.lm_head, model.embed_tokens


def _reset_buffers(model: nn.Module, cfg: ModelConfig, device: str) -> None:
    """Non-persistent buffers (rotary tables, sinusoids) are not in the file: rebuild them."""
    from nlpkit.lm.seqmodels import Seq2Seq, _sinusoids

    if isinstance(model, Llama):
        model.rotary = Rotary(cfg.hs, cfg.block_size, cfg.rope_theta).to(device)
    elif isinstance(model, Seq2Seq):
        model.pe = _sinusoids(cfg.block_size, cfg.n_embd).to(device)
