"""Optional dependencies and devices: the one place that imports torch, onnxruntime or faiss
(or raises ``Unavailable``, exit 69, with the install hint) and picks a device."""

from __future__ import annotations

import os
from typing import Any

from nlpkit.errors import Unavailable, UsageError

# module -> (the extra that installs it, what the pip package is called when it differs)
EXTRAS = {
    "torch": ("torch", None),
    "onnxruntime": ("onnx", None),
    "onnx": ("onnx", None),
    "faiss": ("faiss", "faiss-cpu"),
    "matplotlib": ("plot", None),
    "vaderSentiment": ("sentiment", "vadersentiment"),
    "starlette": ("serve", None),
    "uvicorn": ("serve", None),
}


def require(module: str, needed_for: str | None = None) -> Any:
    """Import the optional ``module`` or raise ``Unavailable`` (exit 69) naming the extra that
    installs it: the one optional-dependency check. ``needed_for`` starts the message
    (``"--ann hnsw"`` -> "--ann hnsw needs faiss, which is not installed")."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra, package = EXTRAS.get(module.split(".")[0], (None, None))
        what = f"{needed_for} needs {module}" if needed_for else f"{module} is needed"
        hint = f"pip install 'nlpkit[{extra}]'" if extra else f"pip install {module}"
        if package:
            hint += f" ({package})"
        raise Unavailable(f"{what}, which is not installed", hint=hint) from None


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def import_faiss() -> Any:
    return require("faiss", "--ann hnsw")


def allowed_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_runtime(name: str) -> Any:
    """Import onnx or onnxruntime, or raise ``Unavailable`` (69) with the install line."""
    return require(name)


# --------------------------------------------------------------------------- devices


def import_torch() -> Any:
    """torch, or ``Unavailable`` (exit 69) with the install command."""
    return require("torch", "this command")


def resolve_device(name: str) -> str:
    torch = import_torch()
    if name not in ("cpu", "cuda", "auto") and not name.startswith("cuda:"):
        raise UsageError(f"unknown --device {name!r}", hint="use cpu, cuda or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Unavailable(
            "--device cuda was asked for but CUDA is not available", hint="use --device cpu or auto"
        )
    return name
