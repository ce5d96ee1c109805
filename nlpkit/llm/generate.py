"""Text generation from any nlpkit model folder: sampling, the KV cache loop, streamed text.

    gen = Generator.load("model/")
    for piece in gen.stream("ROMEO:", Sampling(max_new_tokens=100, temperature=0.8, seed=1)):
        print(piece, end="", flush=True)

One token at a time through the model's ``step`` (a KV cache for llama, the recurrent state for
the LSTM, the encoded source for the encoder-decoder, whose prompt is its input). Sampling is
temperature, then top-k, then top-p (nucleus), drawn from a ``torch.Generator`` seeded per
prompt, so a seed gives the same text on every run on the CPU. Text is decoded as it grows;
a piece that ends inside a multi-byte character, or could be the start of a stop string, is
held back until it is complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nlpkit.errors import UsageError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from nlpkit.lm.config import ModelConfig


DTYPES = ("auto", "float32", "float16", "bfloat16")
T = TypeVar("T")


@dataclass
class Sampling:
    """How to pick tokens; the flags mirror the names."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy (always the most likely token)
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p (1: all)
    stop: list[str] = field(default_factory=list)  # end the completion before any of these strings
    seed: int | None = None  # None: a different draw every run

    def for_record(self, i: int) -> Sampling:
        """The settings for the i-th prompt of a stream: seed + i (so each prompt has its own draw)."""
        return Sampling(**{**self.__dict__, "seed": None if self.seed is None else self.seed + i})

    def __post_init__(self) -> None:
        import math

        if not math.isfinite(self.temperature) or not math.isfinite(self.top_p):
            raise UsageError("--temperature and --top-p must be finite numbers")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise UsageError("--seed must fit in 64 bits")
        if self.max_new_tokens < 0 or self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UsageError(
                "--max-new-tokens, --temperature and --top-k must not be negative, --top-p in (0, 1]"
            )
        if any(not s for s in self.stop):
            raise UsageError("--stop strings must not be empty")


