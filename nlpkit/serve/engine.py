"""Continuous batching: one thread decodes every running request together, and requests that
arrive while others decode join the batch between two steps.

    engine = Engine(Generator.load("smollm2-135m-instruct"), max_batch=8, max_queue=64)
    engine.start()
    engine.submit(Job(prompt_ids, Sampling(max_new_tokens=64, temperature=0), sink))
    # sink.token(t) is called from the engine thread for each token (return False to stop),
    # then sink.end(reason) exactly once: "stop", "length", "cancelled" or "error".

Each loop turn: drop the rows whose client went away, admit up to ``max_batch`` waiting jobs
(one left-padded prefill of the newcomers, then ``cache.merge``), run one decode step for all
rows, sample each row with its own settings and seed, and drop the finished rows
(``cache.select``). So a long answer never holds a short one back, and a newcomer waits at
most one step (plus its own prefill) to start.

What the engine needs from the Generator (and so from any backend behind it, torch or ONNX
Runtime): ``prefill(rows, max_new_tokens) -> (logits (B, vocab), cache)``,
``step(tokens, cache) -> logits (B, vocab)``, ``banned()``, ``cfg.eos_id``, ``cfg.block_size``,
``cfg.arch``; from the cache: ``pos``, ``max_len``, ``merge(other, room)``, ``select(rows)``,
``compact(room)`` (see nlpkit/lm/kv_cache.py). Models other than llama (the LSTM, the
encoder-decoder), and a backend whose cache lacks those three operations, run their jobs one
at a time (``Generator.tokens_from_ids``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nlpkit.llm.generate import Sampling, sample_token

if TYPE_CHECKING:
    from nlpkit.llm.generate import Generator


class Busy(Exception):
    """More jobs wait than ``max_queue`` allows (the server answers 429)."""


class Closed(Exception):
    """The engine is shutting down and takes no new jobs (the server answers 503)."""


class Sink(Protocol):
    def token(self, token: int) -> bool:
        """One generated token; False ends the job (a stop string was reached)."""
        ...

    def end(self, reason: str) -> None:
        """Called once when the job is over: "stop", "length", "cancelled" or "error"."""
        ...


@dataclass
class Job:
    ids: list[int]  # the prompt's token ids (must leave room for max_new_tokens in the window)
    sampling: Sampling
    sink: Sink
    cancelled: bool = False  # set from any thread: the client went away
    generated: int = 0  # tokens handed to the sink so far
    queued_at: float = field(default_factory=time.monotonic)
    _last: int = 0  # the sampled token not yet fed to the model
    _draw: Any = None  # the job's torch.Generator


class Engine:
    """The decode loop on its own thread; ``submit`` from any thread."""

    def __init__(self, gen: Generator, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be at least 1 and max_queue not negative")
        self.gen = gen
        self.batched = gen.cfg.arch == "llama" and _has_batch_ops(gen)
        self.max_batch = max_batch if self.batched else 1
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.cache: Any = None
        self._cond = threading.Condition()
        self._closing = False  # no new jobs
        self._deadline: float | None = None  # after it, running jobs are cut short
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run
        self.peak = 0  # the most rows decoded together so far

    # ---- the public side (any thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nlpkit-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises Busy when ``max_queue`` jobs already wait, Closed when draining."""
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            free = max(0, self.max_batch - len(self.running))  # slots the next turn fills
            if len(self.waiting) >= self.max_queue + free:
                raise Busy(f"{len(self.waiting)} requests are waiting already")
            self.waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def drain(self, grace: float) -> None:
        """Take no new jobs; finish the running and waiting ones, cutting them short (reason
        "length") once ``grace`` seconds have passed."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + grace
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """End every job now (reason "length") and stop the thread."""
        self.drain(0.0)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def counts(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": len(self.waiting)}

    # ---- the engine thread

    def _loop(self) -> None:
        import torch

        while True:
            with self._cond:
                while self.idle and not self._closing:
                    self._cond.wait()
                if self.idle and self._closing:
                    return
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._end_all("length")
                    continue
                room = self.max_batch - len(self.running)
                new: list[Job] = []
                while self.waiting and len(new) < room:
                    job = self.waiting.popleft()
                    if job.cancelled:
                        job.sink.end("cancelled")
                    else:
                        new.append(job)
            try:
                with torch.inference_mode():
                    self._turn(new)
            except Exception as e:  # a failed step ends its jobs, never the server
                self._fail(e, new)

    def _turn(self, new: list[Job]) -> None:
        self._drop([j for j in self.running if j.cancelled], "cancelled")
        if not self.batched:
            if new:
                self._run_alone(new[0])
            return
        if new:
            self._admit(new)
        if self.running:
            self._step()

    def _admit(self, new: list[Job]) -> None:
        """Prefill the newcomers together, sample their first tokens, merge them into the batch."""
        window = self.gen.cfg.block_size
        for job in new:
            job.sampling.max_new_tokens = max(1, min(job.sampling.max_new_tokens, window - len(job.ids)))
            job._draw = _draw(job.sampling.seed, self.gen.device)
        logits, cache = self.gen.prefill([j.ids for j in new], max(j.sampling.max_new_tokens for j in new))
        picked = self._sample(new, logits)
        # columns for the longest remaining answer, of the running rows and the newcomers alike
        room = max(j.sampling.max_new_tokens - j.generated for j in [*self.running, *new])
        self.cache = cache.compact(room) if self.cache is None else self.cache.merge(cache, room)
        self.running.extend(new)
        self.peak = max(self.peak, len(self.running))
        self._keep([self._emit(j, t) for j, t in zip(new, picked, strict=True)])

    def _step(self) -> None:
        logits = self.gen.step([j._last for j in self.running], self.cache)
        self.steps += 1
        picked = self._sample(self.running, logits)
        self._keep([self._emit(j, t) for j, t in zip(self.running, picked, strict=True)])

    def _sample(self, jobs: list[Job], logits: Any) -> list[int]:
        logits[:, self.gen.banned()] = float("-inf")
        return [sample_token(logits[i], j.sampling, j._draw) for i, j in enumerate(jobs)]

    def _emit(self, job: Job, token: int) -> str | None:
        """Hand ``token`` to the job's sink; the reason it is over, or None if it goes on."""
        if token == self.gen.cfg.eos_id:
            return "stop"
        job.generated += 1
        job._last = token
        if not job.sink.token(token):
            return "stop"
        return "length" if job.generated >= job.sampling.max_new_tokens else None

    def _keep(self, reasons: list[str | None]) -> None:
        """Drop the rows whose reason is set (the batch rows in order of ``self.running``)."""
        offset = len(self.running) - len(reasons)  # reasons cover the last rows
        ended = {offset + i: r for i, r in enumerate(reasons) if r is not None}
        if not ended:
            return
        keep = [i for i in range(len(self.running)) if i not in ended]
        for i, reason in ended.items():
            self.running[i].sink.end(reason)
        self._reshape(keep)

    def _drop(self, jobs: list[Job], reason: str) -> None:
        if not jobs:
            return
        for job in jobs:
            job.sink.end(reason)
        self._reshape([i for i, j in enumerate(self.running) if j not in jobs])

    def _reshape(self, keep: list[int]) -> None:
        self.running = [self.running[i] for i in keep]
        if not self.running or self.cache is None:
            self.cache = None
            return
        room = max(j.sampling.max_new_tokens - j.generated for j in self.running)
        self.cache = self.cache.select(keep).compact(room)

    def _run_alone(self, job: Job) -> None:
        """A model without a batched cache: the job's tokens one at a time."""
        self.running = [job]
        reason = "length"
        for token in self.gen.tokens_from_ids(list(job.ids), job.sampling):
            if job.cancelled or (self._deadline is not None and time.monotonic() >= self._deadline):
                reason = "cancelled" if job.cancelled else "length"
                break
            job.generated += 1
            if not job.sink.token(token):
                reason = "stop"
                break
        else:
            reason = "length" if job.generated >= job.sampling.max_new_tokens else "stop"
        self.running = []
        job.sink.end(reason)

    def _end_all(self, reason: str) -> None:
        for job in [*self.running, *self.waiting]:
            job.sink.end("cancelled" if job.cancelled else reason)
        self.running, self.cache = [], None
        self.waiting.clear()

    def _fail(self, error: Exception, new: list[Job]) -> None:
        import os
        import sys

        if os.environ.get("NLPKIT_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"nlpkit: error: the decode step failed ({error!r})", file=sys.stderr, flush=True)
        for job in {id(j): j for j in [*self.running, *new]}.values():
            job.sink.end("error")
        self.running, self.cache = [], None


BATCH_OPS = ("merge", "select", "compact")  # what a cache needs for rows to join and leave


def _has_batch_ops(gen: Generator) -> bool:
    """Whether the model's cache can take rows in and out of a running batch (a backend whose
    cache cannot still serves, one request at a time)."""
    try:
        probe = gen.model.new_cache(1, 1)
    except Exception:
        return False
    return all(callable(getattr(probe, op, None)) for op in BATCH_OPS)


def _draw(seed: int | None, device: str) -> Any:
    """A torch.Generator for one job: its seed, or a fresh random one."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else int(torch.seed()))
    return g
