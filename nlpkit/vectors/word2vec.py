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

Where this differs from gensim's word2vec (each difference is the price of the batching): a
minibatch's gradients (512 centres by default for skip-gram, 2048 for CBOW) are computed from
the same parameters and summed (gensim applies each pair's update at once, its worker threads
racing, Hogwild); larger minibatches train worse (skip-gram at 2048 reached 0.5 % of the
analogies on an 8.3M-word corpus where 512 reached 13.1 % and gensim 14.5 %; at 4096 it
diverges on Shakespeare: a clear error, exit 65), so keep ``--batch-words`` near its default.
Skip-gram takes the centre word as input and scores its context words (word2vec.c scores the
centre from each context word: the same pairs, roles swapped). The noise words are pooled as
said above (``noise="per-pair"``, ``--noise per-pair``, draws word2vec's own instead:
``negative`` noise words for every pair, the same work per pair as gensim, slower), and the
sigmoid is exact, not a table clipped at +-6. On Shakespeare and (skip-gram at 512) on 8.3M words
the vectors score close to gensim's (bench/bench_word2vec.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from nlpkit.io.deps import import_torch, resolve_device
from nlpkit.io.records import read_texts
from nlpkit.io.signals import StopFlag
from nlpkit.vectors.word2vec_corpus import (
    TOKEN_RE,
    Corpus,
    ProgressFn,
    TrainStats,
    Word2VecConfig,
    build_corpus,
)
from nlpkit.vectors.word2vec_trainer import Trainer

if TYPE_CHECKING:
    from nlpkit.vectors.wordvectors import WordVectors


def train(
    corpus: Corpus,
    cfg: Word2VecConfig,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    stats: TrainStats | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    stop: StopFlag | None = None,
) -> np.ndarray:
    """Train word vectors on ``corpus``; returns the input vectors, ``(len(corpus.words), vector_size)``.

    ``progress`` is called about twice a second with the raw words done since its last call and the
    mean loss per pair of the epoch so far. On the CPU, the same seed and thread count give the
    same bytes.

    SIGTERM or a first Ctrl-C stop the run between two spans of batches (a fraction of a second):
    with ``checkpoint`` (a file path) the matrices, the random generator's state and the place
    are written there, then ``Stopped`` (exit 143) or ``Interrupted`` (130) is raised;
    ``resume=True`` continues from that file, bitwise as if never stopped (same seed and
    threads). The caller removes the checkpoint once the vectors are safely written. ``stop``: a
    StopFlag the caller installed earlier (a signal while it read the corpus stops the run at
    its first span); without one, train installs its own.
    """
    import contextlib

    from nlpkit.errors import Interrupted, Stopped

    torch = import_torch()
    device = resolve_device(device)
    stats = stats if stats is not None else TrainStats()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parallelism is ours: one torch thread per worker process (Trainer)
    try:
        trainer = Trainer(torch, corpus, cfg, device)
        if resume:
            _resume(trainer, corpus, cfg, checkpoint, stats)
        with contextlib.nullcontext(stop) if stop is not None else StopFlag() as flag:
            trainer.stop = lambda: bool(flag.signum)
            vectors = trainer.run(progress, stats)
        if vectors is None:  # stopped by a signal between two spans
            error, how = (Stopped, "SIGTERM") if flag.signum == signal.SIGTERM else (Interrupted, "Ctrl-C")
            assert trainer.paused is not None
            if checkpoint is None:
                raise error(f"stopped by {how}; nothing was written")
            _save_checkpoint(trainer, corpus, cfg, checkpoint, stats)
            pause = trainer.paused
            raise error(f"stopped by {how} in epoch {pause.epoch + 1} of {cfg.epochs}; checkpoint saved",
                        where=checkpoint, hint="continue with --resume")  # fmt: skip
        return vectors
    finally:
        torch.set_num_threads(old_threads)


CHECKPOINT_KIND = "word2vec-checkpoint"


def _fingerprint(corpus: Corpus, cfg: Word2VecConfig) -> dict[str, object]:
    """What a resumed run must share with the stopped one (the thread count may change: the
    random draws are the same, only float sums may round differently)."""
    return {**{k: v for k, v in asdict(cfg).items() if k != "threads"}, "corpus_sha256": corpus.sha256,
            "vocab": len(corpus.words)}  # fmt: skip


