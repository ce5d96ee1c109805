"""The sentence encoder exported to ONNX (cached per model) and run by ONNX Runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.embed.config import Runner
from nlpkit.errors import DataError, IOFailure, Unavailable
from nlpkit.io.deps import allowed_cores, check_runtime

if TYPE_CHECKING:
    import numpy as np


# --------------------------------------------------------------------------- ONNX Runtime

EXPORT_VERSION = "1"  # part of the cache key: bump whenever the exported graph changes
OPSET = 17


def onnx_cache_dir(folder: Path) -> Path:
    """``$NLPKIT_HOME/onnx/KEY/``: KEY hashes the weights, config.json and the export recipe."""
    import hashlib

    from nlpkit import store
    from nlpkit.io.tensors import sha256_file

    weights = None
    manifest = folder / "asset.json"
    if manifest.is_file():  # a store asset already knows its hash: skip re-reading 90 MB
        try:
            weights = json.loads(manifest.read_text()).get("files", {}).get("model.safetensors")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            weights = None
    if not isinstance(weights, str):
        weights = sha256_file(folder / "model.safetensors")
    h = hashlib.sha256(f"nlpkit-onnx {EXPORT_VERSION} opset {OPSET}\n{weights}\n".encode())
    h.update((folder / "config.json").read_bytes())
    return store.home() / "onnx" / h.hexdigest()[:32]


def _cached_ok(path: Path) -> bool:
    """The cached graph exists and its SHA-256 matches the receipt written after it."""
    from nlpkit.io.tensors import sha256_file

    try:
        receipt = json.loads(path.with_suffix(".json").read_text())
        return path.stat().st_size == receipt["size"] and sha256_file(path) == receipt["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_onnx(folder: Path) -> tuple[Path, bool]:
    """The cached ONNX graph of ``folder``'s encoder, exported first if missing or damaged.

    Returns ``(path, exported_now)``. Concurrent runs take turns on a lock beside the file,
    so one exports and the others reuse its result.
    """
    from nlpkit.io.files import lock_for

    target = onnx_cache_dir(folder) / "model.onnx"
    if _cached_ok(target):
        return target, False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IOFailure(f"cannot create the ONNX cache ({e.strerror})", where=str(target.parent)) from None
    with lock_for(target, wait=True):
        if _cached_ok(target):
            return target, False
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # a killed export's leftovers
            stale.unlink(missing_ok=True)
        export_onnx(folder, target)
    return target, True


def export_onnx(folder: Path, target: Path) -> None:
    """Export ``SentenceBert`` (pooling + normalisation inside the graph), fuse it with ONNX
    Runtime's BERT optimizer where available, and move it into place with a receipt."""
    import time
    import warnings

    from nlpkit.embed.bert import SentenceBert, load_bert
    from nlpkit.io.deps import import_torch
    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.talk import say
    from nlpkit.io.tensors import sha256_file

    torch = import_torch()
    check_runtime("onnx")
    started = time.monotonic()
    say(f"exporting {folder.name} to ONNX once (cached in {target.parent})")
    model = SentenceBert(load_bert(folder))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    dummy = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    axes = {"batch": 0, "seq": 1}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model,
                dummy,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["embeddings"],
                dynamic_axes={
                    "input_ids": {v: k for k, v in axes.items()},
                    "attention_mask": {v: k for k, v in axes.items()},
                    "embeddings": {0: "batch"},
                },
                do_constant_folding=True,
            )
        fused = _fuse(tmp, model.bert.cfg.num_attention_heads, model.bert.cfg.hidden_size)
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    receipt = {"sha256": sha, "size": size, "opset": OPSET, "fused": fused, "source": str(folder)}
    write_bytes_atomic(target.with_suffix(".json"), (json.dumps(receipt, indent=2) + "\n").encode())
    say(f"exported in {time.monotonic() - started:.1f}s ({', '.join(fused) or 'no fusions'})")


def _fuse(path: Path, num_heads: int, hidden_size: int) -> list[str]:
    """Rewrite the graph with ONNX Runtime's BERT fusions (Attention, SkipLayerNorm, BiasGelu)
    in place; returns what was fused. A failure keeps the plain graph: slower, same result."""
    from nlpkit.io.talk import say

    try:
        from onnxruntime.transformers import optimizer

        opt = optimizer.optimize_model(
            str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        stats = opt.get_fused_operator_statistics()
        opt.save_model_to_file(str(path))
    except Exception as e:  # the optimizer is best effort by design
        say(f"ONNX Runtime's BERT fusions failed ({type(e).__name__}: {e}); using the plain graph")
        return []
    return sorted(f"{k}x{v}" for k, v in stats.items() if v)


def onnx_session(path: Path, device: str) -> Any:
    """An InferenceSession with every graph optimisation, one thread per allowed core."""
    ort = check_runtime("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = allowed_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its warnings are not for our users
    available = ort.get_available_providers()
    cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), opts, providers=providers)
    if cuda and "CUDAExecutionProvider" not in session.get_providers():
        raise Unavailable(
            "--device cuda was asked for but ONNX Runtime has no CUDA here",
            hint="pip install onnxruntime-gpu, or use --device cpu",
        )
    return session


def onnx_runner(folder: Path, device: str) -> Runner:
    """Run the cached ONNX graph (exporting it first if needed; a damaged cache is redone once)."""
    check_runtime("onnxruntime")
    path, fresh = ensure_onnx(folder)
    try:
        session = onnx_session(path, device)
    except Unavailable:
        raise
    except Exception as e:
        if fresh:
            raise DataError(f"ONNX Runtime cannot load the exported graph ({e})", where=str(path)) from None
        from nlpkit.io.talk import say

        say(f"the cached ONNX graph cannot be loaded ({type(e).__name__}); exporting it again")
        path.with_suffix(".json").unlink(missing_ok=True)
        path, _ = ensure_onnx(folder)
        session = onnx_session(path, device)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    return run


def quantized_runner(folder: Path, device: str) -> Runner:
    """Run a quantized encoder folder's ``model.onnx`` after checking it against the SHA-256 in
    its ``quantization.json`` (a damaged file is bad data, never silently used)."""
    from nlpkit.io.tensors import verified_onnx

    check_runtime("onnxruntime")
    path = Path(verified_onnx(folder))
    try:
        session = onnx_session(path, device)
    except Unavailable:
        raise
    except Exception as e:
        raise DataError(f"ONNX Runtime cannot load the model ({str(e)[:200]})", where=str(path)) from None

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    return run
