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
exchange only partial scores (``_Trainer``).

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

import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import re
import signal
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError, NlpkitError, UsageError
from nlpkit.train import import_torch, resolve_device

if TYPE_CHECKING:
    from nlpkit.vectors import WordVectors

TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
ARCHS = ("cbow", "skipgram")
BLOCK = 16  # centres per banded matrix product (T): 16 wastes least on the band's corners
GROUP = 8  # consecutive centres that share a pool of noise words (G)
CHUNK = 1 << 20  # raw tokens subsampled at a time (bounds the random draws held at once)
SPAN = 32  # batches prepared together (masks, noise draws)
LOSS_EVERY = 8  # the loss shown is measured on every 8th batch (it costs a few per cent)


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
    torch.set_num_threads(1)  # the parallelism is ours: one torch thread per worker process (_Trainer)
    try:
        return _Trainer(torch, corpus, cfg, device).run(
            progress, stats if stats is not None else TrainStats()
        )
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


@dataclass
class _Updates:
    """One batch's row updates (for this worker's columns), computed from the parameters as they
    were, then applied."""

    syn0: list[tuple[Any, Any]]  # (row ids, rows to add)
    syn1: list[tuple[Any, Any]]
    loss: Any = None  # measured on every LOSS_EVERY-th batch only
    pairs: Any = None