def _save_checkpoint(
    trainer: Trainer, corpus: Corpus, cfg: Word2VecConfig, path: str, stats: TrainStats
) -> None:
    from nlpkit.io.tensors import save_tensors

    pause = trainer.paused
    assert pause is not None
    syn0, syn1 = trainer.matrices()
    state = {"epoch": pause.epoch, "first": pause.first, "loss": pause.loss, "pairs": pause.pairs,
             "history": stats.history, "pairs_total": stats.pairs}  # fmt: skip
    tensors = {"syn0": syn0.cpu().numpy(), "syn1": syn1.cpu().numpy(),
               "epoch_rng": pause.epoch_rng.numpy(), "rng": pause.rng.numpy()}  # fmt: skip
    meta = {"nlpkit.word2vec.run": json.dumps(_fingerprint(corpus, cfg), sort_keys=True),
            "nlpkit.word2vec.state": json.dumps(state)}  # fmt: skip
    save_tensors(path, tensors, meta, kind=CHECKPOINT_KIND)


def _resume(
    trainer: Trainer, corpus: Corpus, cfg: Word2VecConfig, path: str | None, stats: TrainStats
) -> None:
    from nlpkit.errors import DataError, InputMissing, UsageError
    from nlpkit.io.tensors import load_tensors
    from nlpkit.vectors.word2vec_trainer import Pause

    if path is None or not os.path.exists(path):
        raise InputMissing("no checkpoint to resume from", where=str(path),
                           hint="start without --resume (a finished run leaves none)")  # fmt: skip
    tensors, meta = load_tensors(path, copy=True)
    if meta.get("nlpkit.kind") != CHECKPOINT_KIND or "nlpkit.word2vec.run" not in meta:
        raise DataError("not a train-word2vec checkpoint", where=path)
    saved, mine = json.loads(meta["nlpkit.word2vec.run"]), _fingerprint(corpus, cfg)
    changed = [k for k in mine if saved.get(k) != mine[k]]
    if changed:
        data = "corpus_sha256" in changed or "vocab" in changed
        what = "the input text" if data else f"--{changed[0].replace('_', '-')}"
        hint = "pass the same inputs and flags (only --threads may change)"
        raise UsageError(
            f"{what} differs from the stopped run's; --resume continues it", where=path, hint=hint
        )
    V, d = len(corpus.words), cfg.vector_size
    if any(k not in tensors or tensors[k].shape != (V, d) for k in ("syn0", "syn1")):
        raise DataError(f"the checkpoint's matrices are not {V} x {d}", where=path)
    state = json.loads(meta["nlpkit.word2vec.state"])
    torch, dev = trainer.torch, trainer.device
    epoch_rng, rng = (torch.from_numpy(tensors[k]) for k in ("epoch_rng", "rng"))
    pause = Pause(int(state["epoch"]), int(state["first"]), epoch_rng, rng, float(state["loss"]),
                  float(state["pairs"]))  # fmt: skip
    trainer.load(torch.from_numpy(tensors["syn0"]).to(dev), torch.from_numpy(tensors["syn1"]).to(dev), pause)
    stats.history, stats.pairs = list(state["history"]), int(state["pairs_total"])


def train_with_progress(
    corpus: Corpus,
    cfg: Word2VecConfig,
    device: str,
    stats: TrainStats,
    checkpoint: str | None = None,
    resume: bool = False,
    stop: StopFlag | None = None,
) -> np.ndarray:
    """``train`` with nlpkit's progress on stderr: words done, words/s and the loss."""
    from nlpkit.io.talk import Progress

    total = cfg.epochs * corpus.raw_words
    with Progress(f"train-word2vec {cfg.arch}", total=total, unit=" words") as bar:
        start = time.perf_counter()

        def report(words: int, loss: float) -> None:
            rate = (bar.done + words) / max(time.perf_counter() - start, 1e-9)
            bar.advance(words, **{"words/s": f"{rate:,.0f}", "loss": f"{loss:.4f}"})

        return train(corpus, cfg, device, report, stats, checkpoint, resume, stop)


