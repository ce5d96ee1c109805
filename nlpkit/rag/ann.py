"""Approximate nearest neighbours for big indexes: an optional FAISS HNSW graph beside the vectors.

    nlpkit rag-index docs/ -o big.idx --ann hnsw      # pip install 'nlpkit[faiss]'

The exact search (one pass over the memory-mapped matrix) stays the default: it is exact and
fast enough up to a few hundred thousand chunks (37 ms p50 hybrid at 100k, bench_rag.py).
Past that, ``--ann hnsw`` keeps an ``IndexHNSWFlat`` (inner product, M = 32) in
``INDEX/ann-G.faiss``, recorded in the meta table with the vector file and row count it covers.

Incremental and crash-safe like the rest of the index: rows appended by later runs are added
to the graph (a graph never has to be rebuilt for new files), the new graph is written to a
temporary file, fsynced and renamed, and only then does one transaction point the meta at it;
a compaction (new vector file) makes the next refresh build a new graph. Deleted chunks stay
in the graph until then and are filtered out at query time like dead rows of the matrix. A
reader uses the graph only if it covers the current vector file, and searches rows the graph
does not cover yet exactly, so answers never miss a committed chunk.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from nlpkit.errors import UsageError
from nlpkit.io.deps import import_faiss

if TYPE_CHECKING:
    import numpy as np

    from nlpkit.rag.index import Index, IndexWriter


KINDS = ("exact", "hnsw")
HNSW_M = 32


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"unknown --ann {kind!r}", hint="use exact or hnsw")
    return kind


def refresh(writer: IndexWriter, kind: str | None = None) -> None:
    """Bring the index's graph up to date with its vectors (or drop it for ``exact``)."""
    import numpy as np

    if kind is not None:
        writer.set_meta_now(ann=check_kind(kind))
    kind = writer.meta.get("ann", "exact")
    old = writer.meta.get("ann_file", "")
    rows = int(writer.meta["rows"])
    if kind == "exact":
        if old:
            writer.set_meta_now(ann_file="", ann_rows="0", ann_vectors="")
            (writer.folder / old).unlink(missing_ok=True)
        return
    faiss = import_faiss()
    same_vectors = writer.meta.get("ann_vectors") == writer.meta["vectors_file"]
    covered = int(writer.meta.get("ann_rows", "0")) if old and same_vectors else 0
    if old and covered == rows:
        return
    if covered:
        graph = faiss.read_index(str(writer.folder / old))
    else:
        graph = faiss.IndexHNSWFlat(writer.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    matrix = writer.matrix()
    for start in range(covered, rows, 65536):
        graph.add(np.ascontiguousarray(matrix[start : min(rows, start + 65536)], dtype=np.float32))
    gen = int(re.findall(r"\d+", old)[-1]) + 1 if old else 0
    name = f"ann-{gen}.faiss"
    tmp = writer.folder / f".{name}.tmp-{os.getpid()}"
    faiss.write_index(graph, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, writer.folder / name)
    writer.set_meta_now(ann_file=name, ann_rows=str(rows), ann_vectors=writer.meta["vectors_file"])
    if old and old != name:
        (writer.folder / old).unlink(missing_ok=True)


def graph_for(index: Index) -> tuple[Any, int] | None:
    """The index's graph and the rows it covers, if it has one that matches its vector file."""
    m = index.meta
    if m.get("ann", "exact") == "exact" or not m.get("ann_file") or m.get("ann_vectors") != m["vectors_file"]:
        return None
    cached = index._ann
    if cached is None:
        faiss = import_faiss()
        cached = (faiss.read_index(str(index.folder / m["ann_file"])), int(m["ann_rows"]))
        index._ann = cached
    return cached


def search(index: Index, q: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, scores)`` of about the ``want`` best rows by the graph, plus an exact pass over
    rows it does not cover yet; None when the index has no usable graph."""
    import numpy as np

    found = graph_for(index)
    if found is None:
        return None
    graph, covered = found
    graph.hnsw.efSearch = max(64, want)
    scores, rows = graph.search(np.asarray(q, np.float32)[None, :], want)
    keep = rows[0] >= 0
    rows_, scores_ = rows[0][keep].astype(np.int64), scores[0][keep]
    matrix = index.matrix()
    if len(matrix) > covered:  # appended since the graph was written (a run was killed)
        tail = matrix[covered:] @ np.asarray(q, np.float32)
        rows_ = np.concatenate([rows_, np.arange(covered, len(matrix))])
        scores_ = np.concatenate([scores_, tail])
    order = np.argsort(-scores_, kind="stable")[:want]
    return rows_[order], scores_[order]
