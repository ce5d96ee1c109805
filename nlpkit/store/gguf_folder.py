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
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError, UsageError
from nlpkit.io.limits import LIMITS, MAX_ROTARY

if TYPE_CHECKING:
    import numpy as np

    from nlpkit.io.gguf import TensorInfo


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
# "blk.N.rest" with N in plain ASCII digits, no leading zero: "blk.01." or "blk.١." would
# otherwise name layer 1 a second time
_BLOCK = re.compile(r"blk\.(0|[1-9][0-9]{0,8})\.(.+)", re.ASCII | re.DOTALL)
# Files that make a folder a chat model, beside config.json and model.safetensors.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer_files(src: Path, dst: Path, replace: bool = True) -> None:
    """The tokenizer files and generation_config.json of model folder ``src`` into ``dst``
    (those it has; ``replace=False`` keeps files ``dst`` already holds)."""
    import shutil

    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (src / name).is_file() and (replace or not (dst / name).is_file()):
            shutil.copyfile(src / name, dst / name)


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face tensor name of a llama.cpp one (None: not a weight we know)."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    m = _BLOCK.fullmatch(gguf_name)
    if m and m[2] in _BLOCK_NAMES:
        return f"model.layers.{m[1]}.{_BLOCK_NAMES[m[2]]}"
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
# config.json key -> (its GGUF key under the architecture, the name of its bound in LIMITS)
_COUNTS = {
    "num_hidden_layers": ("block_count", "n_layer"),
    "hidden_size": ("embedding_length", "n_embd"),
    "intermediate_size": ("feed_forward_length", "intermediate_size"),
    "num_attention_heads": ("attention.head_count", "n_head"),
    "num_key_value_heads": ("attention.head_count_kv", "n_head"),
    "head_dim": ("rope.dimension_count", "head_dim"),
    "vocab_size": ("vocab_size", "vocab_size"),
    "max_position_embeddings": ("context_length", "block_size"),
}


