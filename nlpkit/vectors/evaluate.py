"""Word-vector benchmarks: analogy accuracy and word-pair correlation, scored as gensim does.

* ``evaluate_analogies``: a questions-words file (``: section`` lines, then ``a b c d``: "a is
  to b as c is to d"), accuracy per section and in total, as gensim's
  ``evaluate_word_analogies`` counts it (restricted vocabulary, case folding, input words and
  their case variants excluded, OOV questions counted apart). Questions are scored in batches
  against cache-sized blocks of the vocabulary, one matrix product each, on one thread per core.
* ``evaluate_word_pairs``: a WordSim353 / SimLex-999 file (``word1<TAB>word2<TAB>score``),
  Spearman and Pearson correlation of cosine with the human scores, as gensim's
  ``evaluate_word_pairs``.

    >>> result = evaluate_analogies(load_vectors("glove-6b-50d"), "questions-words.txt")
    >>> round(100 * result["total"]["accuracy"], 2)  # 9036 of 19486, as gensim
    46.37

The vectors themselves and single queries (``analogy``, ``similar``) are in vectors.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nlpkit.errors import DataError
from nlpkit.vectors.wordvectors import EPS_COSMUL, WordVectors, scores, top_k

# --------------------------------------------------------------------------- analogies


def _restricted_vocab(wv: WordVectors, restrict: int, fold_case: bool) -> tuple[int, dict[str, int]]:
    """gensim's ``ok_vocab``: key (upper-cased with fold_case) -> row, most frequent row wins."""
    n = restrict if 0 < restrict < len(wv) else len(wv)
    ok: dict[str, int] = {}
    for i, w in enumerate(wv.words[:n]):
        ok.setdefault(w.upper() if fold_case else w, i)
    return n, ok


def read_analogy_questions(
    path: str, ok: dict[str, int], fold_case: bool
) -> tuple[list[dict[str, Any]], int, int]:
    """Parse the questions-words format the way gensim does.

    Returns ``(sections, oov, questions)``; each section has ``section`` and ``rows``, a list of
    ``(a, b, c, expected)`` row tuples of the in-vocabulary questions. Malformed lines are
    skipped (as gensim does); a question before any ``: section`` line is a ``DataError``.
    """
    from nlpkit.io.records import iter_lines

    sections: list[dict[str, Any]] = []
    oov = questions = 0
    for where, line in iter_lines(path):
        if line.startswith(": "):
            sections.append({"section": line.lstrip(": ").strip(), "rows": []})
            continue
        if not sections:
            raise DataError("question before the first ': section' line", where=where)
        words = [w.upper() if fold_case else w for w in line.split()]
        if len(words) != 4:
            continue
        questions += 1
        rows = [ok.get(w) for w in words]
        if None in rows:
            oov += 1
            continue
        sections[-1]["rows"].append(tuple(rows))
    if questions == 0:
        raise DataError(
            "no analogy questions found", where=path, hint="expected lines 'a b c d' under ': section'"
        )
    return sections, oov, questions


def _block_argmax(
    blocks: list[np.ndarray], terms: list[np.ndarray], rows: np.ndarray, method: str, block: int
) -> np.ndarray:
    """Row of the best score for each question, its own input rows excluded.

    Scores are computed a vocabulary block at a time so the score matrix stays in cache
    (the whole (questions x vocabulary) product would be tens of GB of memory traffic).
    ``blocks`` are the unit vocabulary's C-contiguous transposed (d, block) slices (BLAS
    takes the fast path only on contiguous operands); ``terms`` are (B, d) unit vectors
    [b, c, a] for both methods.
    """
    B = len(rows)
    best, arg = np.full(B, -np.inf, np.float32), np.zeros(B, np.int64)
    query = terms[0] + terms[1] - terms[2] if method == "add" else np.concatenate(terms)
    out = np.empty((len(query), block), np.float32)
    for j, vt in zip(range(0, block * len(blocks), block), blocks, strict=True):
        s = np.matmul(query, vt, out=out[:, : vt.shape[1]])
        if method == "mul":  # (1+cos)/2 per term: b*c / (a + eps)
            s = (1 + s) / 2
            s = s[:B] * s[B : 2 * B] / (s[2 * B :] + EPS_COSMUL)
        for r in rows.T:  # exclude each question's own input rows
            inside = (r >= j) & (r < j + vt.shape[1])
            s[np.nonzero(inside)[0], r[inside] - j] = -np.inf
        a = s.argmax(1)
        m = s[np.arange(B), a]
        better = m > best
        best[better], arg[better] = m[better], a[better] + j
    return arg


