"""Word vectors: load, import/export, nearest neighbours and analogies.

nlpkit's own format is one safetensors file with three tensors:

* ``vectors``: float32 ``(n, d)``, row order = vocabulary order (most frequent first);
* ``norms``: float32 ``(n,)``, the L2 norm of each row, so cosine needs no pass over the matrix;
* ``words``: uint8, the UTF-8 words joined by ``\\n``;

and metadata ``nlpkit.kind=vectors``, ``nlpkit.config={"count": n, "dim": d}`` plus provenance.
It is read memory-mapped: ``nlpkit analogy`` touches only what it needs.

    >>> wv = load_vectors("glove-6b-50d")
    >>> analogy(wv, ["king", "woman"], ["man"], k=1)
    [('queen', 0.8524)]

Benchmark evaluation (analogy accuracy, word-pair correlation) is in vector_eval.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from nlpkit.errors import DataError, InputMissing, UsageError
from nlpkit.io.tensors import provenance
from nlpkit.io.vector_file import read_vectors, write_vectors

EPS_COSMUL = 1e-6  # Levy & Goldberg's epsilon, as gensim's most_similar_cosmul uses


class WordVectors:
    """A vocabulary and its vectors; word ``i`` owns ``vectors[i]`` (shape ``(n, d)``, float32).

    Loaded from nlpkit's format, the vocabulary stays one UTF-8 blob until someone needs the
    whole list: a single analogy finds its few words with a byte search instead of building a
    400k-entry dict (that alone would cost more than the rest of the query).
    """

    def __init__(
        self,
        words: list[str] | None,
        vectors: np.ndarray,
        norms: np.ndarray | None = None,
        metadata: dict[str, str] | None = None,
        *,
        blob: bytes | None = None,
    ):
        self._words, self.vectors, self.norms = words, vectors, norms
        self.metadata = dict(metadata or {})
        self._blob = b"\n" + blob + b"\n" if blob is not None else None  # padded: every word is \nw\n
        self._index: dict[str, int] | None = None
        self._starts: np.ndarray | None = None
        self._searches = 0
        count = len(words) if words is not None else (blob.count(b"\n") + 1 if blob else 0)
        if vectors.ndim != 2 or count != vectors.shape[0]:
            raise DataError(f"{count} words but vectors of shape {vectors.shape}")

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def words(self) -> list[str]:
        if self._words is None:
            assert self._blob is not None
            self._words = self._blob[1:-1].decode("utf-8").split("\n") if len(self) else []
        return self._words

    def word(self, i: int) -> str:
        """Word ``i``, without decoding the whole vocabulary."""
        if self._words is not None or self._blob is None:
            return self.words[i]
        if self._starts is None:
            self._starts = np.flatnonzero(np.frombuffer(self._blob, np.uint8) == 10)
        return self._blob[self._starts[i] + 1 : self._starts[i + 1]].decode("utf-8")

    @property
    def index(self) -> dict[str, int]:
        """word -> row; the first (most frequent) row wins for a repeated word."""
        if self._index is None:
            index: dict[str, int] = {}
            for i, w in enumerate(self.words):
                index.setdefault(w, i)
            self._index = index
        return self._index

    def _find(self, word: str) -> int | None:
        if self._index is None and self._blob is not None and self._searches < 64:
            self._searches += 1  # a few look-ups: search the blob; many: build the dict
            pos = self._blob.find(b"\n" + word.encode("utf-8") + b"\n")
            return None if pos < 0 else self._blob.count(b"\n", 0, pos + 1) - 1
        return self.index.get(word)

    def row_norms(self) -> np.ndarray:
        if self.norms is None:
            self.norms = np.sqrt(np.einsum("ij,ij->i", self.vectors, self.vectors)).astype(np.float32)
        return self.norms

    def lookup(self, word: str, fold_case: bool = True) -> int | None:
        """The row of ``word``; with ``fold_case``, fall back to its lower-case form."""
        if not word or "\n" in word:
            return None
        i = self._find(word)
        if i is None and fold_case and word.lower() != word:
            i = self._find(word.lower())
        return i

    def unit(self, i: int) -> np.ndarray:
        norm = self.row_norms()[i]
        return self.vectors[i] / (norm if norm > 0 else 1.0)

    def save(self, path: str, metadata: dict[str, str] | None = None) -> None:
        """Write nlpkit's safetensors vectors format (atomically; ``-`` is stdout)."""
        meta = {**self.metadata, **provenance(), **(metadata or {})}
        write_vectors(path, self.words, self.vectors, meta, self.row_norms())


