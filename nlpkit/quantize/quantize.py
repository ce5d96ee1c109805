"""``nlpkit quantize``: a decoder model folder -> an ONNX Runtime model folder with int4 or int8
weights, and the quality receipt that says what was lost.

    receipt = quantize_model("smollm2-135m-instruct", "q4", bits=4, group_size=32)

The decoder graph is written by ``graph.build_decoder`` (float32 MatMuls); ONNX Runtime's own
weight quantizer (``MatMulNBitsQuantizer``) turns every MatMul into ``MatMulNBits``: int4
block-wise (``group_size`` weights along the input share a float scale, symmetric) or int8
block-wise the same way (ONNX Runtime's quantizer offers one scale per whole column only in
its QDQ format, which its int8-activation kernels do not run), with ``accuracy_level=4`` so
ONNX Runtime runs them with int8 activations. The output folder is staged beside OUT and
renamed into place when complete: a crash or Ctrl-C never leaves a half-written model where a
loader would take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nlpkit.errors import IOFailure, UsageError

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
ACCURACY_LEVEL = 4  # int8 activations: ONNX Runtime's fastest CPU kernels for MatMulNBits


def check_options(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise UsageError(f"unknown --bits {bits}", hint="use 4 (int4) or 8 (int8)")
    if group_size not in GROUP_SIZES:
        raise UsageError(f"unknown --group-size {group_size}", hint="use 32, 64 or 128")


def check_output(out: Path) -> None:
    """OUT must be new (or an empty folder) and its parent writable: refused before any work."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            "the output exists and is not an empty folder", where=str(out), hint="give a new folder"
        )
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError("the output's parent folder does not exist", where=str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise IOFailure("cannot write here (permission denied)", where=str(parent))


def quantize_model(
    model: str,
    out: str | os.PathLike[str],
    bits: int = 4,
    group_size: int = 32,
    eval_text: str | None = None,
    device: str = "cpu",
    receipt_checks: bool = True,
) -> dict[str, Any]:
    """Write the quantized folder ``out`` and return its receipt (also ``out/quantization.json``)."""
    from nlpkit.io.talk import say
    from nlpkit.lm.config import read_config
    from nlpkit.store.resolve import resolve_model

    check_options(bits, group_size)
    dest = Path(out)
    check_output(dest)
    src = resolve_model(model)
    if (src / "model.onnx").is_file():
        raise UsageError("this model is already quantized (it holds model.onnx)", where=str(src))
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise UsageError(
            f"{model} is not a model folder nlpkit can quantize",
            hint="give a decoder model (folder, .gguf or name)",
        )
    if _is_encoder(src):
        return _quantize_encoder(model, src, dest, bits, eval_text, device, receipt_checks)
    cfg = read_config(src)
    if cfg.arch != "llama":
        kind = "an encoder-decoder" if cfg.arch == "seq2seq" else f"an {cfg.arch.upper()}"
        raise UsageError(f"quantize takes decoder-only transformers; {model} is {kind}")
    with _staged(dest) as staging:
        say(f"building the ONNX decoder of {src} ({cfg.n_layer} layers) with int{bits} weights...")
        onnx_bytes = _write_onnx(src, staging, cfg, bits, group_size)
        _copy_model_files(src, staging, bits, group_size)
        receipt = _receipt_base(model, src, staging, bits, group_size, onnx_bytes)
        _write_receipt(staging, receipt)  # the quantized folder loads from here on
        if receipt_checks:
            from nlpkit.quantize.receipt import measure

            receipt |= measure(src, staging, bits, eval_text, device)
        _write_receipt(staging, receipt)
    return receipt


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """A staging folder beside ``dest`` under its lock, renamed into place when the block ends
    normally and removed otherwise: no half-written model is ever where a loader looks."""
    from nlpkit.io.files import fsync_dir, lock_for

    staging = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    with lock_for(dest):
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            yield staging
            if dest.exists():
                dest.rmdir()  # empty, checked by check_output
            os.replace(staging, dest)
            fsync_dir(dest.resolve().parent)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise IOFailure(
                f"cannot write the quantized model ({e.strerror or e})", where=str(dest)
            ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _write_onnx(src: Path, staging: Path, cfg: Any, bits: int, group_size: int) -> int:
    import logging

    from nlpkit.io.deps import require
    from nlpkit.io.tensors import load_tensors
    from nlpkit.quantize.graph import build_decoder

    onnx = require("onnx", "quantize")
    require("onnxruntime", "quantize")
    require("onnx_ir", "quantize")  # ONNX Runtime's weight quantizer is written over onnx_ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    state, _ = load_tensors(str(src / "model.safetensors"))
    graph = build_decoder(cfg, state)
    del state
    config = DefaultWeightOnlyQuantConfig(
        block_size=group_size,
        is_symmetric=True,  # measured on SmolLM2: symmetric int4 loses less than asymmetric
        accuracy_level=ACCURACY_LEVEL,
        bits=bits,
    )
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(graph, algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    path = staging / "model.onnx"
    if model.ByteSize() < 1_800_000_000:
        onnx.save(model, str(path))
    else:  # protobuf's 2 GB limit: weights beside the graph
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    return sum(p.stat().st_size for p in staging.glob("model.onnx*"))


def _copy_model_files(src: Path, staging: Path, bits: int, group_size: int) -> None:
    from nlpkit.store.gguf_folder import copy_tokenizer_files

    copy_tokenizer_files(src, staging)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    extras = cfg.setdefault("nlpkit", {})
    extras["backend"] = "onnxruntime"
    extras["quantization"] = {"bits": bits, "group_size": group_size}
    (staging / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _receipt_base(
    model: str, src: Path, staging: Path, bits: int, group_size: int, onnx_bytes: int
) -> dict[str, Any]:
    import onnx

    from nlpkit import __version__
    from nlpkit.io.tensors import sha256_file

    graph = onnx.load(str(staging / "model.onnx"), load_external_data=False).graph
    float_matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    before = (src / "model.safetensors").stat().st_size
    return {
        "source": model,
        "source_folder": str(src),
        "bits": bits,
        "group_size": group_size,
        "scheme": f"int{bits} symmetric, "
        + f"blocks of {group_size}"
        + f", MatMulNBits accuracy_level={ACCURACY_LEVEL} (int8 activations); embeddings float16",
        "path": "requantized from the float32 weights of the model folder"
        + (" (dequantized from its GGUF)" if any(src.parent.glob("*.gguf")) else ""),
        "bytes_before": before,
        "bytes_after": onnx_bytes,
        "size_ratio": round(onnx_bytes / before, 4),
        "float_fallback_ops": float_matmuls,
        "model_sha256": sha256_file(staging / "model.onnx"),
        "nlpkit_version": __version__,
    }


def _write_receipt(staging: Path, receipt: dict[str, Any]) -> None:
    from nlpkit.io.files import write_bytes_atomic

    data = json.dumps(receipt, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_bytes_atomic(staging / "quantization.json", data.encode("utf-8"))


def _is_encoder(src: Path) -> bool:
    try:
        return json.loads((src / "config.json").read_text(encoding="utf-8")).get("model_type") == "bert"
    except (OSError, ValueError, AttributeError):
        return False


def _quantize_encoder(
    model: str, src: Path, dest: Path, bits: int, eval_text: str | None, device: str, checks: bool
) -> dict[str, Any]:
    """A sentence encoder: int8 weights only (``quantize_dynamic``), staged and renamed like a decoder."""
    from nlpkit import __version__
    from nlpkit.io.tensors import sha256_file
    from nlpkit.quantize.encoder import measure_encoder, quantize_encoder

    if bits != 8:
        raise UsageError("sentence encoders quantize to int8 only", hint="use --bits 8")
    with _staged(dest) as staging:
        size = quantize_encoder(src, staging)
        receipt: dict[str, Any] = {
            "source": model,
            "source_folder": str(src),
            "bits": 8,
            "scheme": "int8 weights, one scale per output channel (onnxruntime quantize_dynamic), "
            "int8 activations quantized per call",
            "path": "quantized from the float32 weights (the exported, fused ONNX graph)",
            "bytes_before": (src / "model.safetensors").stat().st_size,
            "bytes_after": size,
            "size_ratio": round(size / (src / "model.safetensors").stat().st_size, 4),
            "float_fallback_ops": [],
            "model_sha256": sha256_file(staging / "model.onnx"),
            "nlpkit_version": __version__,
        }
        _write_receipt(staging, receipt)
        if checks:
            from nlpkit.quantize.receipt import _eval_text

            receipt |= measure_encoder(src, staging, _eval_text(eval_text), device)
        _write_receipt(staging, receipt)
    return receipt