def sample_token(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    """One token id from (vocab,) logits: temperature, top-k, top-p, then a draw."""
    import torch

    if s.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / s.temperature
    if s.top_k and s.top_k < logits.numel():
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= s.top_p  # the tokens before reach p already
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class Generator:
    """A loaded model folder (network + tokenizer) that completes prompts.

    Llama models run the prompt (prefill) in float32 and, by default, generate with a
    float16 copy of the weights whose q/k/v and gate/up matrices are fused
    (``dtype="float16"``): decoding one token reads every weight once, so half the bytes is
    about twice the speed on a CPU, and the exact float32 prompt pass keeps the first
    token's logits exact. ``dtype="float32"`` decodes in float32 too.
    """

    def __init__(
        self, model: Any, cfg: ModelConfig, tok: Tokenizer, device: str = "cpu", dtype: str = "auto"
    ):
        self.model, self.cfg, self.tok, self.device = model, cfg, tok, device
        self.decoder = model
        if dtype not in DTYPES:
            raise UsageError(f"unknown --dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
        if getattr(model, "is_onnx", False):  # a quantized model runs in its own precision
            if dtype not in ("auto", "float32"):
                raise UsageError(
                    f"--dtype {dtype} does not apply to a quantized (ONNX Runtime) model",
                    hint="leave --dtype out; the weights are already int4/int8",
                )
            dtype = "float32"
        self.dtype = "float32" if cfg.arch != "llama" or (dtype == "auto" and cfg.n_embd < 256) else dtype
        if self.dtype == "auto":
            self.dtype = "float16"
        if self.dtype != "float32":
            import copy

            import torch

            from nlpkit.lm.kv_cache import fuse_projections, half_matrices

            self.decoder = fuse_projections(half_matrices(copy.deepcopy(model), getattr(torch, self.dtype)))

    @classmethod
    def load(
        cls, spec: str | Path, device: str = "auto", dtype: str = "auto", adapter: str | None = None
    ) -> Generator:
        """A model folder, a ``.gguf`` file or a named model (converted once, see convert.py);
        ``adapter``: a LoRA adapter folder (PEFT layout), merged into the weights before the
        float16 decoding copy is made."""
        from nlpkit.io.deps import import_torch, resolve_device

        import_torch()  # first: a clean "install the torch extra" (69) before anything imports torch
        from nlpkit.lm.model import load_model
        from nlpkit.store.resolve import resolve_model
        from nlpkit.text.tokenizer import load

        folder = resolve_model(str(spec))
        if (folder / "model.onnx").is_file():  # quantized: ONNX Runtime decodes, torch samples
            if adapter:
                raise UsageError(
                    "--adapter needs a PyTorch model folder, not a quantized (ONNX) one",
                    hint="merge it first (`nlpkit lora merge`), then quantize the merged model",
                )
            from nlpkit.llm.onnx_decoder import OnnxDecoder
            from nlpkit.lm.config import read_config

            decoder = OnnxDecoder.load(folder, device)
            return cls(decoder, read_config(folder), load(str(folder)), "cpu", dtype)
        device = resolve_device(device)
        model, cfg = load_model(folder, device)
        if adapter:
            from nlpkit.lm.lora import load_adapter

            load_adapter(model, adapter, merge=True)
        return cls(model, cfg, load(str(folder)), device, dtype)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's ids; an empty prompt starts from the record separator ("\\n") or bos."""
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        return self.fit_ids(ids)

    def fit_ids(self, ids: list[int]) -> list[int]:
        if self.cfg.arch == "seq2seq":
            return [*ids[: self.cfg.block_size - 1], int(self.cfg.eos_id or 0)]
        if not ids:
            newline = self.tok.encode("\n", add_special_tokens=False).ids
            ids = newline[-1:] if newline else [self.cfg.bos_id or 0]
        return ids

    def banned(self) -> list[int]:
        """Padding and the start token are never a continuation."""
        return [i for i in (self.cfg.pad_id, self.cfg.bos_id) if i is not None and i != self.cfg.eos_id]

    def prefill(self, rows: list[list[int]], max_new_tokens: int) -> tuple[torch.Tensor, Any]:
        """Run left-padded prompts through the model: (B, vocab) float32 logits and the cache."""
        import torch

        B, T = len(rows), max(len(r) for r in rows)
        max_len = min(T + max_new_tokens, self.cfg.block_size) if self.cfg.arch == "llama" else 0
        cache = self.model.new_cache(B, max_len)
        pad = int(self.cfg.pad_id or 0)
        idx = torch.tensor([[pad] * (T - len(r)) + r for r in rows], device=self.device)
        if B > 1 and any(len(r) < T for r in rows):
            if self.cfg.arch != "llama":
                raise UsageError("batched prompts of different lengths need a llama model")
            mask = torch.tensor([[False] * (T - len(r)) + [True] * len(r) for r in rows], device=self.device)
            logits = self.model(idx, cache=cache, pad_mask=mask)[0][:, -1]
        else:
            logits = self.model.step(idx, cache)
        if self.decoder is not self.model:
            cache = cache.to(getattr(torch, self.dtype))
        return logits.float(), cache

    def step(self, tokens: list[int], cache: Any) -> torch.Tensor:
        """One new token per row: (B, vocab) float32 logits."""
        import torch

        return self.decoder.step(torch.tensor([[t] for t in tokens], device=self.device), cache).float()

    def tokens(self, prompt: str, s: Sampling) -> Iterator[int]:
        """Sampled token ids until max_new_tokens, the end-of-sequence token (or the caller stops)."""
        return self.tokens_from_ids(self.prompt_ids(prompt), s)

    def tokens_from_ids(self, ids: list[int], s: Sampling) -> Iterator[int]:
        import torch

        generator = torch.Generator(device=self.device)
        generator.manual_seed(s.seed if s.seed is not None else int(torch.seed()))
        window = self.cfg.block_size
        banned = self.banned()
        context = ids[-window:] if self.cfg.arch == "llama" else ids
        with torch.inference_mode():
            logits, cache = self.prefill([context], s.max_new_tokens)
            for n in range(s.max_new_tokens):
                logits[0, banned] = float("-inf")
                token = sample_token(logits[0], s, generator)
                if token == self.cfg.eos_id or (self.cfg.arch == "seq2seq" and n + 1 >= window):
                    return
                yield token
                context.append(token)
                if self.cfg.arch == "llama" and cache.pos >= cache.max_len:  # full: restart on the last half
                    context = context[-(window // 2) :]
                    logits, cache = self.prefill([context], s.max_new_tokens - n - 1)
                else:
                    logits = self.step([token], cache)

    def batch(self, rows: list[list[int]], samplings: list[Sampling]) -> list[list[int]]:
        """Generate for several prompts at once (left-padded, one forward pass per step); each
        row stops at its own end token or max_new_tokens. Rows must fit in the model's window."""
        import torch

        if len(rows) == 1 or self.cfg.arch != "llama":
            return [list(self.tokens_from_ids(r, s)) for r, s in zip(rows, samplings, strict=True)]
        steps = max(s.max_new_tokens for s in samplings)
        limit = self.cfg.block_size - steps
        rows = [r[-limit:] if limit > 0 else r[-1:] for r in rows]
        gens = []
        for s in samplings:
            g = torch.Generator(device=self.device)
            g.manual_seed(s.seed if s.seed is not None else int(torch.seed()))
            gens.append(g)
        out: list[list[int]] = [[] for _ in rows]
        done = [s.max_new_tokens == 0 for s in samplings]
        banned = self.banned()
        with torch.inference_mode():
            logits, cache = self.prefill(rows, steps)
            for _ in range(steps):
                logits[:, banned] = float("-inf")
                picked = []
                for i, s in enumerate(samplings):
                    token = int(self.cfg.eos_id or 0) if done[i] else sample_token(logits[i], s, gens[i])
                    if not done[i]:
                        if token == self.cfg.eos_id:
                            done[i] = True
                        else:
                            out[i].append(token)
                            done[i] = len(out[i]) >= s.max_new_tokens
                    picked.append(token)
                if all(done) or cache.pos >= cache.max_len:
                    break
                logits = self.step(picked, cache)
        return out

    def stream(self, prompt: str, s: Sampling) -> Iterator[str]:
        """The completion as text pieces, ending before the first stop string."""
        base_ids = [] if self.cfg.arch == "seq2seq" else self.tok.encode(prompt, add_special_tokens=False).ids
        return self.pieces(self.tokens(prompt, s), base_ids, s.stop)

    def pieces(self, tokens: Iterator[int], base_ids: list[int], stops: list[str]) -> Iterator[str]:
        """Text pieces of generated ``tokens`` (decoded after ``base_ids``, the prompt), ending
        before the first stop string; a piece that ends inside a multi-byte character, or could
        be the start of a stop string, is held back until it is complete."""
        text = TextStream(self, base_ids, stops)
        for token in tokens:
            piece = text.push(token)
            if piece:
                yield piece
            if text.stopped:
                return
        piece = text.finish()
        if piece:
            yield piece

    def _completion(self, base_ids: list[int], base: str, new: list[int]) -> str:
        """Decode prompt + new tokens and drop the prompt's text (a piece decoded alone may lose
        a leading space)."""
        full = self.tok.decode(base_ids + new)
        return full[len(base) :] if full.startswith(base) else self.tok.decode(new)

    def complete(self, prompt: str, s: Sampling) -> str:
        return "".join(self.stream(prompt, s))


class TextStream:
    """The push side of ``Generator.pieces``: feed tokens one at a time (a server's decode loop
    hands them over as they come), get the text that became safe to show.

        text = TextStream(gen, prompt_ids, ["User:"])
        piece = text.push(token)   # "" while held back; check text.stopped after each push
        rest = text.finish()       # what was held back, once generation has ended
    """

    def __init__(self, gen: Generator, base_ids: list[int], stops: list[str]):
        base_ids = base_ids[-16:]  # enough context for the first piece's spacing; O(new) per token
        self.gen, self.base_ids, self.stops = gen, base_ids, stops
        self.base = gen.tok.decode(base_ids)
        self.new: list[int] = []
        self.done = 0  # characters of the completion already handed out
        self.stopped = False  # a stop string appeared: the completion is over

    def push(self, token: int) -> str:
        self.new.append(token)
        text = self.gen._completion(self.base_ids, self.base, self.new)
        if text.endswith("\ufffd"):  # inside a multi-byte character
            return ""
        hit = min((i for i in (text.find(x) for x in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            self.stopped = True
            piece, self.done = text[self.done : hit], hit
            return piece
        safe = len(text) - _held_back(text, self.stops)
        if safe <= self.done:
            return ""
        piece, self.done = text[self.done : safe], safe
        return piece

    def finish(self) -> str:
        if self.stopped:
            return ""
        text = self.gen._completion(self.base_ids, self.base, self.new)
        piece, self.done = text[self.done :], len(text)
        return piece


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that begins one of ``stops``."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def generate_records(
    gen: Generator,
    records: Iterator[tuple[str, dict[str, Any]]],
    s: Sampling,
    field: str,
    batch_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """Each record with "completion" added (input fields kept), in input order; record i is
    drawn with seed + i. Llama models generate ``batch_size`` records at once."""
    from nlpkit.errors import DataError

    def prompts() -> Iterator[tuple[dict[str, Any], str, Sampling]]:
        for i, (where, record) in enumerate(records):
            prompt = record.get(field)
            if not isinstance(prompt, str):
                raise DataError(f"field {field!r} must be a string", where=where)
            yield record, prompt, s.for_record(i)

    for group in batches(prompts(), batch_size):
        yield from _complete_batch(gen, group)


def batches(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of ``n`` items (the last may be shorter), read lazily. When reading
    an item fails (a bad record), the items before it are still handed out first, so the
    records before a bad line get their output, as everywhere else."""
    group: list[T] = []
    it = iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            break
        except Exception:
            if group:
                yield group
            raise
        group.append(item)
        if len(group) >= n:
            yield group
            group = []
    if group:
        yield group


def _complete_batch(
    gen: Generator, pending: list[tuple[dict[str, Any], str, Sampling]]
) -> Iterator[dict[str, Any]]:
    if len(pending) == 1 or gen.cfg.arch != "llama":
        for record, prompt, s in pending:
            yield record | {"completion": gen.complete(prompt, s)}
        return
    bases = [gen.tok.encode(p, add_special_tokens=False).ids for _, p, _ in pending]
    outs = gen.batch([gen.fit_ids(list(b)) for b in bases], [s for _, _, s in pending])
    for (record, _, s), base_ids, new in zip(pending, bases, outs, strict=True):
        text = gen._completion(base_ids, gen.tok.decode(base_ids), new)
        yield record | {"completion": cut_at_stop(text, s.stop)}


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first of ``stops`` (all of it when none occurs)."""
    hits = [i for i in (text.find(x) for x in stops) if i >= 0]
    return text[: min(hits)] if hits else text
