"""Updating an index: incremental indexing of files or records, shards, and merging shards.

    with open_writer("kb.idx", {"encoder": "minilm-l6-v2"}) as w:
        summary = update(w, raw_documents(discover(["docs/"])), sync=True)
    print(summary.line("kb.idx"))   # files 3 added, 1 changed, 40 unchanged, 0 removed, ...

A document is identified by its stored path (or record label) and compared by the SHA-256 of
its bytes: the same bytes are never read past hashing, converted or embedded again. Large
corpora shard by a stable hash of the path (``--shard I/N``, each shard its own index, any
scheduler can run them) and ``merge`` their indexes into one, copying vectors without
embedding anything.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError, UsageError
from nlpkit.rag.index import DocumentIn, Index, IndexWriter, Summary

if TYPE_CHECKING:
    from nlpkit.text.documents import Source


# --------------------------------------------------------------------------- updating


def shard_of(name: str, n: int) -> int:
    """Which of ``n`` shards (1-based) a document belongs to: stable across runs and machines."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % n + 1


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"bad --shard {spec!r}", hint="use I/N with 1 <= I <= N, e.g. --shard 2/8")
    return int(m.group(1)), int(m.group(2))


@dataclass
class RawDocument:
    """A source before conversion: from a file (``Source``) or a JSONL record on stdin."""

    name: str
    kind: str
    data: bytes | None = None  # file bytes (read lazily for files)
    text: str | None = None  # record text
    source: Source | None = None


def update(
    writer: IndexWriter,
    docs: Iterable[RawDocument],
    *,
    sync: bool = False,
    shard: tuple[int, int] | None = None,
    warn: Callable[[str], None] = lambda m: None,
    max_bytes: int = 20 << 20,
    progress: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Bring the index up to date with ``docs``: new and changed documents are converted,
    chunked and embedded; unchanged ones (same SHA-256) are skipped; with ``sync`` stored
    documents that were not seen are removed. With ``shard=(i, n)`` only documents of shard
    ``i`` are considered (and removed)."""
    from nlpkit.text.documents import chunk_text, convert, decode_text, read_source, sha256_bytes

    t0 = time.perf_counter()
    s, cfg = writer.summary, writer.config
    known = writer.known()
    seen: set[str] = set()
    for raw in docs:
        progress(1)
        if shard and shard_of(raw.name, shard[1]) != shard[0]:
            continue
        if raw.name in seen:
            warn(f"{raw.name}: given twice; the first one is indexed")
            continue
        seen.add(raw.name)
        if raw.text is None:
            try:
                assert raw.source is not None
                raw.data = read_source(raw.source, max_bytes)
            except OSError as e:
                s.skipped += 1
                warn(f"{raw.name}: skipped ({e.strerror or e})")
                continue
            text = decode_text(raw.data)
            if text is None:
                s.skipped += 1
                warn(f"{raw.name}: skipped (binary or not UTF-8)")
                continue
            digest, size = sha256_bytes(raw.data), len(raw.data)
        else:
            text = raw.text
            digest, size = sha256_bytes(text.encode("utf-8", "surrogatepass")), len(text)
        old = known.get(raw.name)
        if old and old[1] == digest:
            s.unchanged += 1
            continue
        doc = convert(raw.name, text, raw.kind)
        chunks = []
        for c in chunk_text(doc.text, cfg.chunk_size, cfg.overlap):
            a, b = doc.original_span(c.start, c.end)
            chunks.append((a, b, c.text))
        writer.put(DocumentIn(raw.name, digest, size, raw.kind, doc.title, chunks), old[0] if old else None)
        if old:
            s.changed += 1
        else:
            s.added += 1
    writer.flush()
    if sync:
        gone = [
            i
            for p, (i, _) in known.items()
            if p not in seen and (not shard or shard_of(p, shard[1]) == shard[0])
        ]
        s.removed += writer.remove(gone)
    s.seconds = time.perf_counter() - t0
    return s


def raw_documents(sources: Iterable[Source]) -> Iterator[RawDocument]:
    for src in sources:
        yield RawDocument(src.name, src.kind, source=src)


def records_as_documents(records: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[RawDocument]:
    """JSONL records on stdin as documents: ``text`` plus ``path`` or ``id`` (else FILE:LINE),
    and an optional ``format`` (text, markdown, rst or html). The name is only a label: the
    text comes from the record and no file is ever opened for it."""
    for where, rec in records:
        name = rec.get("path", rec.get("id"))
        if name is not None and (isinstance(name, bool) or not isinstance(name, (str, int))):
            kind_name = type(name).__name__
            raise DataError(f"'path' or 'id' must be a string or an integer, not {kind_name}", where=where)
        name = where if name is None else str(name)
        kind = rec.get("format", "text")
        if kind not in ("text", "markdown", "rst", "html"):
            raise DataError(f"unknown format {kind!r}", where=where, hint="use text, markdown, rst or html")
        yield RawDocument(name, kind, text=rec["text"])


# --------------------------------------------------------------------------- merging


def merge(
    writer: IndexWriter, inputs: Sequence[str], progress: Callable[[int], None] = lambda n: None
) -> Summary:
    """Make ``writer``'s index the union of the shard indexes ``inputs`` (vectors are copied,
    nothing is embedded; a document in two inputs: the first wins). Documents of the output
    that no input holds any more are removed. Every input must use the same encoder."""
    import numpy as np

    t0 = time.perf_counter()
    s = writer.summary
    known = writer.known()
    seen: set[str] = set()
    for name in inputs:
        with Index(name) as src:
            if (src.meta["encoder_name"], src.dim) != (writer.meta["encoder_name"], writer.dim):
                raise DataError(
                    f"built with {src.meta['encoder_name']} ({src.dim} dims), the output with "
                    f"{writer.meta['encoder_name']} ({writer.dim} dims)",
                    where=name,
                    hint="merge only shards built with the same -m",
                )
            matrix = src.matrix()
            for doc_id, path, sha, size, kind, title in src.conn.execute(
                "SELECT id, path, sha256, size, kind, title FROM documents ORDER BY id"
            ).fetchall():
                progress(1)
                if path in seen:
                    continue
                seen.add(path)
                old = known.get(path)
                if old and old[1] == sha:
                    s.unchanged += 1
                    continue
                rows = src.conn.execute(
                    "SELECT start_char, end_char, text, row FROM chunks WHERE doc_id = ? ORDER BY seq",
                    (doc_id,),
                ).fetchall()
                vecs = (
                    np.asarray(matrix[[r[3] for r in rows]]) if rows else np.zeros((0, src.dim), np.float32)
                )
                chunks = [(a, b, t) for a, b, t, _ in rows]
                writer.put(DocumentIn(path, sha, size, kind, title, chunks, vecs), old[0] if old else None)
                s.changed += bool(old)
                s.added += not old
            writer.flush()
    s.removed += writer.remove(i for p, (i, _) in known.items() if p not in seen)
    s.seconds = time.perf_counter() - t0
    return s
