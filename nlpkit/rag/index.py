"""The retrieval index: an embedded store that cron can update incrementally and safely.

An index is a folder::

    INDEX/index.sqlite     documents, chunks (text + character offsets), an FTS5 table (BM25),
                           and meta (encoder, dim, chunking, the vector file and its row count)
    INDEX/vectors-G.f32    the chunk embeddings: float32 rows, L2-normalised, memory-mapped
    INDEX.lock             beside the folder, held (flock) by the one run that writes

    with open_writer("kb.idx", {"encoder": "minilm-l6-v2"}) as w:    # updates: nlpkit.rag.indexing
        summary = update(w, file_documents(["docs/"]), sync=SyncScope.of(["docs/"]))

Crash safety (``kill -9`` at any instant leaves an index that ``rag-ask`` can use, and the
next run repairs): the vector file is append-only; new rows are written and fsynced *before*
the SQLite transaction that adds their chunks and the new valid row count commits. Rows past
that count are garbage from a killed run and are truncated when the next writer opens the
index. One transaction per batch of files: a file is indexed whole or not at all. Compaction
(when deleted chunks leave more dead rows than live ones) writes a new ``vectors-(G+1).f32``
and switches to it in one transaction; unreferenced vector files are deleted on open.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nlpkit import __version__
from nlpkit.errors import DataError, InputMissing, IOFailure, UsageError

if TYPE_CHECKING:
    import numpy as np


FORMAT_VERSION = "1"
DB_NAME = "index.sqlite"
DEFAULT_ENCODER = "minilm-l6-v2"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    kind TEXT NOT NULL, title TEXT NOT NULL, n_chunks INTEGER NOT NULL, indexed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, start_char INTEGER NOT NULL, end_char INTEGER NOT NULL,
    title TEXT NOT NULL, text TEXT NOT NULL, row INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE UNIQUE INDEX IF NOT EXISTS chunks_row ON chunks(row);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    title, text, content='chunks', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
END;
"""


# --------------------------------------------------------------------------- encoders


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


class HashEncoder:
    """Bag-of-words feature hashing (``-m hash`` or ``hash:DIM``): no model, no torch.

    Deterministic across processes (CRC32 of each lower-cased word picks a dimension and a
    sign; weights are 1 + log tf). Lexical only: it is for tests, and for machines where a
    neural encoder cannot run. Vectors are L2-normalised like every encoder's.
    """

    def __init__(self, dim: int = 256):
        if not 8 <= dim <= 65536:
            raise UsageError("hash:DIM needs 8 <= DIM <= 65536")
        self.dim, self.name, self.max_length = dim, f"hash:{dim}", 1 << 30

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import numpy as np

        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            counts: dict[int, int] = {}
            for word in re.findall(r"\w+", text.lower()):
                h = zlib.crc32(word.encode())
                counts[h] = counts.get(h, 0) + 1
            for h, c in counts.items():
                out[i, h % self.dim] += (1.0 if (h >> 20) & 1 else -1.0) * (1.0 + np.log(c))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def load_text_encoder(spec: str, device: str = "cpu") -> Encoder:
    """``hash[:DIM]`` (built in) or anything ``nlpkit.embed.encoder.load_encoder`` accepts."""
    if spec == "hash" or spec.startswith("hash:"):
        try:
            return HashEncoder(int(spec.partition(":")[2] or 256))
        except ValueError:
            raise UsageError(f"bad encoder {spec!r}", hint="use hash or hash:DIM") from None
    from nlpkit.embed.encoder import load_encoder

    enc: Encoder = load_encoder(spec=spec, backend="auto", device=device)
    return enc


# --------------------------------------------------------------------------- the store


@dataclass
class IndexConfig:
    """How an index is built; fixed when it is created and recorded in its meta table."""

    encoder: str = DEFAULT_ENCODER  # -m: named asset, model folder, or hash[:DIM]
    chunk_size: int = 1000  # --chunk-size: most characters per chunk
    overlap: int = 150  # --overlap: characters shared by consecutive chunks (whole sentences)

    def __post_init__(self) -> None:
        if self.chunk_size < 50 or not 0 <= self.overlap < self.chunk_size:
            raise UsageError("need --chunk-size >= 50 and 0 <= --overlap < --chunk-size")


