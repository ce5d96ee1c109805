"""The word2vec engine behind ``word2vec.train``: banded minibatches, pooled noise words, workers.

    vectors = Trainer(torch, corpus, cfg, "cpu").run(progress=None, stats=TrainStats())

A minibatch is a run of ``B`` consecutive centre words of the subsampled corpus; its pairs lie in
a band of +-window around the diagonal, scored in blocks of ``BLOCK`` centres by one batched
matrix product, with a pool of noise words per ``GROUP`` centres (word2vec.py's docstring has
the whole recipe and why). On the CPU several worker processes split the vectors' columns and
exchange only partial scores (``Team``), so the bytes depend only on the seed and the worker
count. The vocabulary, subsampling and noise tables are in word2vec_corpus.py, the public API in word2vec.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError, NlpkitError

if TYPE_CHECKING:
    from nlpkit.vectors.word2vec_corpus import Corpus, ProgressFn, TrainStats, Word2VecConfig


BLOCK = 16  # centres per banded matrix product (T): 16 wastes least on the band's corners
GROUP = 8  # consecutive centres that share a pool of noise words (G)
CHUNK = 1 << 20  # raw tokens subsampled at a time (bounds the random draws held at once)
SPAN = 32  # batches prepared together (masks, noise draws)
LOSS_EVERY = 8  # the loss shown is measured on every 8th batch (it costs a few per cent)


@dataclass
class _Updates:
    """One batch's row updates (for this worker's columns), computed from the parameters as they
    were, then applied."""

    syn0: list[tuple[Any, Any]]  # (row ids, rows to add)
    syn1: list[tuple[Any, Any]]
    loss: Any = None  # measured on every LOSS_EVERY-th batch only
    pairs: Any = None


@dataclass
class Pause:
    """Where a stopped run stands, all it takes to continue it bitwise: the span of batches to
    start from, the generator's state when the epoch's arrays were drawn and before that span's
    draws, and the epoch's loss so far. The matrices are the trainer's."""

    epoch: int
    first: int  # the next span's first batch
    epoch_rng: Any  # torch.ByteTensor
    rng: Any
    loss: float
    pairs: float


class Trainer:
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
        from nlpkit.vectors.word2vec_corpus import keep_probability, noise_table

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
        self.G = GROUP  # centres that share a pool
        if cfg.noise == "per-pair":  # a pool per centre: `negative` slots per window position
            self.G, self.pool = 1, (2 * W + 1) * cfg.negative if cfg.arch == "skipgram" else cfg.negative
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
        self.team: Team | None = None
        self.w = 0
        # a run stops between spans of batches once ``stop()`` says so (the parent's signal
        # handler); ``paused`` then says where, and a Trainer given ``resume`` continues there
        self.stop: Callable[[], bool] = lambda: False
        self.paused: Pause | None = None
        self.resume: Pause | None = None
        self.words_before = 0  # raw words a resumed run's earlier part did

    def matrices(self) -> tuple[Any, Any]:
        """(syn0, syn1), every worker's columns joined."""
        return self.torch.cat(self.syn0s, dim=1), self.torch.cat(self.syn1s, dim=1)

    def load(self, syn0: Any, syn1: Any, pause: Pause) -> None:
        """Continue a paused run: its matrices (split among this run's workers) and its place."""
        edges = [0, *itertools.accumulate(t.shape[1] for t in self.syn0s)]
        for i, (a, b) in enumerate(itertools.pairwise(edges)):
            self.syn0s[i].copy_(syn0[:, a:b])
            self.syn1s[i].copy_(syn1[:, a:b])
        self.resume = pause

    # ----------------------------------------------------------------- epochs, batches, workers

    def run(self, progress: ProgressFn | None, stats: TrainStats) -> np.ndarray | None:
        """Train; the input vectors, or None when ``stop()`` paused the run (see ``paused``)."""
        start = time.perf_counter()
        self.progress, self.stats, self.reported, self.last = progress, stats, 0, start
        if self.workers == 1:
            self._work(0)
        else:
            self._run_team()
        if self.paused is not None:
            stats.seconds = time.perf_counter() - start
            return None
        vectors = self.torch.cat(self.syn0s, dim=1).cpu().numpy()
        stats.words = self.cfg.epochs * self.raw_words - self.words_before  # this run's (resumed: the rest)
        stats.seconds = time.perf_counter() - start
        stats.loss = stats.history[-1]
        if progress is not None:
            progress(self.cfg.epochs * self.raw_words - self.reported, stats.loss)
        if not np.isfinite(vectors).all():
            raise DataError("training diverged (NaN in the vectors)", hint="lower --alpha or --batch-words")
        return vectors

    def _work(self, w: int) -> None:
        """Every batch of every epoch, on worker w's columns. Every worker draws the same random
        numbers (the generator was forked in the same state)."""
        cfg, B = self.cfg, self.B
        self.w, self.syn0, self.syn1 = w, self.syn0s[w], self.syn1s[w]
        resume = self.resume
        for epoch in range(resume.epoch if resume else 0, cfg.epochs):
            if resume:
                self.gen.set_state(resume.epoch_rng)
            epoch_rng = self.gen.get_state()
            ids, sentence, reach, count = self._epoch_arrays()
            n, steps = max(count, 1), -(-count // B)
            self.loss.zero_(), self.pairs.zero_()
            start = 0
            if resume:  # the epoch's arrays are drawn again; the rest continues where it stopped
                self.gen.set_state(resume.rng)
                self.loss.fill_(resume.loss), self.pairs.fill_(resume.pairs)
                start, resume = resume.first, None
                self.words_before = self.reported = int(self.raw_words * (epoch + min(start * B, n) / n))
            for first in range(start, steps, SPAN):
                if self._stop_here(w):
                    self.paused = Pause(epoch, first, epoch_rng, self.gen.get_state(), float(self.loss),
                                        float(self.pairs))  # fmt: skip
                    return
                span = self._span(ids, sentence, reach, first, min(steps, first + SPAN))
                for k in range(first, min(steps, first + SPAN)):
                    lr = cfg.alpha - (cfg.alpha - cfg.min_alpha) * (epoch + k * B / n) / cfg.epochs
                    self._apply(self._compute(span, k - first, lr, w == 0 and k % LOSS_EVERY == 0))
                    if w == 0:
                        self._tick(epoch, min((k + 1) * B, n) / n)
            if w == 0:
                self.stats.history.append(float(self.loss) / max(float(self.pairs), 1.0))
                self.stats.pairs += int(self.pairs)

    def _stop_here(self, w: int) -> bool:
        """Whether the run stops before this span: worker 0 decides (``stop()``) and, in a team,
        posts the decision before a barrier that every worker passes before reading it, so all
        stop at the same batch with every update applied."""
        if self.team is None:
            return self.stop()
        flags, T = self.team.flags, self.workers
        if w == 0 and self.stop():
            flags[T + 1] = 1
        self.team.wait(w)
        return bool(flags[T + 1])

    def _run_team(self) -> None:
        """Fork workers 1..T-1 over the shared matrices; this process is worker 0."""
        import multiprocessing

        ctx, parent = multiprocessing.get_context("fork"), os.getpid()
        for t in (*self.syn0s, *self.syn1s):
            t.share_memory_()
        self.team = team = Team(self, ctx)
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
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the parent's to handle
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (it stops the team between two spans)
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
        G, P, W, s, nc = self.G, self.pool, self.cfg.window, first * self.B, (last - first) * self.B
        sent_h = sentence[s : s + nc + 2 * W]
        band = sent_h.as_strided((nc, 2 * W + 1), (1, 1))
        m = (band == sent_h[W : W + nc, None]) & (self.dist[None, :] <= reach[s : s + nc, None])
        m = m.to(self.syn0.dtype)
        span = {"ids": ids[s : s + nc + 2 * W].long(), "m": m, "n": m.sum(1), "noise": self._noise(nc // G)}
        if self.cfg.arch == "skipgram" and G == 1:
            # per pair: window position k of centre c owns slots k*negative .. (k+1)*negative-1,
            # weighted 1 where (c, k) is a pair and the noise word is not its context word
            band_ids = span["ids"].as_strided((nc, 2 * W + 1), (1, 1))
            neg = self.cfg.negative
            hit = span["noise"] != band_ids.repeat_interleave(neg, 1)
            span["weight"] = (m.repeat_interleave(neg, 1) * hit).view(nc, 1, P)
            return span
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
        B, W, G, s = self.B, self.cfg.window, self.G, b * self.B
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
        B, W, G, P = self.B, self.cfg.window, self.G, self.pool
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
        B, W, G, P = self.B, self.cfg.window, self.G, self.pool
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


class Team:
    """What the worker processes share besides the matrices: double-buffered mailboxes for the
    partial scores (one per worker) and a barrier."""

    def __init__(self, trainer: Trainer, ctx: Any):
        torch, B, W, T = trainer.torch, trainer.B, trainer.cfg.window, trainer.workers
        shapes = [
            (B, 2 * W + 1) if trainer.cfg.arch == "skipgram" else (B,),
            (B // trainer.G, trainer.G, trainer.pool),
        ]
        self.boxes = [[[torch.zeros(s).share_memory_() for s in shapes] for _ in range(2)] for _ in range(T)]
        # the barrier: each worker's count of barriers passed, then an abort flag and a stop flag
        # (shared memory)
        self.T = T
        self.flags = np.frombuffer(ctx.RawArray("q", T + 2), dtype=np.int64)
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
        while self.flags[: self.T].min() < self.passed:
            if self.flags[self.T]:
                raise _Aborted
            waits += 1
            if waits > 50:
                os.sched_yield()
            if waits % 20_000 == 0 and (not self.alive() or time.monotonic() - start > 600):
                self.abort()

    def abort(self) -> None:
        self.flags[self.T] = 1
