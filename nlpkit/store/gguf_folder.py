"""Model folders in and out: a llama.cpp GGUF file into an nlpkit model folder, and an nlpkit
model folder out to what Hugging Face transformers loads directly.

    gguf_to_folder("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2/")
    export_hf("smollm2/", "smollm2-hf/")      # LlamaForCausalLM.from_pretrained("smollm2-hf/")
    folder = resolve_model("smollm2-135m-instruct")   # a named asset, a .gguf, or a folder

An nlpkit model folder holds ``config.json`` (Hugging Face's Llama keys), ``model.safetensors``
(float32, Hugging Face's tensor names), ``tokenizer.json`` and, for chat models,
``tokenizer_config.json`` with the chat template and ``generation_config.json``.

GGUF stores each tensor in llama.cpp's layout: names like ``blk.3.attn_q.weight``, shapes in
ggml's reversed order (the GGUF reader undoes that), and the rows of the Q and K projections
permuted so that RoPE rotates interleaved pairs. Converting renames, dequantizes to float32
and permutes those rows back to the rotate-halves layout of Hugging Face (and nlpkit).
Nothing here needs torch: numpy does the arithmetic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError, UsageError

if TYPE_CHECKING:
    import numpy as np


# llama.cpp name (per block) -> Hugging Face name; "{}" is the layer number
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",  # qwen2
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Files that make a folder a chat model, beside config.json and model.safetensors.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face tensor name of a llama.cpp one (None: not a weight we know)."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{int(parts[1])}.{_BLOCK_NAMES[parts[2]]}"
    return None


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: within each head, rows come as interleaved pairs
    (0, hs/2, 1, hs/2+1, ...) in GGUF; Hugging Face keeps the two halves apart."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise DataError(f"{rows} rows do not split into {n_head} heads of rotary pairs")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's Q/K row order to llama.cpp's (the inverse of ``unpermute_rows``)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


ARCHITECTURES = ("llama", "qwen2")  # GGUF general.architecture values nlpkit converts


def config_from_gguf(meta: Any, path: str) -> dict[str, Any]:
    """config.json (Hugging Face's LlamaConfig or Qwen2Config keys) from ``llama.*`` or
    ``qwen2.*`` GGUF metadata."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise DataError(
            f"GGUF architecture {arch!r} is not supported",
            where=path,
            hint="nlpkit converts llama and qwen2 models",
        )

    def num(key: str, kind: type, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise DataError(f"GGUF metadata lacks {arch}.{key}", where=path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"{arch}.{key} must be a number, not {type(value).__name__}", where=path)
        return kind(value)

    n_head = num("attention.head_count", int)
    hidden = num("embedding_length", int)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = num("vocab_size", int, len(tokens) if tokens is not None else None)
    rope_dim = num("rope.dimension_count", int, hidden // max(n_head, 1))
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise DataError("GGUF models with RoPE scaling are not supported", where=path)
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "max_position_embeddings": num("context_length", int),
        "num_hidden_layers": num("block_count", int),
        "hidden_size": hidden,
        "intermediate_size": num("feed_forward_length", int),
        "num_attention_heads": n_head,
        "num_key_value_heads": num("attention.head_count_kv", int, n_head),
        "head_dim": rope_dim,
        "rope_theta": num("rope.freq_base", float, 10000.0),
        "rms_norm_eps": float(f"{num('attention.layer_norm_rms_epsilon', float):.6g}"),  # f32 -> 1e-05
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,  # set from the tensors below
        "torch_dtype": "float32",
    }
    if arch == "qwen2":  # transformers' Qwen2Config: biases on q/k/v, no sliding window used
        for key in ("attention_bias", "mlp_bias"):
            del cfg[key]
        cfg |= {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False}
    for ours, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab:
            cfg[ours] = value
    return cfg


def gguf_to_folder(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert a llama GGUF file into an nlpkit model folder; returns its config.json."""
    import numpy as np

    from nlpkit.io.gguf import read_gguf
    from nlpkit.io.gguf_tokenizer import from_gguf
    from nlpkit.io.talk import Progress
    from nlpkit.io.tensors import provenance, save_tensors, sha256_file

    name = os.fspath(path)
    out = Path(folder)
    gg = read_gguf(name)
    cfg = config_from_gguf(gg.metadata, name)
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    if cfg["model_type"] == "qwen2":  # llama.cpp keeps qwen2's rows as they are (NeoX-style RoPE)
        heads = {}
    state: dict[str, np.ndarray] = {}
    skipped = []
    with Progress("dequantizing", total=len(gg.tensors), unit=" tensors") as progress:
        for tname in gg.tensors:
            progress.advance(1)
            target = hf_name(tname)
            if target is None:
                skipped.append(tname)
                continue
            w = gg.tensor(tname)
            proj = target.rsplit(".", 2)[-2]
            if proj in heads:
                w = unpermute_rows(w, heads[proj])
            state[target] = np.ascontiguousarray(w, dtype=np.float32)
    if skipped and any(not s.startswith("rope_") for s in skipped):
        raise DataError(f"GGUF holds tensors nlpkit does not know: {', '.join(skipped[:4])}", where=name)
    cfg["tie_word_embeddings"] = "lm_head.weight" not in state
    _check_shapes(state, cfg, name)
    tok = from_gguf(name)
    out.mkdir(parents=True, exist_ok=True)
    meta = provenance(
        format="pt", **{"nlpkit.source": Path(name).name, "nlpkit.source_sha256": sha256_file(name)}
    )
    save_tensors(str(out / "model.safetensors"), state, meta, kind="model.llama")
    _write_json(out / "config.json", cfg | {"nlpkit": {"arch": "llama", "dropout": 0.0}})
    _write_tokenizer_files(out, tok, gg.metadata, cfg)
    return cfg


def _check_shapes(state: dict[str, Any], cfg: dict[str, Any], path: str) -> None:
    C, hs = cfg["hidden_size"], cfg["head_dim"]
    F, V = cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * hs, cfg["num_key_value_heads"] * hs
    want = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = (V, C)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        want |= {
            p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
            p + "self_attn.q_proj.weight": (q, C), p + "self_attn.k_proj.weight": (kv, C),
            p + "self_attn.v_proj.weight": (kv, C), p + "self_attn.o_proj.weight": (C, q),
            p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
            p + "mlp.down_proj.weight": (C, F),
        }  # fmt: skip
        if cfg["model_type"] == "qwen2":
            want |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                     p + "self_attn.v_proj.bias": (kv,)}  # fmt: skip
    missing = sorted(set(want) - set(state))
    if missing:
        raise DataError(f"GGUF lacks {len(missing)} tensors the config needs, e.g. {missing[0]}", where=path)
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise DataError(f"{k} has shape {tuple(state[k].shape)}, the config says {shape}", where=path)
    extra = sorted(set(state) - set(want))
    if extra:
        raise DataError(f"GGUF has layers beyond block_count, e.g. {extra[0]}", where=path)


def _write_json(path: Path, obj: Any) -> None:
    from nlpkit.io.files import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def _write_tokenizer_files(out: Path, tok: Any, meta: Any, cfg: dict[str, Any]) -> None:
    """tokenizer.json, and the chat template and special tokens the way transformers keeps them."""
    from nlpkit.io.files import write_bytes_atomic

    write_bytes_atomic(out / "tokenizer.json", tok.to_str().encode())
    template = meta.get("tokenizer.chat_template")
    special: dict[str, Any] = {}
    for key, ours in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "pad_token_id"),
    ):
        if ours in cfg:
            special[key] = tok.id_to_token(cfg[ours])
    tcfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg["max_position_embeddings"],
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if isinstance(template, str):
        tcfg["chat_template"] = template
    _write_json(out / "tokenizer_config.json", tcfg)
    _write_json(out / "special_tokens_map.json", special)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    _write_json(out / "generation_config.json", gen)


def convert_gguf(source: str, output: str) -> dict[str, Any]:
    """``nlpkit convert FILE.gguf -o DIR``: a GGUF model into a new (or empty) model folder,
    under the output's lock; returns the written config."""
    from nlpkit.io.files import lock_for

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError("the output exists and is not an empty folder", where=output)
    with lock_for(out):
        return gguf_to_folder(source, out)
