"""Word2vec training: CBOW and skip-gram with negative sampling, on PyTorch (CPU or CUDA).

    corpus = build_corpus(texts, min_count=5)
    vectors = train(corpus, Word2VecConfig(arch="skipgram"))   # (len(corpus.words), 100) float32

The recipe is word2vec's (Mikolov et al. 2013), with gensim's hyperparameter defaults:

* tokens: ``tokenize`` lower-cases and keeps runs of letters and digits with inner apostrophes
  (``o'er``, ``king's``); each record (a line of text, a JSONL record's "text") is a sentence,
  and context windows never cross a sentence;
* vocabulary: words seen at least ``min_count`` times, most frequent first, ties by word (never
  set or hash order), so a seed gives the same bytes on every run;
* every epoch drops frequent words with gensim's subsampling probability, draws a window of
  1..``window`` for each centre word, and draws noise words from counts^0.75; the learning
  rate falls linearly from ``alpha`` to ``min_alpha`` over the whole run.

Why it is fast without a Python loop per word: a minibatch is a run of B consecutive centre
words of the subsampled corpus, so every (centre, context) pair lies in a band of +-window
around the diagonal. The scores of 16 centres against their 16+2W neighbours are one small
matrix product (a batched ``bmm`` over blocks); the gradients go back as weighted bag sums
(``embedding_bag`` with per-sample weights) over the band and its transpose; the updates are
a few ``index_add_`` calls. Noise words come in pools: each group of 8 consecutive centres
draws P of them (16 for skip-gram, 12 for CBOW, times ``negative`` / 5 rounded up) and every
centre of the group scores the whole pool, each score weighted by ``negative`` / P per pair,
so the expected gradient is word2vec's and the noise scores are small matrix products too
(pooled negatives, as in Ji et al. 2016, "Parallelizing Word2Vec in Shared and Distributed
Memory"). Several CPU threads are worker processes that split the vectors' columns and
exchange only partial scores (``Trainer``, in word2vec_trainer.py).

Where this differs from gensim's word2vec (each difference is the price of the batching):
a minibatch's gradients (2048 centres by default) are computed from the same parameters and
summed (gensim applies each pair's update at once, its worker threads racing, Hogwild);
much larger minibatches train worse (skip-gram diverges at 4096 on Shakespeare: a clear
error, exit 65), so keep ``--batch-words`` near its default. Skip-gram takes the centre word
as input and scores its context words (word2vec.c scores the centre from each context word:
the same pairs, roles swapped). The noise words are pooled as said above, and the sigmoid is
exact, not a table clipped at +-6. On Shakespeare the vectors score as gensim's do
(bench/bench_word2vec.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from nlpkit.errors import DataError, UsageError
from nlpkit.train import import_torch, resolve_device
from nlpkit.word2vec_trainer import Trainer

if TYPE_CHECKING:
    from nlpkit.vectors import WordVectors

TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
ARCHS = ("cbow", "skipgram")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: ``tokenize("O'er the King’s 2 ships!")`` ->
    ``["o'er", "the", "king's", "2", "ships"]`` (runs of letters and digits; inner
    apostrophes kept, typographic ones made plain)."""
    return TOKEN_RE.findall(text.lower().replace("\u2019", "'"))


# --------------------------------------------------------------------------- configuration


