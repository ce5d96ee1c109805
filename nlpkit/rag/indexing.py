"""Updating an index: incremental indexing of files or records, shards, and merging shards.

    with open_writer("kb.idx", {"encoder": "minilm-l6-v2"}) as w:
        summary = update(w, file_documents(["docs/"]), sync=SyncScope.of(["docs/"]))
    print(summary.line("kb.idx"))   # files 3 added, 1 changed, 40 unchanged, 0 removed, ...

Identity. A file's document is keyed by its resolved absolute path (``document_key``:
``os.path.realpath``, links in the folders above it resolved), so ``docs``, ``./docs``,
``../proj/docs``, ``/home/me/proj/docs`` and a link to it are one folder and each file one
document; a record from stdin is keyed by its label (``path`` or ``id``) exactly as given.
Documents are compared by the SHA-256 of their bytes: the same bytes are never read past
hashing, converted or embedded again. Citations show the key relative to the current folder
when the document lies under it (``index.display_path``).

Keys stored before this rule (paths as typed: ``docs/a.md``, or absolute through a link) still
work: any stored key that is not already a resolved absolute path is read as a path relative
to the current folder, so a run from the folder the index was built in finds the document,
re-keys it (no embedding when its bytes are unchanged) and drops other stale copies of it.
Run from elsewhere, such keys are neither matched nor removed by a folder's ``--sync``
(``--rebuild`` clears them). Record labels are such keys too: a label that names a file
indexed from the current folder is taken as that file's old key.

``--sync`` removes only what the sources of the run justify (``SyncScope``): documents under
a folder source, the document of a file source, those a glob pattern matches (or that lie
under a folder it matches), and for ``-`` the records (keys that are not absolute paths),
each only when this run did not index it. Documents of other sources are never touched, and
a folder or pattern that yields no document is refused (it would empty its part of the index).

Large corpora shard by a stable hash of the key (``--shard I/N``, each shard its own index,
any scheduler can run them) and ``merge`` their indexes into one, copying vectors without
embedding anything. A shard index built before the identity rule should be rebuilt: its keys
(and so the shard of each document) were the paths as typed.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError, UsageError
from nlpkit.rag.index import DocumentIn, Index, IndexWriter, Summary

if TYPE_CHECKING:
    from nlpkit.text.documents import Source


# --------------------------------------------------------------------------- identity


def resolved(path: str) -> str | None:
    """``os.path.realpath(path)`` (relative paths against the current folder), or None for a
    name no path can have (a NUL in a record label) or when the current folder is gone."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


def document_key(src: Source) -> str:
    """The identity of a file's document: its resolved absolute path. A file found inside a
    folder keeps its own name (links are never followed there; only the folders above it are
    resolved); a file named on the command line is followed, as ``cat`` does, so a link named
    there is indexed as the file it points to."""
    if src.named:
        return os.path.realpath(src.path)
    head, tail = os.path.split(src.path)
    return os.path.join(os.path.realpath(head or os.curdir), tail)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


def _split_pattern(spec: str) -> tuple[str, list[str]]:
    """``docs/*/x.md`` -> (the resolved ``docs``, ``["*", "x.md"]``): the folder before the
    first component with glob magic, and the components from there on."""
    parts = spec.split(os.sep)
    at = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    base = os.sep.join(parts[:at]) or (os.sep if spec.startswith(os.sep) else os.curdir)
    return os.path.realpath(base), [p for p in parts[at:] if p]


def _matches(pattern: list[str], parts: list[str]) -> bool:
    """Whether a leading run of ``parts`` matches all of ``pattern`` as ``glob`` would (``*``
    stays inside one name and skips hidden ones, ``**`` spans folders): a matched folder
    covers what lies inside it."""
    if not pattern:
        return True
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, parts[i:]) for i in range(len(parts) + 1))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _matches(rest, parts[1:])


@dataclass
class SyncScope:
    """The stored documents that ``--sync`` may remove: those the sources of the run cover.

    A folder source covers the documents whose resolved path lies inside it; a file source
    the document of that file; a glob pattern the documents it matches or that lie under a
    folder it matches (a deleted file included), plus whatever its current matches cover;
    ``-`` the records (keys that are not absolute paths). Nothing else is ever removed.
    """

    folders: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)
    patterns: list[tuple[str, list[str]]] = field(default_factory=list)
    records: bool = False

    @classmethod
    def of(cls, sources: Iterable[str]) -> SyncScope:
        scope = cls()
        for spec in sources:
            if spec == "-":
                scope.records = True
            elif not os.path.lexists(spec) and glob.has_magic(spec):
                scope.patterns.append(_split_pattern(spec))
                for match in glob.glob(spec, recursive=True):
                    scope._add(match)
            else:
                scope._add(spec)
        return scope

    def _add(self, path: str) -> None:
        if os.path.isdir(path):
            self.folders.append(os.path.realpath(path))
        else:
            self.files.add(os.path.realpath(path))

    def covers(self, key: str) -> bool:
        """Whether the stored document ``key`` lies inside the sources."""
        if not os.path.isabs(key):
            return self.records
        where = resolved(key)
        if where is None:
            return False
        if where in self.files or any(_inside(where, f) for f in self.folders):
            return True
        for base, pattern in self.patterns:
            inside = _inside(where, base) and where != base
            if inside and _matches(pattern, os.path.relpath(where, base).split(os.sep)):
                return True
        return False


# --------------------------------------------------------------------------- updating


