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

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from nlpkit.io.deps import import_torch, resolve_device
from nlpkit.io.records import read_texts
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
    from nlpkit.io.talk import Progress

    total = cfg.epochs * corpus.raw_words
    with Progress(f"train-word2vec {cfg.arch}", total=total, unit=" words") as bar:
        start = time.perf_counter()

        def report(words: int, loss: float) -> None:
            rate = (bar.done + words) / max(time.perf_counter() - start, 1e-9)
            bar.advance(words, **{"words/s": f"{rate:,.0f}", "loss": f"{loss:.4f}"})

        return train(corpus, cfg, device, report, stats)


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
    from nlpkit.io.talk import say
    from nlpkit.vectors.wordvectors import WordVectors

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