@dataclass
class Word2VecConfig:
    """Hyperparameters. Names and defaults follow gensim's ``Word2Vec`` (skip-gram is the default
    architecture here: it is the better one on small corpora)."""

    arch: str = "skipgram"  # cbow: predict the centre from the mean of its context; skipgram: the reverse
    vector_size: int = 100
    window: int = 5  # the largest distance; each centre draws its own 1..window (dynamic window)
    negative: int = 5  # noise words per centre word (and per context word, in skip-gram)
    min_count: int = 5  # rarer words are left out of the vocabulary (and of the windows)
    max_vocab: int = 0  # keep only the N most frequent words (0: no limit)
    sample: float = 1e-3  # subsampling threshold: words above this frequency are dropped at random (0: off)
    alpha: float = 0.025  # learning rate at the start, falling linearly to min_alpha
    min_alpha: float = 0.0001
    epochs: int = 5
    threads: int = 2  # CPU workers (processes, one torch thread each); ignored on CUDA
    batch_words: int = 2048  # centre words per minibatch, shared out among the threads (multiples of 16)
    seed: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.arch in ARCHS, f"--arch must be cbow or skipgram, not {self.arch!r}"),
            (self.vector_size >= 1, "--vector-size must be at least 1"),
            (1 <= self.window <= 100, "--window must be between 1 and 100"),
            (1 <= self.negative <= 100, "--negative must be between 1 and 100"),
            (self.min_count >= 1, "--min-count must be at least 1"),
            (self.max_vocab >= 0, "--max-vocab must be 0 (no limit) or more"),
            (0 <= self.sample < 1, "--sample must be in [0, 1)"),
            (0 < self.alpha < 10 and 0 <= self.min_alpha <= self.alpha, "need 0 <= --min-alpha <= --alpha"),
            (1 <= self.epochs <= 10_000, "--epochs must be between 1 and 10000"),
            (1 <= self.threads <= 1024, "--threads must be at least 1"),
            (1 <= self.batch_words <= 1 << 24, "--batch-words must be between 1 and 16777216"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """A tokenized corpus held as vocabulary ids, sentence by sentence."""

    words: list[str]  # the vocabulary, most frequent first, ties by word
    counts: np.ndarray  # (V,) int64: occurrences of each word
    ids: np.ndarray  # (N,) int32: the in-vocabulary tokens, in order
    sentence: np.ndarray  # (N,) int32: the sentence (record) each token belongs to
    raw_words: int  # tokens read, out-of-vocabulary ones included (what words/s counts)
    sha256: str = ""  # of the text read, for provenance
    records: int = 0


def build_corpus(texts: Iterable[str], min_count: int = 5, max_vocab: int = 0) -> Corpus:
    """Tokenize ``texts`` (one sentence each) in one streaming pass and build the vocabulary.

    ``build_corpus(["a b a", "b a c"], min_count=2).words`` -> ``["a", "b"]``. Tokens are kept as
    int32 ids of first appearance, then renumbered by the sorted vocabulary.
    """
    index: dict[str, int] = {}
    tokens, lengths = array("i"), array("q")
    digest, records = hashlib.sha256(), 0
    for text in texts:
        records += 1
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
        toks = tokenize(text)
        if toks:
            tokens.extend([index.setdefault(t, len(index)) for t in toks])
            lengths.append(len(toks))
    first = np.frombuffer(tokens, dtype=np.int32) if tokens else np.zeros(0, np.int32)
    seen = list(index)
    counts = np.bincount(first, minlength=len(seen)).astype(np.int64)
    order = sorted(range(len(seen)), key=lambda i: (-counts[i], seen[i]))
    order = [i for i in order if counts[i] >= min_count][: max_vocab or None]
    if not order:
        raise DataError(
            f"no word occurs --min-count={min_count} times in {len(first)} tokens",
            hint="lower --min-count or give more text",
        )
    renumber = np.full(len(seen), -1, np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    ids = renumber[first]
    keep = ids >= 0
    sentence = np.repeat(np.arange(len(lengths), dtype=np.int32), np.frombuffer(lengths, np.int64))
    return Corpus(
        words=[seen[i] for i in order],
        counts=counts[order],
        ids=np.ascontiguousarray(ids[keep]),
        sentence=np.ascontiguousarray(sentence[keep]),
        raw_words=len(first),
        sha256=digest.hexdigest(),
        records=records,
    )


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """Files as given; a folder becomes its ``*.txt`` files, recursively and sorted (hidden
    entries, symlinks and other non-regular files skipped)."""
    out: list[str] = []
    for path in paths:
        if path == "-" or not os.path.isdir(path):
            out.append(path)
            continue
        found = []
        for root, dirs, files in os.walk(path):  # os.walk does not follow symlinked folders
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                full = os.path.join(root, name)
                regular = os.path.isfile(full) and not os.path.islink(full)
                if name.endswith(".txt") and not name.startswith(".") and regular:
                    found.append(full)
        if not found:
            raise DataError("no *.txt files in this folder", where=path)
        out += found
    return out


# --------------------------------------------------------------------------- training


@dataclass
class TrainStats:
    """What a run did: raw words (OOV included) over all epochs, seconds, last loss."""

    words: int = 0
    seconds: float = 0.0
    loss: float = float("nan")
    pairs: int = 0
    history: list[float] = field(default_factory=list)  # mean loss per epoch

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[int, float], None]  # (raw words since the last call, recent loss per pair)


def keep_probability(counts: np.ndarray, sample: float) -> np.ndarray:
    """gensim's subsampling: keep a word of count c with ((c/t)^0.5 + 1) * t/c, t = sample * total."""
    if sample <= 0:
        return np.ones(len(counts), np.float32)
    threshold = sample * float(counts.sum())
    c = counts.astype(np.float64)
    return np.minimum((np.sqrt(c / threshold) + 1) * threshold / c, 1.0).astype(np.float32)


def noise_table(counts: np.ndarray, size: int = 0) -> np.ndarray:
    """word2vec.c's unigram table: word i fills a share count_i^0.75 / sum of ``size`` slots
    (default: 64 per word, between 2^20 and 2^24), so a noise word is one random slot."""
    size = size or int(np.clip(64 * len(counts), 1 << 20, 1 << 24))
    p = counts.astype(np.float64) ** 0.75
    bounds = np.rint(np.cumsum(p) / p.sum() * size).astype(np.int64)
    return np.repeat(np.arange(len(counts), dtype=np.int64), np.diff(bounds, prepend=0))


def train(
    corpus: Corpus,
    cfg: Word2VecConfig,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    stats: TrainStats | None = None,
) -> np.ndarray:
    """Train word vectors on ``corpus``; returns the input vectors, ``(len(corpus.words), vector_size)``.

    ``progress`` is called about twice a second with the raw words done since its last call and the
    mean loss per pair of the epoch so far. On the CPU, the same seed and thread count give the
    same bytes.
    """
    torch = import_torch()
    device = resolve_device(device)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parallelism is ours: one torch thread per worker process (Trainer)
    try:
        return Trainer(torch, corpus, cfg, device).run(progress, stats if stats is not None else TrainStats())
    finally:
        torch.set_num_threads(old_threads)


def train_with_progress(corpus: Corpus, cfg: Word2VecConfig, device: str, stats: TrainStats) -> np.ndarray:
    """``train`` with nlpkit's progress on stderr: words done, words/s and the loss."""
    from nlpkit.formats import Progress

    total = cfg.epochs * corpus.raw_words
    with Progress(f"train-word2vec {cfg.arch}", total=total, unit=" words") as bar:
        start = time.perf_counter()

        def report(words: int, loss: float) -> None:
            rate = (bar.done + words) / max(time.perf_counter() - start, 1e-9)
            bar.advance(words, **{"words/s": f"{rate:,.0f}", "loss": f"{loss:.4f}"})

        return train(corpus, cfg, device, report, stats)


# --------------------------------------------------------------------------- the command's work


def read_texts(paths: Sequence[str], field: str = "text", fmt: str = "auto") -> Iterator[str]:
    """The texts of files, folders (their ``*.txt`` files) and ``-`` (stdin), in order.

    With ``fmt="auto"`` a ``.txt`` file is plain text (a line that starts with ``{`` is still
    text), a ``.jsonl``/``.json`` file is JSONL, and other inputs are told apart line by line.
    """
    from nlpkit.formats import read_records

    count = 0
    for path in expand_inputs(paths):
        kind = fmt
        if fmt == "auto" and path.endswith(".txt"):
            kind = "text"
        elif fmt == "auto" and path.endswith((".jsonl", ".json")):
            kind = "jsonl"
        for _, record in read_records(path, field=field, fmt=kind, allow_empty=True):
            count += 1
            yield record[field]
    if count == 0:
        raise DataError("empty input: no text", where=", ".join(paths), hint="give at least one line of text")


def train_vectors(
    paths: Sequence[str],
    cfg: Word2VecConfig,
    device: str = "cpu",
    field: str = "text",
    fmt: str = "auto",
    stats: TrainStats | None = None,
) -> tuple[WordVectors, dict[str, str]]:
    """``nlpkit train-word2vec``: read, count, train with progress on stderr. Returns the vectors
    and the metadata to store with them (hyperparameters and provenance, ``nlpkit.word2vec``)."""
    from nlpkit.formats import say
    from nlpkit.vectors import WordVectors

    device = resolve_device(device)  # fail (69) before reading a large corpus
    corpus = build_corpus(read_texts(paths, field, fmt), cfg.min_count, cfg.max_vocab)
    say(f"{corpus.raw_words} words in {corpus.records} records; vocabulary {len(corpus.words)} words")
    vectors = train_with_progress(corpus, cfg, device, stats if stats is not None else TrainStats())
    info = {**asdict(cfg), "device": device, "tokenizer": f"lowercase, regex {TOKEN_RE.pattern}",
            "inputs": list(paths), "corpus_sha256": corpus.sha256, "records": corpus.records,
            "raw_words": corpus.raw_words, "vocab": len(corpus.words)}  # fmt: skip
    return WordVectors(corpus.words, vectors), {
        "nlpkit.word2vec": json.dumps(info, sort_keys=True, ensure_ascii=False)
    }