# --------------------------------------------------------------------------- loading


def load_vectors(spec: str, fmt: str = "auto") -> WordVectors:
    """Load vectors from a named asset, nlpkit safetensors, GloVe text or word2vec text/binary.

    ``fmt``: auto (by extension and first line), nlpkit, glove, word2vec, word2vec-bin.
    """
    from nlpkit import store

    if store.is_asset_name(spec):
        return _load_nlpkit(str(store.asset_dir(spec) / "vectors.safetensors"))
    if not os.path.exists(spec):
        raise InputMissing("no such vectors file or named asset", where=spec, hint="see `nlpkit models list`")
    if os.path.isdir(spec):
        raise UsageError(
            "a folder, not a vectors file", where=spec, hint="give a .safetensors, GloVe or word2vec file"
        )
    fmt = detect_format(spec) if fmt == "auto" else fmt
    loaders = {"nlpkit": _load_nlpkit, "glove": read_glove, "word2vec": read_word2vec_text}
    if fmt == "word2vec-bin":
        return read_word2vec_binary(spec)
    if fmt not in loaders:
        raise UsageError(
            f"unknown vectors format {fmt!r}", hint="use nlpkit, glove, word2vec or word2vec-bin"
        )
    return loaders[fmt](spec)


def detect_format(path: str) -> str:
    if path.endswith(".safetensors"):
        return "nlpkit"
    if path.endswith(".bin"):
        return "word2vec-bin"
    with open(path, "rb") as f:
        first = f.readline(4096).split()
    if len(first) == 2 and all(t.isdigit() for t in first):
        return "word2vec"
    return "glove"


def _load_nlpkit(path: str) -> WordVectors:
    vectors, norms, blob, meta = read_vectors(path)
    return WordVectors(None, vectors, norms, metadata=meta, blob=blob)


def _parse_row(parts: list[bytes], dim: int, where: str) -> tuple[str, np.ndarray]:
    if len(parts) != dim + 1:
        raise DataError(f"expected a word and {dim} numbers, got {len(parts) - 1} numbers", where=where)
    try:
        word = parts[0].decode("utf-8")
    except UnicodeDecodeError:
        raise DataError("word is not valid UTF-8", where=where) from None
    try:
        row = np.array([float(x) for x in parts[1:]], dtype=np.float32)
    except ValueError:
        raise DataError("a value is not a number", where=where) from None
    if not np.isfinite(row).all():
        raise DataError("NaN or infinite value", where=where)
    return word, row


def _read_text_rows(path: str, f: Any, dim: int | None, lineno: int) -> Iterator[tuple[str, np.ndarray]]:
    for raw in f:
        lineno += 1
        parts = raw.split()  # ASCII whitespace: words never contain it in these formats
        if not parts:
            continue
        if dim is None:
            dim = len(parts) - 1
            if dim < 1:
                raise DataError("expected a word followed by numbers", where=f"{path}:{lineno}")
        yield _parse_row(parts, dim, f"{path}:{lineno}")


def read_glove(path: str) -> WordVectors:
    """GloVe text: ``word v1 ... vd`` per line, no header; every row is validated."""
    with open(path, "rb") as f:
        rows = list(_read_text_rows(path, f, None, 0))
    if not rows:
        raise DataError("empty vectors file", where=path)
    return WordVectors([w for w, _ in rows], np.stack([r for _, r in rows]))


