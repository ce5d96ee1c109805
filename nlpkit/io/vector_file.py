"""nlpkit's word-vectors file: one safetensors file, memory-mapped on load.

Tensors ``vectors`` (float32, n x d), ``norms`` (float32, n) and ``words`` (the words joined by
newlines, UTF-8 bytes); metadata ``nlpkit.kind = "vectors"`` and ``nlpkit.config`` (count, dim).
The format lives here, below the store, because pulling GloVe writes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from nlpkit.errors import DataError
from nlpkit.io.tensors import load_tensors, provenance, save_tensors

KIND = "vectors"


def write_vectors(
    path: str,
    words: Sequence[str],
    vectors: np.ndarray,
    metadata: dict[str, str],
    norms: np.ndarray | None = None,
) -> None:
    """Write ``words`` and their ``vectors`` (atomically; ``-`` is stdout)."""
    for w in words:
        if "\n" in w or not w:
            raise DataError(f"word {w[:50]!r} cannot be stored (empty or contains a newline)")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if norms is None:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)).astype(np.float32)
    config = json.dumps({"count": len(words), "dim": int(vectors.shape[1])})
    meta = {**provenance(), **metadata, "nlpkit.config": config}
    tensors = {
        "vectors": vectors,
        "norms": norms,
        "words": np.frombuffer("\n".join(words).encode("utf-8"), dtype=np.uint8),
    }
    save_tensors(path, tensors, meta, kind=KIND)


def read_vectors(path: str) -> tuple[np.ndarray, np.ndarray | None, bytes, dict[str, str]]:
    """``(vectors, norms or None, the words blob, metadata)``, every shape and byte checked."""
    tensors, meta = load_tensors(path)
    if meta.get("nlpkit.kind") != KIND or "vectors" not in tensors or "words" not in tensors:
        raise DataError("not an nlpkit vectors file (kind or tensors missing)", where=path)
    vectors, words_blob = tensors["vectors"], tensors["words"]
    if vectors.ndim != 2 or vectors.dtype != np.float32 or words_blob.dtype != np.uint8:
        raise DataError("vectors must be float32 (n, d) and words uint8", where=path)
    blob = words_blob.tobytes()
    count = blob.count(b"\n") + 1 if blob else 0
    if count != len(vectors):
        raise DataError(f"{count} words for {len(vectors)} vectors", where=path)
    norms = tensors.get("norms")
    if norms is not None and norms.shape != (count,):
        raise DataError("norms do not match the vectors", where=path)
    try:
        blob.decode("utf-8")  # validate once (fast); decoding into a list waits until needed
    except UnicodeDecodeError:
        raise DataError("words are not valid UTF-8", where=path) from None
    return vectors, norms, blob, meta
