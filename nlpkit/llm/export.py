"""Exporting an nlpkit decoder folder for Hugging Face transformers (``nlpkit export --to hf``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nlpkit.errors import InputMissing, UsageError
from nlpkit.store.gguf_folder import _write_json, copy_tokenizer_files
from nlpkit.store.resolve import resolve_model


def export_hf(model: str, out: str | os.PathLike[str]) -> Path:
    """Write ``out/`` for transformers (LlamaForCausalLM, or Qwen2ForCausalLM for a qwen2 model):
    config.json without nlpkit's extras, model.safetensors
    with an explicit ``lm_head.weight`` left out when tied (as transformers saves it), the
    tokenizer files and the generation config."""

    from nlpkit.io.tensors import load_tensors, save_tensors

    src = resolve_model(model)
    if not (src / "config.json").is_file():
        raise UsageError(f"{model} is not a language model (no config.json)", where=str(src))
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") not in ("llama", "qwen2"):
        raise UsageError(
            f"only llama and qwen2 models export to Hugging Face format (this is {cfg.get('model_type')!r})",
            where=str(src),
        )
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise UsageError("the output exists and is not a folder", where=str(dest), hint="give a new folder")
    if dest.exists() and any(dest.iterdir()):
        raise UsageError("the output folder is not empty", where=str(dest), hint="give a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    tensors, _ = load_tensors(str(src / "model.safetensors"))
    save_tensors(str(dest / "model.safetensors"), dict(tensors), {"format": "pt"}, kind="model.llama")
    cfg.pop("nlpkit", None)
    _write_json(dest / "config.json", cfg)
    copy_tokenizer_files(src, dest)
    if not (dest / "tokenizer.json").is_file():
        raise InputMissing("the model folder has no tokenizer.json", where=str(src))
    if not (dest / "tokenizer_config.json").is_file():
        _write_json(dest / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})
    if not (dest / "generation_config.json").is_file():
        ids = ("bos_token_id", "eos_token_id", "pad_token_id")
        _write_json(dest / "generation_config.json", {k: cfg[k] for k in ids if cfg.get(k) is not None})
    return dest