def _read_header(path: str, f: Any) -> tuple[int, int]:
    parts = f.readline(256).split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DataError("expected a word2vec header 'COUNT DIM'", where=f"{path}:1")
    count, dim = int(parts[0]), int(parts[1])
    if dim < 1:
        raise DataError("dimension must be at least 1", where=f"{path}:1")
    return count, dim


def read_word2vec_text(path: str) -> WordVectors:
    """word2vec text: a ``COUNT DIM`` header, then GloVe-style rows; the count must hold."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        count, dim = _read_header(path, f)
        if count * (2 * dim + 2) > size:  # each row needs at least "w" and " 0" per value
            raise DataError(
                f"header promises {count} rows of {dim} values but the file has {size} bytes", where=path
            )
        rows = list(_read_text_rows(path, f, dim, 1))
    if len(rows) != count:
        raise DataError(f"header promises {count} rows, the file has {len(rows)}", where=path)
    vectors = np.stack([r for _, r in rows]) if rows else np.zeros((0, dim), np.float32)
    return WordVectors([w for w, _ in rows], vectors)


def read_word2vec_binary(path: str) -> WordVectors:
    """word2vec binary: ``COUNT DIM\\n`` then ``word<space><DIM float32 LE>[\\n]`` per row."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        count, dim = _read_header(path, f)
        if count * (dim * 4 + 2) > size:  # refuse before allocating what the file cannot hold
            raise DataError(
                f"header promises {count} rows of {dim} floats but the file has {size} bytes", where=path
            )
        data = f.read()
    words, vectors, pos = [], np.empty((count, dim), np.float32), 0
    for i in range(count):
        end = data.find(b" ", pos)
        if end < 0 or end - pos > 1000:
            raise DataError(f"row {i + 1}: no word found", where=path)
        try:
            words.append(data[pos:end].decode("utf-8").lstrip("\n"))
        except UnicodeDecodeError:
            raise DataError(f"row {i + 1}: word is not valid UTF-8", where=path) from None
        pos = end + 1
        if pos + 4 * dim > len(data):
            raise DataError(f"row {i + 1}: file ends inside the vector (truncated?)", where=path)
        vectors[i] = np.frombuffer(data, dtype="<f4", count=dim, offset=pos)
        pos += 4 * dim
    if not np.isfinite(vectors).all():
        raise DataError("NaN or infinite value", where=path)
    return WordVectors(words, vectors)


def write_text(wv: WordVectors, path: str, header: bool) -> None:
    """GloVe text (``header=False``) or word2vec text (``header=True``), atomically."""
    from nlpkit.io.files import atomic_open

    with atomic_open(path) as f:
        if header:
            f.write(f"{len(wv)} {wv.dim}\n".encode())
        for word, row in zip(wv.words, wv.vectors, strict=True):
            f.write(word.encode() + b" " + " ".join(f"{x:.6g}" for x in row.tolist()).encode() + b"\n")


def write_word2vec_binary(wv: WordVectors, path: str) -> None:
    from nlpkit.io.files import atomic_open

    with atomic_open(path) as f:
        f.write(f"{len(wv)} {wv.dim}\n".encode())
        for word, row in zip(wv.words, wv.vectors, strict=True):
            f.write(word.encode() + b" " + np.asarray(row, "<f4").tobytes() + b"\n")


def save_as(wv: WordVectors, path: str, fmt: str = "auto") -> None:
    """Export to ``fmt`` (auto: by extension: .safetensors nlpkit, .bin word2vec-bin, else GloVe)."""
    if fmt == "auto":
        fmt = (
            "nlpkit"
            if path.endswith(".safetensors")
            else "word2vec-bin"
            if path.endswith(".bin")
            else "glove"
        )
    if fmt == "nlpkit":
        wv.save(path)
    elif fmt in ("glove", "word2vec"):
        write_text(wv, path, header=fmt == "word2vec")
    elif fmt == "word2vec-bin":
        write_word2vec_binary(wv, path)
    else:
        raise UsageError(
            f"unknown vectors format {fmt!r}", hint="use nlpkit, glove, word2vec or word2vec-bin"
        )


