"""Resolving what a user typed (a named model, a folder, a ``.gguf`` file) into a loadable folder:
the one resolver, for decoders and sentence encoders alike."""

from __future__ import annotations

import os
from pathlib import Path

from nlpkit.errors import DataError, InputMissing, UsageError
from nlpkit.store.assets import DEFAULT_ENCODER
from nlpkit.store.gguf_folder import gguf_to_folder

# --------------------------------------------------------------------------- resolving, exporting


def resolve_model(spec: str) -> Path:
    """A model folder for ``spec``: a folder as it is; a named asset's converted folder (converted
    from its GGUF on first use); a ``.gguf`` file converted once into the store's cache."""
    from nlpkit.store.assets import asset_dir, is_asset_name

    path = Path(spec)
    if path.is_dir():
        return path
    if is_asset_name(spec):
        folder = asset_dir(spec)
        ggufs = sorted(folder.glob("*.gguf"))
        if (folder / "config.json").is_file() or not ggufs:
            return folder
        return _converted(ggufs[0], folder / "model")
    if path.is_file():
        from nlpkit.io.gguf import is_gguf

        if not is_gguf(path):
            if path.suffix.lower() == ".gguf":
                raise DataError("not a GGUF file (no GGUF magic)", where=spec)
            raise UsageError(
                "not a model folder or a GGUF file",
                where=spec,
                hint="give a model folder, a .gguf file or a named model",
            )
        from nlpkit.io.tensors import sha256_file
        from nlpkit.store.assets import home

        return _converted(path, home() / "converted" / sha256_file(path)[:16])
    raise InputMissing(
        "no such model",
        where=spec,
        hint="give a model folder, a .gguf file or a named model (nlpkit models list)",
    )


def _converted(gguf: Path, folder: Path) -> Path:
    """``folder`` holding the conversion of ``gguf``, made once (under a lock, then renamed)."""
    import shutil

    from nlpkit.io.files import fsync_dir, lock_for
    from nlpkit.io.talk import say

    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(folder, wait=True):
        if (folder / "config.json").is_file():
            return folder
        say(f"converting {gguf.name} to an nlpkit model folder (once): {folder}")
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            gguf_to_folder(gguf, staging)
            os.replace(staging, folder)
            fsync_dir(folder.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return folder


# --------------------------------------------------------------------------- loading


def resolve_encoder(spec: str) -> tuple[str, Path]:
    """A named asset or a folder -> (name, folder); a folder must hold the three files."""
    from nlpkit import store

    if store.is_asset_name(spec):
        folder = store.asset_dir(spec)
        if not (folder / "config.json").is_file():  # glove-6b-50d, smollm2-135m-instruct
            raise UsageError(
                f"{spec} is not a sentence encoder", hint=f"use {DEFAULT_ENCODER} or a BERT model folder"
            )
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise InputMissing(
                f"no such model folder or named model {spec!r}",
                hint="give a BERT folder (config.json, model.safetensors, tokenizer.json) "
                f"or {DEFAULT_ENCODER}",
            )
    weights = "model.onnx" if (folder / "model.onnx").is_file() else "model.safetensors"  # quantized: ONNX
    for needed in ("config.json", weights, "tokenizer.json"):
        if not (folder / needed).is_file():
            raise InputMissing(f"no {needed} in the model folder", where=str(folder))
    return spec, folder
