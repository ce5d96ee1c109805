"""word2vec's data side: tokenising, the vocabulary, subsampling and noise tables, the config."""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from nlpkit.errors import DataError, UsageError

NOISE = ("pooled", "per-pair")
# the default minibatch per architecture: skip-gram with 2048 reached 0.5 % of the analogies on
# an 8.3M-word corpus (gensim 14.5 %), with 512 13.1 % (bench/README.md, bench_word2vec)
BATCH_WORDS = {"skipgram": 512, "cbow": 2048}
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
    # centre words per minibatch, shared out among the threads (multiples of 16); 0: by arch,
    # BATCH_WORDS (skip-gram's 2048 trained well on Shakespeare but failed on 8M words)
    batch_words: int = 0
    seed: int = 1
    # pooled: a pool of noise words per 8 centres, each scored by all of them (fast); per-pair:
    # `negative` noise words of its own for every (centre, context) pair (skip-gram) or centre
    # (CBOW), gensim's and word2vec.c's sampling: the same work per pair as they do
    noise: str = "pooled"

    def __post_init__(self) -> None:
        if self.batch_words == 0 and self.arch in BATCH_WORDS:
            self.batch_words = BATCH_WORDS[self.arch]
        checks = [
            (self.noise in NOISE, f"--noise must be pooled or per-pair, not {self.noise!r}"),
            (self.arch in ARCHS, f"--arch must be cbow or skipgram, not {self.arch!r}"),
            (1 <= self.vector_size <= 10_000, "--vector-size must be between 1 and 10000"),
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