# --------------------------------------------------------------------------- queries


def parse_expression(terms: Sequence[str]) -> tuple[list[str], list[str]]:
    """``king - man + woman`` -> (["king", "woman"], ["man"]); three bare words ``a b c``
    mean "a is to b as c is to ?" -> ([b, c], [a])."""
    tokens = [t for term in terms for t in re.findall(r"[+-]|[^\s+-][^\s]*", term)]
    if len(tokens) == 3 and not set(tokens) & {"+", "-"}:
        return [tokens[1], tokens[2]], [tokens[0]]
    positive: list[str] = []
    negative: list[str] = []
    sign = "+"
    expect_word = True
    for tok in tokens:
        if tok in "+-":
            if expect_word and (positive or negative):
                raise UsageError(f"two operators in a row near {tok!r}", hint="write: king - man + woman")
            sign, expect_word = tok, True
        else:
            if not expect_word:
                raise UsageError(f"missing + or - before {tok!r}", hint="write: king - man + woman")
            (positive if sign == "+" else negative).append(tok)
            expect_word = False
    if not positive or expect_word:
        raise UsageError("an analogy needs words joined by + and -", hint="write: king - man + woman")
    return positive, negative


def _rows(wv: WordVectors, words: Iterable[str], fold_case: bool) -> list[int]:
    rows = []
    for w in words:
        i = wv.lookup(w, fold_case)
        if i is None:
            raise DataError(f"word {w!r} is not in the vocabulary")
        rows.append(i)
    return rows