def train_vectors(
    paths: Sequence[str],
    cfg: Word2VecConfig,
    device: str = "cpu",
    field: str = "text",
    fmt: str = "auto",
    stats: TrainStats | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
) -> tuple[WordVectors, dict[str, str]]:
    """``nlpkit train-word2vec``: read, count, train with progress on stderr. Returns the vectors
    and the metadata to store with them (hyperparameters and provenance, ``nlpkit.word2vec``);
    ``checkpoint`` and ``resume`` as in ``train``."""
    device = resolve_device(device)  # fail (69) before reading a large corpus
    with StopFlag() as stop:  # from here: a SIGTERM while reading stops the run at its start
        return _read_and_train(paths, cfg, device, field, fmt, stats, checkpoint, resume, stop)


def _read_and_train(
    paths: Sequence[str],
    cfg: Word2VecConfig,
    device: str,
    field: str,
    fmt: str,
    stats: TrainStats | None,
    checkpoint: str | None,
    resume: bool,
    stop: StopFlag,
) -> tuple[WordVectors, dict[str, str]]:
    from nlpkit.io.talk import say
    from nlpkit.vectors.wordvectors import WordVectors

    corpus = build_corpus(read_texts(paths, field, fmt), cfg.min_count, cfg.max_vocab)
    say(f"{corpus.raw_words} words in {corpus.records} records; vocabulary {len(corpus.words)} words")
    stats = stats if stats is not None else TrainStats()
    vectors = train_with_progress(corpus, cfg, device, stats, checkpoint, resume, stop)
    info = {**asdict(cfg), "device": device, "tokenizer": f"lowercase, regex {TOKEN_RE.pattern}",
            "inputs": list(paths), "corpus_sha256": corpus.sha256, "records": corpus.records,
            "raw_words": corpus.raw_words, "vocab": len(corpus.words)}  # fmt: skip
    return WordVectors(corpus.words, vectors), {
        "nlpkit.word2vec": json.dumps(info, sort_keys=True, ensure_ascii=False)
    }


def training_pairs(texts: Sequence[str], cfg: Word2VecConfig, as_trained: bool = False) -> Iterator[dict]:
    """The (input, target) samples the sliding window makes from ``texts``: skip-gram gives one
    record per (centre, context) pair, ``{"input": centre, "target": context}``; CBOW one per
    centre, ``{"input": [context words], "target": centre}``. Each adds its "sentence" and the
    centre's "position" among the kept tokens.

    By default every word within ``cfg.window`` of the centre in the same sentence is a context
    (the textbook picture, no subsampling). With ``as_trained``, the first epoch of
    ``train-word2vec`` with the same settings and seed: the same frequent words dropped and the
    same window size drawn for each centre (word2vec's dynamic window), read from the trainer's
    own random draws, so these are exactly the pairs it trains on in that epoch.
    """
    torch = import_torch()
    corpus = build_corpus(texts, cfg.min_count, cfg.max_vocab)
    W = cfg.window
    if as_trained:
        old = torch.get_num_threads()
        try:
            ids_t, sentence_t, reach_t, n = Trainer(torch, corpus, cfg, "cpu")._epoch_arrays()
        finally:
            torch.set_num_threads(old)
        ids, sentence, reach = ids_t.numpy(), sentence_t.numpy(), reach_t.numpy()
        from nlpkit.io.talk import say

        say(f"subsampling (--sample {cfg.sample}) kept {n} of {len(corpus.ids)} tokens in this epoch")
    else:
        n = len(corpus.ids)
        ids = np.concatenate([np.zeros(W, np.int32), corpus.ids, np.zeros(W, np.int32)])
        no_one = -np.arange(1, 2 * W + 1, dtype=np.int32)
        sentence = np.concatenate([no_one[:W], corpus.sentence, no_one[W:]])
        reach = np.full(n, W)
    words = corpus.words
    for c in range(n):
        h = c + W  # the centre's row in the padded arrays
        near = [
            h + d for d in range(-W, W + 1) if d and abs(d) <= reach[c] and sentence[h + d] == sentence[h]
        ]
        base = {"sentence": int(sentence[h]), "position": c}
        if cfg.arch == "cbow":
            if near:
                yield {"input": [words[ids[j]] for j in near], "target": words[ids[h]], **base}
        else:
            for j in near:
                yield {"input": words[ids[h]], "target": words[ids[j]], **base}