def _shown(value: Any) -> str:
    """A metadata value of the wrong type for a one-line message: its type, then its start."""
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def config_from_gguf(meta: Any, path: str) -> dict[str, Any]:
    """config.json (Hugging Face's LlamaConfig or Qwen2Config keys) from ``llama.*`` or
    ``qwen2.*`` GGUF metadata.

    Each value is checked on its own here: counts are integers of at least 1 that fit together
    (heads divide, head size even), the vocabulary is the token list's length, the RoPE base and
    norm epsilon are finite and positive. ``check_counts`` checks them against the tensors.
    """
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise DataError(
            f"GGUF architecture {repr(arch) if arch is None or isinstance(arch, str) else _shown(arch)} "
            "is not supported",
            where=path,
            hint="nlpkit converts llama and qwen2 models",
        )

    def value_of(key: str, default: Any) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise DataError(f"GGUF metadata lacks {arch}.{key}", where=path)
        return value

    def count(key: str, default: int | None = None) -> int:
        value = value_of(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"{arch}.{key} must be an integer, not {_shown(value)}", where=path)
        if value < 1:
            raise DataError(f"{arch}.{key} is {value}, expected at least 1", where=path)
        return value

    def real(key: str, default: float | None, least: float) -> float:
        """A finite number above 0, and at least ``least``."""
        value = value_of(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"{arch}.{key} must be a number, not {_shown(value)}", where=path)
        if not (math.isfinite(value) and value > 0 and value >= least):
            want = f"a finite number of at least {least:g}" if least else "a finite number above 0"
            raise DataError(f"{arch}.{key} is {value!r}, expected {want}", where=path)
        return float(value)

    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise DataError("GGUF metadata lacks tokenizer.ggml.tokens", where=path)
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise DataError(
            f"tokenizer.ggml.tokens must be an array of strings, not {_shown(tokens)}", where=path
        )
    if not tokens:
        raise DataError("tokenizer.ggml.tokens is empty", where=path)
    vocab = count("vocab_size", len(tokens))
    if vocab != len(tokens):
        raise DataError(
            f"{arch}.vocab_size is {vocab} but tokenizer.ggml.tokens holds {len(tokens)} tokens", where=path
        )
    hidden = count("embedding_length")
    n_head = count("attention.head_count")
    if f"{arch}.rope.dimension_count" in meta:
        head_dim, whence = count("rope.dimension_count"), f"{arch}.rope.dimension_count"
    elif hidden % n_head:
        raise DataError(
            f"{arch}.attention.head_count {n_head} does not divide {arch}.embedding_length {hidden}",
            where=path,
        )
    else:
        head_dim, whence = hidden // n_head, f"{arch}.embedding_length / {arch}.attention.head_count"
    if head_dim % 2:
        raise DataError(
            f"the head size {head_dim} ({whence}) is odd; rotary embeddings need it even", where=path
        )
    n_kv = count("attention.head_count_kv", n_head)
    if n_head % n_kv:
        raise DataError(
            f"{arch}.attention.head_count_kv {n_kv} does not divide {arch}.attention.head_count {n_head}",
            where=path,
        )
    context = count("context_length")  # no tensor to check it against: bounded here
    if context > LIMITS["block_size"]:
        raise DataError(
            f"{arch}.context_length is {context}, over nlpkit's limit of {LIMITS['block_size']}", where=path
        )
    if context * head_dim > MAX_ROTARY:  # the rotary tables nlpkit builds hold context x head size
        raise DataError(
            f"{arch}.context_length {context} x the head size {head_dim} is over nlpkit's limit of "
            f"{MAX_ROTARY} rotary table entries",
            where=path,
        )
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling is not None and not isinstance(scaling, str):
        raise DataError(f"{arch}.rope.scaling.type must be a string, not {_shown(scaling)}", where=path)
    if scaling not in (None, "none"):
        raise DataError("GGUF models with RoPE scaling are not supported", where=path)
    eps = real("attention.layer_norm_rms_epsilon", None, 0.0)
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "num_hidden_layers": count("block_count"),
        "hidden_size": hidden,
        "intermediate_size": count("feed_forward_length"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        # below 1 the frequencies 1/base**(i/d) overflow float32 to inf and every logit is NaN
        "rope_theta": real("rope.freq_base", 10000.0, 1.0),
        "rms_norm_eps": float(f"{eps:.6g}"),  # f32 -> 1e-05
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


def check_counts(tensors: Mapping[str, TensorInfo], cfg: dict[str, Any], arch: str, path: str) -> None:
    """Check the counts of ``cfg`` (from ``config_from_gguf``) against the tensors the file holds,
    before any of them sizes an allocation: a file that claims 10**9 layers and holds 2 is a
    ``DataError`` naming the key, not a conversion that allocates until the kernel kills it."""

    def key(ours: str) -> str:
        return f"{arch}.{_COUNTS[ours][0]}"

    layers = {int(m[1]) for name in tensors if (m := _BLOCK.fullmatch(name))}
    n_layer = cfg["num_hidden_layers"]
    if n_layer != len(layers):
        raise DataError(
            f"{key('num_hidden_layers')} is {n_layer} but the file holds {len(layers)} layers", where=path
        )
    if layers != set(range(n_layer)):
        gap = min(set(range(n_layer)) - layers)
        raise DataError(
            f"the file's {n_layer} layers are not blk.0 to blk.{n_layer - 1}: no blk.{gap}", where=path
        )
    embd = tensors["token_embd.weight"].shape if "token_embd.weight" in tensors else None
    if embd is None or len(embd) != 2:
        raise DataError(f"GGUF lacks a 2-D token_embd.weight (it has {embd})", where=path)
    if cfg["hidden_size"] != embd[1]:
        raise DataError(
            f"{key('hidden_size')} is {cfg['hidden_size']} but token_embd.weight is {embd[1]} wide",
            where=path,
        )
    if cfg["vocab_size"] != embd[0]:
        raise DataError(
            f"tokenizer.ggml.tokens holds {cfg['vocab_size']} tokens but token_embd.weight has "
            f"{embd[0]} rows",
            where=path,
        )
    hs = cfg["head_dim"]
    for proj, ours in (("attn_q", "num_attention_heads"), ("attn_k", "num_key_value_heads")):
        info = tensors.get(f"blk.0.{proj}.weight")
        if info is not None and info.shape[0] != cfg[ours] * hs:
            raise DataError(
                f"{key(ours)} is {cfg[ours]}: {cfg[ours]} heads of {hs} make {cfg[ours] * hs} rows, but "
                f"blk.0.{proj}.weight has {info.shape[0]}",
                where=path,
            )
    info = tensors.get("blk.0.ffn_gate.weight")
    if info is not None and info.shape[0] != cfg["intermediate_size"]:
        raise DataError(
            f"{key('intermediate_size')} is {cfg['intermediate_size']} but blk.0.ffn_gate.weight has "
            f"{info.shape[0]} rows",
            where=path,
        )
    for ours, (gguf_key, limit) in _COUNTS.items():  # the bounds ModelConfig loads a folder under
        if cfg[ours] > LIMITS[limit]:
            raise DataError(
                f"{arch}.{gguf_key} is {cfg[ours]}, over nlpkit's limit of {LIMITS[limit]}", where=path
            )


def gguf_to_folder(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert a llama GGUF file into an nlpkit model folder; returns its config.json.

    Everything is checked before anything is allocated from the metadata or decoded: the
    metadata (``config_from_gguf``), its counts against the tensors (``check_counts``), every
    tensor's shape, the config as nlpkit loads it, and the tokenizer.

    The weights stream: ``model.safetensors``'s header is written from the tensor descriptions
    (dequantizing and unpermuting keep shapes), then each tensor is dequantized, written and
    dropped before the next, so memory holds about one float32 tensor (two while Q/K rows are
    permuted back) besides the mapped GGUF, never the whole model.
    """
    import numpy as np

    from nlpkit.io.gguf import read_gguf
    from nlpkit.io.gguf_quants import can_dequantize
    from nlpkit.io.gguf_tokenizer import from_gguf
    from nlpkit.io.talk import Progress
    from nlpkit.io.tensors import TensorSpec, provenance, save_tensors_streaming, sha256_file

    name = os.fspath(path)
    out = Path(folder)
    gg = read_gguf(name)
    cfg = config_from_gguf(gg.metadata, name)
    targets = {t: hf_name(t) for t in gg.tensors}
    skipped = [t for t, target in targets.items() if target is None]
    if any(not s.startswith("rope_") for s in skipped):
        raise DataError(f"GGUF holds tensors nlpkit does not know: {', '.join(skipped[:4])}", where=name)
    cfg["tie_word_embeddings"] = "output.weight" not in gg.tensors
    check_counts(gg.tensors, cfg, gg.metadata["general.architecture"], name)
    _check_shapes({target: gg.tensors[t].shape for t, target in targets.items() if target}, cfg, name)
    tok = from_gguf(name)
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    if cfg["model_type"] == "qwen2":  # llama.cpp keeps qwen2's rows as they are (NeoX-style RoPE)
        heads = {}
    sources = {target: t for t, target in targets.items() if target is not None}
    for t in sources.values():  # refused before a byte is written, not halfway through the file
        if not can_dequantize(gg.tensors[t].ggml_type):
            gg.tensor(t)  # the DataError naming the tensor, its type and what nlpkit decodes
    specs = [TensorSpec(target, np.float32, gg.tensors[t].shape) for target, t in sources.items()]
    out.mkdir(parents=True, exist_ok=True)
    meta = provenance(
        format="pt", **{"nlpkit.source": Path(name).name, "nlpkit.source_sha256": sha256_file(name)}
    )
    with Progress("dequantizing", total=len(specs), unit=" tensors") as progress:

        def produce(target: str) -> np.ndarray:
            w = gg.tensor(sources[target])  # a new float32 array; the file stays mapped
            proj = target.rsplit(".", 2)[-2]
            if proj in heads:
                w = unpermute_rows(w, heads[proj])
            progress.advance(1)
            return np.ascontiguousarray(w, dtype=np.float32)

        save_tensors_streaming(str(out / "model.safetensors"), specs, produce, meta, kind="model.llama")
    _write_json(out / "config.json", cfg | {"nlpkit": {"arch": "llama", "dropout": 0.0}})
    _write_tokenizer_files(out, tok, gg.metadata, cfg)
    return cfg


def _check_shapes(shapes: dict[str, tuple[int, ...]], cfg: dict[str, Any], path: str) -> None:
    """Every tensor the config needs, each of the shape it needs, and no others (``check_counts``
    has bounded the layers this loops over)."""
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
    missing = sorted(set(want) - set(shapes))
    if missing:
        raise DataError(f"GGUF lacks {len(missing)} tensors the config needs, e.g. {missing[0]}", where=path)
    for k, shape in want.items():
        if tuple(shapes[k]) != shape:
            raise DataError(f"{k} has shape {tuple(shapes[k])}, the config says {shape}", where=path)
    extra = sorted(set(shapes) - set(want))
    if extra:
        raise DataError(
            f"GGUF has tensors this {cfg['model_type']} config has no use for, e.g. {extra[0]}", where=path
        )


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
        "add_bos_token": meta.get("tokenizer.ggml.add_bos_token") is True,
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