def scores(
    wv: WordVectors, positive: Sequence[int], negative: Sequence[int], method: str = "add", restrict: int = 0
) -> np.ndarray:
    """Scores of every row (of the first ``restrict`` rows) for an analogy given as rows.

    add: cosine to the unit mean of the unit positives minus the unit negatives (3CosAdd);
    mul: prod((1+cos(w,p))/2) / (prod((1+cos(w,n))/2) + 1e-6) (3CosMul).
    """
    n = restrict if 0 < restrict < len(wv) else len(wv)
    matrix, norms = wv.vectors[:n], np.maximum(wv.row_norms()[:n], 1e-12)
    if method == "add":
        signed = [wv.unit(i) for i in positive] + [-wv.unit(i) for i in negative]
        mean = np.sum(signed, axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return (matrix @ mean.astype(np.float32)) / norms
    if method == "mul":
        cos = matrix @ np.stack([wv.unit(i) for i in [*positive, *negative]]).T.astype(np.float32)
        cos = (1 + cos / norms[:, None]) / 2
        p = len(positive)
        return np.prod(cos[:, :p], axis=1) / (np.prod(cos[:, p:], axis=1) + EPS_COSMUL)
    raise UsageError(f"unknown method {method!r}", hint="use add or mul")


def top_k(values: np.ndarray, k: int, exclude: Iterable[int] = ()) -> list[int]:
    """Indices of the ``k`` largest values, best first, skipping ``exclude``."""
    exclude = set(exclude)
    want = min(k + len(exclude), len(values))
    if want <= 0:
        return []
    best = np.argpartition(-values, want - 1)[:want] if want < len(values) else np.arange(len(values))
    best = best[np.argsort(-values[best], kind="stable")]
    return [int(i) for i in best if int(i) not in exclude][:k]


def analogy(
    wv: WordVectors,
    positive: Sequence[str],
    negative: Sequence[str] = (),
    k: int = 10,
    method: str = "add",
    restrict: int = 0,
    fold_case: bool = True,
) -> list[tuple[str, float]]:
    """``analogy(wv, ["king", "woman"], ["man"])`` -> ``[("queen", 0.8524), ...]``; query words excluded."""
    pos, neg = _rows(wv, positive, fold_case), _rows(wv, negative, fold_case)
    s = scores(wv, pos, neg, method, restrict)
    return [(wv.word(i), float(s[i])) for i in top_k(s, k, exclude=pos + neg)]


def similar(
    wv: WordVectors, word: str, k: int = 10, restrict: int = 0, fold_case: bool = True
) -> list[tuple[str, float]]:
    """Nearest neighbours of ``word`` by cosine, the word itself excluded."""
    return analogy(wv, [word], [], k=k, restrict=restrict, fold_case=fold_case)


# --------------------------------------------------------------------------- record streams


def query_terms(record: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """An analogy question from a record: ``positive``/``negative`` lists, or ``text`` such as
    ``king - man + woman`` or ``man king woman`` (a is to b as c is to ?)."""
    if "positive" in record:
        pos, neg = record["positive"], record.get("negative", [])
        if not (
            isinstance(pos, list) and isinstance(neg, list) and all(isinstance(w, str) for w in pos + neg)
        ):
            raise DataError("positive and negative must be lists of words", where=where)
        return pos, neg
    if not isinstance(record.get("text"), str):
        raise DataError("expected a 'text' question or 'positive'/'negative' lists", where=where)
    try:
        return parse_expression([record["text"]])
    except UsageError as e:
        raise DataError(e.message, where=where, hint=e.hint) from None


def answer_records(
    wv: WordVectors,
    records: Iterable[tuple[str, dict[str, Any]]],
    k: int = 10,
    method: str = "add",
    restrict: int = 0,
    fold_case: bool = True,
    oov: str = "error",
    neighbours: bool = False,
) -> Iterator[dict[str, Any]]:
    """For each ``(where, record)``: the record plus ``results`` ([{word, score}], best first).

    ``neighbours``: each record's ``text`` is one word whose nearest neighbours are wanted.
    ``oov``: error (a DataError naming FILE:LINE) or skip (``results: []`` and ``oov: [...]``).
    """
    for where, record in records:
        pos, neg = ([record["text"]], []) if neighbours else query_terms(record, where)
        missing = [w for w in pos + neg if wv.lookup(w, fold_case) is None]
        if missing:
            if oov == "error":
                raise DataError(
                    f"word {missing[0]!r} is not in the vocabulary",
                    where=where,
                    hint="pass --oov skip to pass such records through",
                )
            yield {**record, "results": [], "oov": missing}
            continue
        found = analogy(wv, pos, neg, k=k, method=method, restrict=restrict, fold_case=fold_case)
        yield {**record, "results": [{"word": w, "score": round(s, 6)} for w, s in found]}


def embed_records(
    wv: WordVectors,
    records: Iterable[tuple[str, dict[str, Any]]],
    field: str = "text",
    oov: str = "error",
    fold_case: bool = True,
) -> Iterator[tuple[dict[str, Any], list[str], np.ndarray]]:
    """Vectors for each record's ``field``: a word (adds ``vector``) or a list of words such
    as tokenizer output (adds ``vectors``). ``oov``: error, skip (leave the word out) or zero.

    Yields ``(record_out, words, matrix)``; the words/matrix feed ``-o FILE.safetensors``.
    """
    if oov not in ("error", "skip", "zero"):
        raise UsageError(f"unknown --oov {oov!r}", hint="use error, skip or zero")
    for where, record in records:
        value = record.get(field)
        single = isinstance(value, str)
        words = [value] if single else value
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise DataError(f"field {field!r} must be a word or a list of words", where=where)
        kept, rows = [], []
        for w in words:
            i = wv.lookup(w, fold_case)
            if i is None:
                if oov == "error":
                    raise DataError(
                        f"word {w!r} is not in the vocabulary",
                        where=where,
                        hint="pass --oov skip or --oov zero",
                    )
                if oov == "skip":
                    continue
            kept.append(w)
            rows.append(wv.vectors[i] if i is not None else np.zeros(wv.dim, np.float32))
        matrix = np.stack(rows) if rows else np.zeros((0, wv.dim), np.float32)
        if single:
            if not kept:
                continue
            yield {**record, "vector": matrix[0]}, kept, matrix
        else:
            yield {**record, "vectors": matrix}, kept, matrix