def _map_threads(fn: Any, items: Sequence[Any]) -> Iterator[Any]:
    """``map(fn, items)`` in order, on one thread per core, each running single-threaded BLAS.

    OpenBLAS's own threads synchronise at every product and collapse when another process
    holds a core (measured: 4 s idle, 90 s at load 3 on 2 cores); independent threads that
    each run one-threaded products just share the cores. numpy releases the GIL in them.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    workers = max(1, min(len(os.sched_getaffinity(0)), 8))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)


def evaluate_analogies(
    wv: WordVectors, path: str, restrict: int = 300000, fold_case: bool = True, method: str = "add"
) -> dict[str, Any]:
    """Accuracy on a questions-words file, computed as gensim's ``evaluate_word_analogies``.

    A question counts only when all four words are in the first ``restrict`` rows; the
    prediction is the best-scoring row among those, excluding the three input rows and
    (like gensim) any word equal to an input word after case folding.
    """
    n, ok = _restricted_vocab(wv, restrict, fold_case)
    sections, oov, questions = read_analogy_questions(path, ok, fold_case)
    norms = np.maximum(wv.row_norms()[:n], 1e-12)
    unit = np.ascontiguousarray(wv.vectors[:n] / norms[:, None], dtype=np.float32)
    block = 4096
    blocks = [np.ascontiguousarray(unit[j : j + block].T) for j in range(0, n, block)]
    keys = [w.upper() if fold_case else w for w in wv.words[:n]]
    rows = np.array([q for sec in sections for q in sec["rows"]], dtype=np.int64).reshape(-1, 4)
    owner = np.repeat(np.arange(len(sections)), [len(sec["rows"]) for sec in sections])
    correct, incorrect = np.zeros(len(sections), np.int64), np.zeros(len(sections), np.int64)
    from nlpkit.io.talk import with_progress

    def best_rows(i: int) -> np.ndarray:
        batch = rows[i : i + 256]
        terms = [unit[batch[:, 1]], unit[batch[:, 2]], unit[batch[:, 0]]]
        return _block_argmax(blocks, terms, batch[:, :3], method, block)

    starts = range(0, len(rows), 256)
    for i, best in with_progress(
        zip(starts, _map_threads(best_rows, starts), strict=True), "evaluating", total=len(starts)
    ):
        for q, b, sec in zip(rows[i : i + 256], best, owner[i : i + 256], strict=True):
            ignore = {keys[q[0]], keys[q[1]], keys[q[2]]}
            predicted = keys[b] if keys[b] not in ignore else _gensim_fallback(unit, keys, q, ignore, method)
            if predicted == keys[q[3]]:
                correct[sec] += 1
            else:  # gensim too: a question whose top 5 are all inputs (or their case variants) is wrong
                incorrect[sec] += 1
    result = [
        _section(sec["section"], int(c), int(w))
        for sec, c, w in zip(sections, correct, incorrect, strict=True)
    ]
    total_ok, total_bad = int(correct.sum()), int(incorrect.sum())
    return {
        "sections": result,
        "total": _section("Total accuracy", total_ok, total_bad),
        "questions": questions,
        "oov": oov,
        "oov_ratio": oov / questions,
        "restrict_vocab": n,
        "method": method,
    }


def _gensim_fallback(
    unit: np.ndarray, keys: list[str], q: np.ndarray, ignore: set[str], method: str
) -> str | None:
    """gensim's rule when the best row is a case variant of an input: walk its top 5; when all
    five are inputs, gensim's prediction is the fifth (so the question counts as wrong)."""
    s = scores(WordVectors(keys, unit, np.ones(len(unit), np.float32)), [q[1], q[2]], [q[0]], method)
    predicted = None
    for i in top_k(s, 5, exclude=[int(x) for x in q[:3]]):
        predicted = keys[i]
        if predicted not in ignore:
            return predicted
    return predicted


def _section(name: str, correct: int, incorrect: int) -> dict[str, Any]:
    done = correct + incorrect
    return {
        "section": name,
        "correct": correct,
        "incorrect": incorrect,
        "accuracy": correct / done if done else 0.0,
    }


# --------------------------------------------------------------------------- word pairs


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def evaluate_word_pairs(
    wv: WordVectors, path: str, restrict: int = 300000, fold_case: bool = True, delimiter: str = "\t"
) -> dict[str, Any]:
    """Spearman and Pearson correlation with human scores (wordsim353 / simlex999 files),
    computed as gensim's ``evaluate_word_pairs``: '#' lines skipped, OOV pairs left out."""
    from nlpkit.io.records import iter_lines

    _, ok = _restricted_vocab(wv, restrict, fold_case)
    gold, model = [], []
    oov = 0
    for where, line in iter_lines(path):
        if line.startswith("#"):
            continue
        parts = line.split(delimiter)
        if len(parts) != 3:
            raise DataError(f"expected 'word1{delimiter!r}word2{delimiter!r}score'", where=where)
        a, b = (p.upper() if fold_case else p for p in parts[:2])
        try:
            human = float(parts[2])
        except ValueError:
            raise DataError(f"score {parts[2]!r} is not a number", where=where) from None
        if a not in ok or b not in ok:
            oov += 1
            continue
        gold.append(human)
        model.append(float(wv.unit(ok[a]) @ wv.unit(ok[b])))
    if len(gold) < 2:
        raise DataError("fewer than two word pairs in the vocabulary", where=path)
    g, m = np.array(gold), np.array(model)
    return {
        "spearman": _pearson(_rank(g), _rank(m)),
        "pearson": _pearson(g, m),
        "pairs": len(gold),
        "oov": oov,
        "oov_ratio": oov / (len(gold) + oov),
    }