class _Trainer:
    """One run: the two matrices, the noise table, and the workers that share the work.

    Several CPU workers split the vectors by columns, not the corpus by batches: worker w owns
    columns d_w of both matrices (in shared memory) and runs every batch on them. The only
    exchange is the scores: each worker posts its partial dot products, and after a barrier
    every worker sums all partials in the same order, so all see the same scores and the same
    gradient coefficients, and each updates its own columns. No row is written by two
    processes, a minibatch is the same whatever the worker count, and the bytes depend only on
    the seed and the worker count. Workers are forked processes: threads would queue on
    Python's lock between the many small kernels.
    """

    def __init__(self, torch: Any, corpus: Corpus, cfg: Word2VecConfig, device: str):
        self.torch, self.cfg, self.device = torch, cfg, device
        V, d, W = len(corpus.words), cfg.vector_size, cfg.window
        self.workers = min(cfg.threads, d) if device == "cpu" else 1
        self.B = -(-cfg.batch_words // BLOCK) * BLOCK  # centres per batch, a multiple of 16
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed)
        # gensim's initialisation: input rows uniform in [-0.5/d, 0.5/d), output rows zero
        syn0 = (torch.rand(V, d, generator=self.gen, device=device) - 0.5) / d
        edges = [d * w // self.workers for w in range(self.workers + 1)]
        self.syn0s = [syn0[:, a:b].contiguous() for a, b in itertools.pairwise(edges)]
        self.syn1s = [torch.zeros(V, b - a, device=device) for a, b in itertools.pairwise(edges)]
        self.syn0, self.syn1 = self.syn0s[0], self.syn1s[0]  # this worker's columns
        self.noise_table = torch.from_numpy(noise_table(corpus.counts)).to(device)
        # noise words per group of 8 centres: sizes chosen on Shakespeare (bench/README.md) as the
        # fastest whose quality matches gensim's (a pool row shared by fewer centres trains better)
        self.pool = (16 if cfg.arch == "skipgram" else 12) * -(-cfg.negative // 5)
        self.keep = torch.from_numpy(keep_probability(corpus.counts, cfg.sample)).to(device)
        self.ids = torch.from_numpy(corpus.ids).to(device)
        self.sentence = torch.from_numpy(corpus.sentence).to(device)
        self.raw_words, self.V = corpus.raw_words, V
        # the band: centre c (0..B-1) meets halo row c + k, k = 0..2W (k = W is the centre itself)
        B, K = self.B, 2 * W + 1
        ar = torch.arange
        self.band = (ar(B, device=device)[:, None] + ar(K, device=device)[None, :]).contiguous()
        # the band's transpose: halo row j receives from centre j - 2W + k' (k' = 2W - k)
        rev = ar(B + 2 * W, device=device)[:, None] - 2 * W + ar(K, device=device)[None, :]
        self.rev = rev.clamp_(0, B - 1)
        self.dist = (ar(K, device=device) - W).abs()
        self.dist[W] = W + 1  # never its own context
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.pairs = torch.zeros((), dtype=torch.float64, device=device)
        self.team: _Team | None = None
        self.w = 0

    # ----------------------------------------------------------------- epochs, batches, workers

    def run(self, progress: ProgressFn | None, stats: TrainStats) -> np.ndarray:
        start = time.perf_counter()
        self.progress, self.stats, self.reported, self.last = progress, stats, 0, start
        if self.workers == 1:
            self._work(0)
        else:
            self._run_team()
        vectors = self.torch.cat(self.syn0s, dim=1).cpu().numpy()
        stats.words, stats.seconds = self.cfg.epochs * self.raw_words, time.perf_counter() - start
        stats.loss = stats.history[-1]
        if progress is not None:
            progress(stats.words - self.reported, stats.loss)
        if not np.isfinite(vectors).all():
            raise DataError("training diverged (NaN in the vectors)", hint="lower --alpha or --batch-words")
        return vectors

    def _work(self, w: int) -> None:
        """Every batch of every epoch, on worker w's columns. Every worker draws the same random
        numbers (the generator was forked in the same state)."""
        cfg, B = self.cfg, self.B
        self.w, self.syn0, self.syn1 = w, self.syn0s[w], self.syn1s[w]
        for epoch in range(cfg.epochs):
            ids, sentence, reach, count = self._epoch_arrays()
            n, steps = max(count, 1), -(-count // B)
            self.loss.zero_(), self.pairs.zero_()
            for first in range(0, steps, SPAN):
                span = self._span(ids, sentence, reach, first, min(steps, first + SPAN))
                for k in range(first, min(steps, first + SPAN)):
                    lr = cfg.alpha - (cfg.alpha - cfg.min_alpha) * (epoch + k * B / n) / cfg.epochs
                    self._apply(self._compute(span, k - first, lr, w == 0 and k % LOSS_EVERY == 0))
                    if w == 0:
                        self._tick(epoch, min((k + 1) * B, n) / n)
            if w == 0:
                self.stats.history.append(float(self.loss) / max(float(self.pairs), 1.0))
                self.stats.pairs += int(self.pairs)

    def _run_team(self) -> None:
        """Fork workers 1..T-1 over the shared matrices; this process is worker 0."""
        import multiprocessing

        ctx, parent = multiprocessing.get_context("fork"), os.getpid()
        for t in (*self.syn0s, *self.syn1s):
            t.share_memory_()
        self.team = team = _Team(self, ctx)
        children = [
            ctx.Process(target=self._child, args=(w, parent), daemon=True) for w in range(1, self.workers)
        ]
        for p in children:
            p.start()
        team.alive = lambda: all(p.exitcode is None for p in children)
        try:
            self._work(0)
        except BaseException as e:
            team.abort()
            if isinstance(e, _Aborted):
                why = team.errors.get() if not team.errors.empty() else "it stopped answering"
                raise NlpkitError(f"a word2vec worker process failed: {why}") from None
            raise
        finally:
            for p in children:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()

    def _child(self, w: int, parent: int) -> None:
        assert self.team is not None
        self.team.alive = lambda: os.getppid() == parent
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        with contextlib.suppress(Exception):  # die with the parent (Linux)
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        try:
            self._work(w)
        except _Aborted:
            os._exit(1)
        except BaseException as e:
            self.team.errors.put(f"{type(e).__name__}: {e}")
            self.team.abort()
            os._exit(1)

    def _apply(self, u: _Updates) -> None:
        for rows, values in u.syn0:
            self.syn0.index_add_(0, rows, values)
        for rows, values in u.syn1:
            self.syn1.index_add_(0, rows, values)
        if u.loss is not None:
            self.loss += u.loss
            self.pairs += u.pairs

    def _scores(self, a: Any, b: Any) -> tuple[Any, Any]:
        """Full scores from this worker's partial ones (the identity with one worker)."""
        return (a, b) if self.team is None else self.team.sum(self.w, a, b)

    def _tick(self, epoch: int, fraction: float) -> None:
        now = time.perf_counter()
        if self.progress is not None and now - self.last >= 0.5:
            done = int(self.raw_words * (epoch + fraction))
            self.progress(done - self.reported, float(self.loss) / max(float(self.pairs), 1.0))
            self.reported, self.last = done, now

    def _epoch_arrays(self) -> tuple[Any, Any, Any, int]:
        """This epoch's corpus: each token kept with its word's probability (chunk by chunk), padded
        so that every batch's halo is a plain slice: word ids, sentence ids (the padding gets ids
        of its own, -1, -2, ..., so it meets nobody), each centre's window, the kept count."""
        torch, W, B = self.torch, self.cfg.window, self.B
        kept_ids, kept_sentence = [], []
        for a in range(0, len(self.ids), CHUNK):
            ids, sentence = self.ids[a : a + CHUNK], self.sentence[a : a + CHUNK]
            if self.cfg.sample > 0:
                keep = torch.rand(len(ids), generator=self.gen, device=self.device) < self.keep[ids.long()]
                ids, sentence = ids[keep], sentence[keep]
            kept_ids.append(ids)
            kept_sentence.append(sentence)
        n = sum(len(x) for x in kept_ids)
        pad = torch.zeros(W + B, dtype=self.ids.dtype, device=self.device)
        ids = torch.cat([pad[:W], *kept_ids, pad])
        no_one = -torch.arange(1, W + B + 1, dtype=self.sentence.dtype, device=self.device)
        sentence = torch.cat([no_one[:W], *kept_sentence, no_one[W:], no_one[:W] - W - B])
        reach = W - torch.randint(0, W, (n + B,), generator=self.gen, device=self.device)  # dynamic window
        return ids, sentence, reach, n

    # ----------------------------------------------------------------- one batch

    def _span(self, ids: Any, sentence: Any, reach: Any, first: int, last: int) -> dict[str, Any]:
        """What batches first..last-1 need that the parameters do not change, computed in one go
        (fewer, larger operations): ``ids`` the halo's word ids (int64: index_add_'s fast path),
        ``m`` the (centres, 2W+1) pair mask (halo rows c .. c+2W are centre c's window), ``n``
        pairs per centre, ``noise`` a pool per group of centres and the ``weight`` of its scores;
        for CBOW also ``mean`` (the context's weights) and ``mt`` (the mask's transpose per batch).
        Padding past the corpus's end meets nobody."""
        G, P, W, s, nc = GROUP, self.pool, self.cfg.window, first * self.B, (last - first) * self.B
        sent_h = sentence[s : s + nc + 2 * W]
        band = sent_h.as_strided((nc, 2 * W + 1), (1, 1))
        m = (band == sent_h[W : W + nc, None]) & (self.dist[None, :] <= reach[s : s + nc, None])
        m = m.to(self.syn0.dtype)
        span = {"ids": ids[s : s + nc + 2 * W].long(), "m": m, "n": m.sum(1), "noise": self._noise(nc // G)}
        if self.cfg.arch == "skipgram":
            # each pair (centre, context) meets `negative` noise words: a centre with n pairs
            # weighs each of the P pool words by n * negative / P
            span["weight"] = (span["n"] * (self.cfg.negative / P)).view(-1, G, 1)
            return span
        # `negative` noise words per centre, spread over the pool; one that is the centre is
        # skipped; centres without context are skipped, as in gensim
        hit = span["noise"].view(-1, 1, P) != span["ids"][W : W + nc].view(-1, G, 1)
        span["has"] = (span["n"] > 0).to(m.dtype)
        span["weight"] = (span["has"] * (self.cfg.negative / P)).view(-1, G, 1) * hit
        span["mean"] = m / span["n"].clamp(min=1)[:, None]
        span["mt"] = self._transpose_band(m, last - first)
        return span

    def _compute(self, span: dict[str, Any], b: int, lr: float, with_loss: bool) -> _Updates:
        """The updates of the span's batch b (its centres bB .. bB+B-1)."""
        B, W, G, s = self.B, self.cfg.window, GROUP, b * self.B
        cut = {"ids": slice(s, s + B + 2 * W), "noise": slice(s // G, (s + B) // G), "mt": b}
        cut["weight"] = cut["noise"]
        batch = {key: value[cut.get(key, slice(s, s + B))] for key, value in span.items()}
        step = self._skipgram if self.cfg.arch == "skipgram" else self._cbow
        return step(batch, lr, with_loss)

    def _noise(self, groups: int) -> Any:
        """A pool of noise words per group of centres, drawn from counts^0.75: (groups, pool)."""
        table = self.noise_table
        slots = self.torch.randint(
            0, len(table), (groups * self.pool,), generator=self.gen, device=self.device
        )
        return table.index_select(0, slots).view(groups, self.pool)

    def _transpose_band(self, g: Any, batches: int = 1) -> Any:
        """(batches*B, 2W+1) weights of centre c at halo row c+k -> (batches, B+2W, 2W+1) weights
        of halo row j, batch by batch (a batch's halo hears from its own centres only)."""
        B, W, K = self.B, self.cfg.window, 2 * self.cfg.window + 1
        padded = self.torch.zeros(batches, B + 4 * W, K, device=self.device, dtype=g.dtype)
        padded[:, 2 * W : 2 * W + B] = g.view(batches, B, K)
        # row j, column k' holds padded[j + k', 2W - k'] = g[j - 2W + k', 2W - k']
        return padded.as_strided((batches, B + 2 * W, K), ((B + 4 * W) * K, K, K - 1), 2 * W)

    def _band_scores(self, X: Any, Yh: Any) -> Any:
        """Scores of each centre row X[c] (B, d) against halo rows Yh[c + k], k = 0..2W: (B, 2W+1)."""
        B, W, T = self.B, self.cfg.window, BLOCK
        d, nb, H = X.shape[1], B // T, T + 2 * W
        blocks = Yh.as_strided((nb, H, d), (T * d, d, 1))  # overlapping windows, no copy
        full = self.torch.bmm(X.view(nb, T, d), blocks.transpose(1, 2))  # (nb, T, T+2W)
        return full.as_strided((nb, T, 2 * W + 1), (T * H, H + 1, 1)).reshape(B, 2 * W + 1)

    # ----------------------------------------------------------------- the two architectures

    def _skipgram(self, batch: dict[str, Any], lr: float, with_loss: bool) -> _Updates:
        """Centre rows of syn0 score the syn1 rows of their context words and of the group's noise pool."""
        torch, F = self.torch, self.torch.nn.functional
        B, W, G, P = self.B, self.cfg.window, GROUP, self.pool
        ids_h, m, noise = batch["ids"], batch["m"], batch["noise"]
        ids_c = ids_h[W : W + B]
        X = self.syn0.index_select(0, ids_c)  # (B, d) centre inputs
        d = X.shape[1]
        Yh = self.syn1.index_select(0, ids_h)  # (B+2W, d) context outputs
        N = self.syn1.index_select(0, noise.view(-1)).view(B // G, P, d)
        Xg = X.view(B // G, G, d)
        S, Sn = self._scores(
            self._band_scores(X, Yh), torch.bmm(Xg, N.transpose(1, 2))
        )  # (B, 2W+1), (B/G, G, P)
        g = torch.sigmoid(-S).mul_(m).mul_(lr)  # 1 - sigmoid(S): the positive pairs' error
        weight = batch["weight"]
        gn = torch.sigmoid(Sn).mul_(weight * -lr)
        dX = F.embedding_bag(self.band, Yh, per_sample_weights=g, mode="sum") + torch.bmm(gn, N).view(B, d)
        dY = F.embedding_bag(self.rev, X, per_sample_weights=self._transpose_band(g)[0], mode="sum")
        dN = torch.bmm(gn.transpose(1, 2), Xg).view(-1, d)
        if not with_loss:
            return _Updates([(ids_c, dX)], [(ids_h, dY), (noise.view(-1), dN)])
        loss = -(F.logsigmoid(S) * m).sum() - (F.logsigmoid(-Sn) * weight).sum()
        return _Updates([(ids_c, dX)], [(ids_h, dY), (noise.view(-1), dN)], loss, m.sum())

    def _cbow(self, batch: dict[str, Any], lr: float, with_loss: bool) -> _Updates:
        """The mean of the context rows of syn0 scores the centre's syn1 row and the noise pool."""
        torch, F = self.torch, self.torch.nn.functional
        B, W, G, P = self.B, self.cfg.window, GROUP, self.pool
        ids_h, noise, has = batch["ids"], batch["noise"], batch["has"]
        ids_c = ids_h[W : W + B]
        weight = batch["weight"]
        band = ids_h.as_strided((B, 2 * W + 1), (1, 1))
        h = F.embedding_bag(band, self.syn0, per_sample_weights=batch["mean"], mode="sum")  # (B, d)
        d = h.shape[1]
        y = self.syn1.index_select(0, ids_c)  # (B, d)
        N = self.syn1.index_select(0, noise.view(-1)).view(B // G, P, d)
        hg = h.view(B // G, G, d)
        sp, Sn = self._scores((h * y).sum(1), torch.bmm(hg, N.transpose(1, 2)))  # (B,), (B/G, G, P)
        gp = torch.sigmoid(-sp).mul_(has * lr)
        gn = torch.sigmoid(Sn).mul_(weight * -lr)
        neu1e = torch.bmm(gn, N).view(B, d).addcmul_(gp[:, None], y)  # (B, d) error back to the context
        # gensim (cbow_mean=1) adds the whole error to every context word, not error / count
        dXh = F.embedding_bag(self.rev, neu1e, per_sample_weights=batch["mt"], mode="sum")
        dN = torch.bmm(gn.transpose(1, 2), hg).view(-1, d)
        updates = _Updates([(ids_h, dXh)], [(ids_c, gp[:, None] * h), (noise.view(-1), dN)])
        if with_loss:
            updates.loss = -(F.logsigmoid(sp) * has).sum() - (F.logsigmoid(-Sn) * weight).sum()
            updates.pairs = has.sum()
        return updates


class _Aborted(Exception):
    """Another worker failed or stopped: leave the batch."""


class _Team:
    """What the worker processes share besides the matrices: double-buffered mailboxes for the
    partial scores (one per worker) and a barrier."""

    def __init__(self, trainer: _Trainer, ctx: Any):
        torch, B, W, T = trainer.torch, trainer.B, trainer.cfg.window, trainer.workers
        shapes = [
            (B, 2 * W + 1) if trainer.cfg.arch == "skipgram" else (B,),
            (B // GROUP, GROUP, trainer.pool),
        ]
        self.boxes = [[[torch.zeros(s).share_memory_() for s in shapes] for _ in range(2)] for _ in range(T)]
        # the barrier: each worker's count of barriers passed, then an abort flag (shared memory)
        self.flags = np.frombuffer(ctx.RawArray("q", T + 1), dtype=np.int64)
        self.passed = 0
        self.alive: Callable[[], bool] = lambda: True
        self.errors = ctx.SimpleQueue()

    def sum(self, w: int, *parts: Any) -> tuple[Any, ...]:
        """Post this worker's partial scores; return everyone's sums, added in worker order (the
        same floats in every process). Two sets of boxes, used in turn, let one barrier a batch
        suffice: a worker writes a set again only after all have passed the next barrier."""
        turn = self.passed % 2
        for box, part in zip(self.boxes[w][turn], parts, strict=True):
            box.copy_(part)
        self.wait(w)
        sums = []
        for i in range(len(parts)):
            total = self.boxes[0][turn][i] + self.boxes[1][turn][i]
            for boxes in self.boxes[2:]:
                total += boxes[turn][i]
            sums.append(total)
        return tuple(sums)

    def wait(self, w: int) -> None:
        """Spin until every worker has passed as many barriers (a batch takes under a millisecond,
        too short for a semaphore's wake-up); yield the processor while waiting."""
        self.passed += 1
        self.flags[w] = self.passed
        waits, start = 0, time.monotonic()
        while self.flags[:-1].min() < self.passed:
            if self.flags[-1]:
                raise _Aborted
            waits += 1
            if waits > 50:
                os.sched_yield()
            if waits % 20_000 == 0 and (not self.alive() or time.monotonic() - start > 600):
                self.abort()

    def abort(self) -> None:
        self.flags[-1] = 1


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