def shard_of(name: str, n: int) -> int:
    """Which of ``n`` shards (1-based) a document belongs to, by a hash of its key: stable
    across runs, and across machines that see the corpus at the same path."""
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
    """A source before conversion: from a file (``Source``) or a JSONL record on stdin.
    ``name`` is its identity (``document_key`` for a file, the label for a record)."""

    name: str
    kind: str
    data: bytes | None = None  # file bytes (read lazily for files)
    text: str | None = None  # record text
    source: Source | None = None

    @property
    def shown(self) -> str:
        """The name for warnings: the path as the user gave it."""
        return self.source.name if self.source is not None else self.name


def update(
    writer: IndexWriter,
    docs: Iterable[RawDocument],
    *,
    sync: SyncScope | None = None,
    shard: tuple[int, int] | None = None,
    warn: Callable[[str], None] = lambda m: None,
    max_bytes: int = 20 << 20,
    progress: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Bring the index up to date with ``docs``: new and changed documents are converted,
    chunked and embedded; unchanged ones (same SHA-256) are skipped; stale copies of a file
    stored under an older key are re-keyed or dropped (module docstring). With ``sync``
    (``SyncScope.of(sources)``) stored documents it covers that this run did not index are
    removed. With ``shard=(i, n)`` only documents of shard ``i`` are considered (and removed)."""
    from nlpkit.text.documents import chunk_text, convert, decode_text, read_source, sha256_bytes

    if sync is not None and not isinstance(sync, SyncScope):
        raise TypeError("sync takes SyncScope.of(sources): what the sources of the run may remove")
    t0 = time.perf_counter()
    s, cfg = writer.summary, writer.config
    known = writer.known()
    aliases: dict[str, list[str]] | None = None  # resolved path -> stored keys that are not it
    seen: set[str] = set()
    matched: set[int] = set()  # stored documents this run indexed (kept, re-keyed or replaced)
    stale: set[int] = set()  # other stored copies of a file this run indexed
    renames: list[tuple[int, str]] = []
    for raw in docs:
        progress(1)
        if shard and shard_of(raw.name, shard[1]) != shard[0]:
            continue
        if raw.name in seen:
            warn(f"{raw.shown}: given twice; the first one is indexed")
            continue
        seen.add(raw.name)
        if raw.text is None:
            try:
                assert raw.source is not None
                raw.data = read_source(raw.source, max_bytes)
            except OSError as e:
                s.skipped += 1
                warn(f"{raw.shown}: skipped ({e.strerror or e})")
                continue
            text = decode_text(raw.data)
            if text is None:
                s.skipped += 1
                warn(f"{raw.shown}: skipped (binary or not UTF-8)")
                continue
            digest, size = sha256_bytes(raw.data), len(raw.data)
        else:
            text = raw.text
            digest, size = sha256_bytes(text.encode("utf-8", "surrogatepass")), len(text)
        old = known.get(raw.name)
        renamed = False
        if raw.source is not None:
            if aliases is None:
                aliases = _aliases(known)
            for key in aliases.get(raw.name, ()):
                if old is None and known[key][0] not in stale:
                    old, renamed = known[key], True
                else:
                    stale.add(known[key][0])
        if old:
            matched.add(old[0])
            stale.discard(old[0])
        if old and old[1] == digest:
            s.unchanged += 1
            if renamed:
                renames.append((old[0], raw.name))
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
    writer.rename(renames)
    gone = stale - matched
    if sync is not None:
        gone |= {
            i
            for p, (i, _) in known.items()
            if i not in matched and (not shard or shard_of(p, shard[1]) == shard[0]) and sync.covers(p)
        }
    s.removed += writer.remove(sorted(gone))
    s.seconds = time.perf_counter() - t0
    return s


def _aliases(known: dict[str, tuple[int, str]]) -> dict[str, list[str]]:
    """Stored keys that are not resolved absolute paths (paths as typed before the identity
    rule, record labels), by the path they resolve to from the current folder."""
    out: dict[str, list[str]] = {}
    for key in sorted(known):
        where = resolved(key)
        if where is not None and where != key:
            out.setdefault(where, []).append(key)
    return out


def file_documents(
    sources: Sequence[str],
    *,
    warn: Callable[[str], None] = lambda m: None,
    max_bytes: int = 20 << 20,
    sync: bool = False,
) -> list[RawDocument]:
    """The documents of ``sources`` (files, folders, glob patterns), each once under its
    identity (``document_key``) however many sources or spellings reach it. With ``sync`` a
    pattern matching nothing is ``InputMissing`` (``discover``) and a folder or pattern that
    yields no document is a ``UsageError``, before anything is touched: ``--sync`` would
    remove every document indexed from it."""
    from nlpkit.text.documents import discover

    out: list[RawDocument] = []
    keys: set[str] = set()
    for spec in sources:
        found = list(discover([spec], warn=warn, max_bytes=max_bytes, strict=sync))
        if sync and not found and (os.path.isdir(spec) or not os.path.lexists(spec)):
            raise UsageError(
                "no documents to index here, and --sync would remove every document indexed from it",
                where=spec,
                hint="check the folder or pattern (mounted? empty?), or run without --sync",
            )
        for src in found:
            key = document_key(src)
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                warn(f"{src.name}: skipped (its resolved path is not valid UTF-8)")
                continue
            if key not in keys:
                keys.add(key)
                out.append(RawDocument(key, src.kind, source=src))
    return out


def raw_documents(sources: Iterable[Source]) -> Iterator[RawDocument]:
    """Discovered files as documents under their identity (``document_key``)."""
    for src in sources:
        yield RawDocument(document_key(src), src.kind, source=src)


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