def _connect(db: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Index:
    """An index opened for reading: meta, the vector matrix (memory-mapped) and its chunks."""

    def __init__(self, folder: str | os.PathLike[str], readonly: bool = True):
        self.folder = Path(folder)
        db = self.folder / DB_NAME
        if not db.is_file():
            hint = "build it with nlpkit rag-index SOURCES -o INDEX"
            raise InputMissing("not an nlpkit index (no index.sqlite)", where=str(folder), hint=hint)
        try:
            self.conn = _connect(db, readonly)
            self.meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise DataError(f"unreadable index database ({e})", where=str(db)) from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise DataError(
                f"index format {self.meta.get('format')!r} is not {FORMAT_VERSION!r}", where=str(db)
            )
        self.dim = int(self.meta["dim"])
        self._matrix: np.ndarray | None = None
        self._ann: Any = None  # nlpkit.rag.ann: the FAISS graph, loaded on first use

    @property
    def config(self) -> IndexConfig:
        m = self.meta
        return IndexConfig(m["encoder"], int(m["chunk_size"]), int(m["overlap"]))

    def reload_meta(self) -> None:
        self.meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        self._matrix = None

    def matrix(self) -> np.ndarray:
        """The valid rows of the vector file, memory-mapped read-only: (rows, dim) float32."""
        import numpy as np

        if self._matrix is None:
            rows = int(self.meta["rows"])
            path = self.folder / self.meta["vectors_file"]
            if rows == 0:
                self._matrix = np.zeros((0, self.dim), np.float32)
            else:
                have = path.stat().st_size // (4 * self.dim) if path.exists() else 0
                if have < rows:
                    raise DataError(f"vector file has {have} rows, the index expects {rows}", where=str(path))
                self._matrix = np.memmap(path, np.float32, "r", shape=(rows, self.dim))
        return self._matrix

    def stats(self) -> dict[str, Any]:
        q = self.conn.execute
        return {
            "documents": q("SELECT count(*) FROM documents").fetchone()[0],
            "chunks": q("SELECT count(*) FROM chunks").fetchone()[0],
            "rows": int(self.meta["rows"]),
            "encoder": self.meta["encoder"],
            "dim": self.dim,
        }

    def close(self) -> None:
        self._matrix = self._ann = None
        self.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def display_path(key: str, cwd: str | None = None) -> str:
    """How a citation shows the document stored under ``key``: relative to the current folder
    when it lies under it (``docs/os.rst``, openable from there), else the key as stored (a
    resolved absolute path, a record's label, or a path as typed in an older index)."""
    if not os.path.isabs(key):
        return key
    if cwd is None:
        try:
            cwd = os.path.realpath(os.getcwd())
        except OSError:  # the current folder was deleted
            return key
    if cwd == os.sep or not key.startswith(cwd + os.sep):
        return key
    return key[len(cwd) + 1 :]


def open_index(folder: str | os.PathLike[str]) -> Index:
    """Open INDEX for reading (``rag-ask``); no lock needed, writers never block readers."""
    for attempt in range(3):
        index = Index(folder)
        try:
            index.matrix()  # a compaction may have switched files between meta and open
            return index
        except FileNotFoundError:
            index.close()
            if attempt == 2:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- writing


@dataclass
class DocumentIn:
    """One document ready to store: its chunks with offsets, and optionally their vectors."""

    path: str
    sha256: str
    size: int
    kind: str
    title: str
    chunks: list[tuple[int, int, str]]  # (start, end, text), offsets into the original
    vectors: np.ndarray | None = None  # (len(chunks), dim); None: embed them


@dataclass
class Summary:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: int = 0
    chunks_embedded: int = 0
    chunks_copied: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def line(self, index: str) -> str:
        rate = self.chunks_embedded / self.embed_seconds if self.embed_seconds else 0.0
        extra = f", {self.chunks_copied} copied" if self.chunks_copied else ""
        return (
            f"{index}: files {self.added} added, {self.changed} changed, {self.unchanged} unchanged, "
            f"{self.removed} removed, {self.skipped} skipped; chunks {self.chunks_embedded} embedded "
            f"({rate:.1f}/s){extra}; index holds {self.stats.get('documents', 0)} files, "
            f"{self.stats.get('chunks', 0)} chunks ({self.seconds:.1f} s)"
        )


def embed_text(title: str, text: str) -> str:
    """What the encoder sees for a chunk: its document's title, then the chunk."""
    return f"{title}\n\n{text}" if title else text


class IndexWriter(Index):
    """An index opened for writing, under its lock (see ``open_writer``)."""

    def __init__(self, folder: Path, device: str = "cpu", batch_chunks: int = 128):
        super().__init__(folder, readonly=False)
        self.device, self.batch_chunks = device, batch_chunks
        self._encoder: Encoder | None = None
        self._pending: list[tuple[DocumentIn, int | None]] = []
        self.summary = Summary()
        self._repair()

    # ---- open / repair

    def _repair(self) -> None:
        """Truncate rows a killed run appended but never committed; drop unreferenced files."""
        current = self.meta["vectors_file"]
        path = self.folder / current
        valid = int(self.meta["rows"]) * self.dim * 4
        have = path.stat().st_size if path.exists() else 0
        if have < valid:  # lost rows (never from a kill: rows are fsynced before they count)
            raise DataError(
                f"vector file has {have // (4 * self.dim)} rows, the index expects {self.meta['rows']}",
                where=str(path),
                hint="rebuild the index with --rebuild",
            )
        with open(path, "ab") as f:
            if f.tell() > valid:
                f.truncate(valid)
                os.fsync(f.fileno())
        keep = {current, self.meta.get("ann_file", "")}
        for other in [
            *self.folder.glob("vectors-*.f32"),
            *self.folder.glob("ann-*.faiss"),
            *self.folder.glob(".*.tmp-*"),
        ]:
            if other.name not in keep:
                other.unlink()

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_text_encoder(self.meta["encoder"], self.device)
            if self._encoder.dim != self.dim or self._encoder.name != self.meta["encoder_name"]:
                raise DataError(
                    f"encoder {self.meta['encoder']!r} now loads as {self._encoder.name} "
                    f"({self._encoder.dim} dims), the index was built with "
                    f"{self.meta['encoder_name']} ({self.dim} dims)",
                    where=str(self.folder),
                    hint="rebuild the index with --rebuild",
                )
        return self._encoder

    # ---- documents

    def known(self) -> dict[str, tuple[int, str]]:
        """path -> (document id, sha256) of every stored document."""
        return {p: (i, h) for i, p, h in self.conn.execute("SELECT id, path, sha256 FROM documents")}

    def put(self, doc: DocumentIn, replaces: int | None) -> None:
        """Queue ``doc`` (replacing document id ``replaces``); written in batches."""
        self._pending.append((doc, replaces))
        if sum(len(d.chunks) for d, _ in self._pending) >= self.batch_chunks:
            self.flush()

    def flush(self) -> None:
        """Embed the queued chunks, append their vectors (fsync), then commit them in one
        transaction with the new row count: the order that makes a kill harmless."""
        import numpy as np

        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for d, _ in pending:  # an empty or blank document has no chunks and nothing to embed
            if d.vectors is None and not d.chunks:
                d.vectors = np.zeros((0, self.dim), np.float32)
        todo = [(d, i) for d, _ in pending if d.vectors is None for i in range(len(d.chunks))]
        if todo:
            t0 = time.perf_counter()
            texts = [embed_text(d.title, d.chunks[i][2]) for d, i in todo]
            vecs = np.asarray(self.encoder.encode(texts), dtype=np.float32)
            self.summary.embed_seconds += time.perf_counter() - t0
            self.summary.chunks_embedded += len(todo)
            at = 0
            for d, _ in pending:
                if d.vectors is None:
                    d.vectors, at = vecs[at : at + len(d.chunks)], at + len(d.chunks)
        else:
            self.summary.chunks_copied += sum(len(d.chunks) for d, _ in pending)
        blocks = [np.asarray(d.vectors, np.float32).reshape(len(d.chunks), self.dim) for d, _ in pending]
        rows0 = int(self.meta["rows"])
        self._append_rows(np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32))
        row = rows0
        with self._transaction():
            for doc, replaces in pending:
                if replaces is not None:
                    self.conn.execute("DELETE FROM documents WHERE id = ?", (replaces,))
                row = self._insert(doc, row)
            self._set_meta(rows=str(row))

    def _insert(self, doc: DocumentIn, row: int) -> int:
        cur = self.conn.execute(
            "INSERT INTO documents(path, sha256, size, kind, title, n_chunks, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (doc.path, doc.sha256, doc.size, doc.kind, doc.title, len(doc.chunks), time.time()),
        )
        doc_id = cur.lastrowid
        self.conn.executemany(
            "INSERT INTO chunks(doc_id, seq, start_char, end_char, title, text, row) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(doc_id, i, s, e, doc.title, t, row + i) for i, (s, e, t) in enumerate(doc.chunks)],
        )
        return row + len(doc.chunks)

    def _append_rows(self, vecs: np.ndarray) -> None:
        path = self.folder / self.meta["vectors_file"]
        try:
            with open(path, "r+b") as f:
                f.seek(int(self.meta["rows"]) * self.dim * 4)
                f.write(vecs.astype("<f4", copy=False).tobytes())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise IOFailure(f"cannot write vectors ({e.strerror})", where=str(path)) from None

    def rename(self, renames: Sequence[tuple[int, str]]) -> None:
        """Store documents under new keys (``(document id, key)``), in one transaction: an
        old key found to name a document indexed under its resolved path (``indexing``)."""
        if renames:
            with self._transaction():
                self.conn.executemany(
                    "UPDATE documents SET path = ? WHERE id = ?", [(k, i) for i, k in renames]
                )

    def remove(self, doc_ids: Iterable[int]) -> int:
        ids = list(doc_ids)
        with self._transaction():
            self.conn.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._matrix = None

    def set_meta_now(self, **values: str) -> None:
        with self._transaction():
            self._set_meta(**values)
        self._ann = None

    def _set_meta(self, **values: str) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items()))
        self.meta.update(values)

    # ---- compaction

    def compact_if_needed(self, force: bool = False) -> bool:
        """Rewrite the vector file without dead rows when they outnumber the live ones."""
        import numpy as np

        live = self.conn.execute("SELECT id, row FROM chunks ORDER BY row").fetchall()
        rows = int(self.meta["rows"])
        if not force and rows - len(live) <= max(len(live), 1024):
            return False
        old = self.meta["vectors_file"]
        gen = int(re.findall(r"\d+", old)[-1]) + 1
        new = f"vectors-{gen}.f32"
        matrix = self.matrix()
        order = np.array([r for _, r in live], dtype=np.int64)
        with open(self.folder / new, "wb") as f:
            for s in range(0, len(order), 65536):
                f.write(np.ascontiguousarray(matrix[order[s : s + 65536]]).astype("<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        with self._transaction():
            self.conn.execute("UPDATE chunks SET row = -1 - row")
            self.conn.executemany(
                "UPDATE chunks SET row = ? WHERE id = ?", [(i, cid) for i, (cid, _) in enumerate(live)]
            )
            self._set_meta(vectors_file=new, rows=str(len(live)))
        self._matrix = None
        (self.folder / old).unlink()
        return True


def _create(folder: Path, config: IndexConfig, encoder_name: str, dim: int) -> None:
    """A new empty index, built as ``INDEX.tmp-PID`` and renamed into place."""
    from nlpkit.io.files import fsync_dir

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=False)
    conn = _connect(tmp / DB_NAME)
    conn.executescript(SCHEMA)
    meta = {
        "format": FORMAT_VERSION, "nlpkit_version": __version__, "encoder": config.encoder,
        "encoder_name": encoder_name, "dim": str(dim), "chunk_size": str(config.chunk_size),
        "overlap": str(config.overlap), "vectors_file": "vectors-0.f32", "rows": "0",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    (tmp / "vectors-0.f32").touch()
    fsync_dir(tmp)
    os.rename(tmp, folder)
    fsync_dir(folder.parent)


_FLAGS = {"encoder": "-m", "chunk_size": "--chunk-size", "overlap": "--overlap"}


@contextlib.contextmanager
def open_writer(
    folder: str | os.PathLike[str],
    settings: dict[str, Any] | None = None,
    *,
    wait: bool = False,
    rebuild: bool = False,
    device: str = "cpu",
    like: Index | None = None,
    ann: str | None = None,
) -> Iterator[IndexWriter]:
    """Lock INDEX (exit 75 when another run holds it, unless ``wait``), create it if missing,
    repair what a killed run left, and yield a writer; on success flush, compact if needed.

    ``settings``: ``IndexConfig`` fields the user gave (None: keep). A new index takes them
    over the defaults; for an existing one a different value is a usage error unless
    ``rebuild``. ``like``: create a missing index with that index's settings (merge).
    ``ann``: ``hnsw`` keeps a FAISS graph up to date (``nlpkit.rag.ann``), ``exact`` drops it.
    """
    from nlpkit.io.files import lock_for

    given = {k: v for k, v in (settings or {}).items() if v is not None}
    path = Path(folder)
    if not path.parent.is_dir():
        raise InputMissing("no such folder", where=str(path.parent), hint="create it first")
    with lock_for(path, wait=wait):
        for kept in path.parent.glob(
            f"{glob.escape(path.name)}.tmp-*-old"
        ):  # killed inside a swap: put it back
            if not path.exists():
                os.rename(kept, path)
        for stale in path.parent.glob(f"{glob.escape(path.name)}.tmp-*"):  # killed creates and rebuilds
            shutil.rmtree(stale, ignore_errors=True)
        if path.exists() and not (path / DB_NAME).is_file():
            raise UsageError("exists and is not an nlpkit index", where=str(path), hint="choose another -o")
        work = path
        if path.exists() and rebuild:  # build beside it; the old index serves until the swap
            with Index(path) as old:
                given = {**old.config.__dict__, **given}
            work = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        if not work.exists():
            if like is not None:
                _create(work, like.config, like.meta["encoder_name"], like.dim)
            else:
                cfg = IndexConfig(**given)
                enc = load_text_encoder(cfg.encoder, device)
                _create(work, cfg, enc.name, enc.dim)
        writer = IndexWriter(work, device=device)
        try:
            for key, value in given.items():
                if getattr(writer.config, key) != value:
                    raise UsageError(
                        f"{_FLAGS[key]} {value} differs from the index's {getattr(writer.config, key)}",
                        where=str(path),
                        hint="omit it to keep the index's setting, or pass --rebuild to re-index everything",
                    )
            yield writer
            writer.flush()
            writer.compact_if_needed()
            if ann is not None or writer.meta.get("ann", "exact") != "exact":
                from nlpkit.rag import ann as ann_mod

                ann_mod.refresh(writer, ann)
            writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            writer.summary.stats = writer.stats()
        finally:
            writer.close()
        if work != path:
            _swap(work, path)


def _swap(new: Path, path: Path) -> None:
    """Put a rebuilt index in place of the old one with two renames. A reader in between sees
    no index for an instant; a kill in between leaves the old one as ``INDEX.tmp-PID-old``,
    which the next writer puts back (the rebuild is lost, never the index)."""
    from nlpkit.io.files import fsync_dir

    old = path.with_name(f"{path.name}.tmp-{os.getpid()}-old")
    os.rename(path, old)
    os.rename(new, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
