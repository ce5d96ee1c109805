"""The quality receipt of a quantized model: what the int4/int8 weights cost against the float
model, measured on the spot.

* perplexity before and after on held-out text, scored in the same windows on both sides
  (default: the docstrings of a fixed list of Python standard-library modules, text no nlpkit
  command trains on; ``--eval-text FILE`` for your own);
* greedy-token agreement on fixed prompts: the float model's greedy continuation, and the share
  of its tokens the quantized model also ranks first at the same positions (teacher-forced),
  plus how many prompts give the identical free-running greedy text;
* prefill and decode tokens/s before (the torch path nlpkit uses for the folder) and after
  (ONNX Runtime) on one 200-token prompt: a quick look; ``bench/bench_quantize.py`` measures.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from nlpkit.errors import DataError

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n",
    "Water boils at a temperature of",
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "In 1969, the first humans",
    "import numpy as np\n\n",
    "The largest planet in the solar system is",
)
NEW_TOKENS = 32
EVAL_TOKENS = 4096
STDLIB_MODULES = ("json", "argparse", "collections", "itertools", "functools", "pathlib", "subprocess",
                  "logging", "datetime", "csv", "sqlite3", "threading", "shutil", "tempfile")  # fmt: skip
TOLERANCE = {4: 0.03, 8: 0.01}  # the perplexity rise a receipt accepts without calling it a regression


def default_eval_text() -> tuple[str, str]:
    """(name, text): module and public docstrings of ``STDLIB_MODULES``, in a fixed order."""
    import importlib
    import inspect
    import sys

    parts = []
    for name in STDLIB_MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                parts.append(inspect.getdoc(obj) or "")
    version = ".".join(map(str, sys.version_info[:2]))
    return f"python{version}-stdlib-docstrings", "\n\n".join(p for p in parts if p)


def measure(src: Path, quantized: Path, bits: int, eval_text: str | None, device: str) -> dict[str, Any]:
    """The receipt's measured half: perplexity, agreement, speed, and the verdict in words."""
    import torch

    from nlpkit.io.talk import say
    from nlpkit.llm.generate import Generator

    name, text = _eval_text(eval_text)
    before = Generator.load(src, device, "float32")  # the float model: perplexity, greedy reference
    fast = Generator(before.model, before.cfg, before.tok, before.device, "auto")  # nlpkit's torch decoding
    after = Generator.load(quantized, device)
    ids = before.tok.encode(text, add_special_tokens=False).ids[:EVAL_TOKENS]
    if len(ids) < 64:
        raise DataError(f"the evaluation text is {len(ids)} tokens; give at least 64", where=name)
    say(f"receipt: perplexity on {len(ids)} tokens of {name}...")
    with torch.inference_mode():
        ppl_before = _perplexity(lambda x: before.model(x)[0], ids, before.cfg.block_size)
        ppl_after = _perplexity(lambda x: _onnx_logits(after, x), ids, after.cfg.block_size)
        say("receipt: greedy agreement and speed...")
        agree = _agreement(before, after)
        speed = {"before": _speed(fast, ids), "after": _speed(after, ids)}
    rise = ppl_after / ppl_before - 1
    problems = []
    if rise > TOLERANCE[bits]:
        problems.append(f"perplexity rose {rise:+.1%}, over the {TOLERANCE[bits]:.0%} int{bits} allows")
    if agree["token_agreement"] < 0.9:
        problems.append(f"only {agree['token_agreement']:.0%} of the float model's greedy tokens agree")
    if speed["after"]["decode_tok_s"] < speed["before"]["decode_tok_s"]:
        problems.append("decoding is slower than the float model's")
    verdict = ("REGRESSION: " + "; ".join(problems)) if problems else (
        f"ok: perplexity {rise:+.2%} (within {TOLERANCE[bits]:.0%}), {agree['token_agreement']:.1%} greedy "
        f"tokens agree, decode {speed['after']['decode_tok_s'] / speed['before']['decode_tok_s']:.2f}x"
    )  # fmt: skip
    return {
        "eval_text": name,
        "eval_tokens": len(ids),
        "perplexity_before": round(ppl_before, 4),
        "perplexity_after": round(ppl_after, 4),
        "perplexity_change": round(rise, 5),
        **agree,
        "speed": speed,
        "verdict": verdict,
    }


def _eval_text(path: str | None) -> tuple[str, str]:
    if path is None:
        return default_eval_text()
    from nlpkit.io.records import read_texts

    return path, "\n".join(read_texts([path], suffixes=None))


def _onnx_logits(gen: Any, x: Any) -> Any:
    decoder = gen.model
    return decoder.run(list(x.numpy()), decoder.new_cache(x.size(0), x.size(1)), every=True)


def _perplexity(logits_fn: Any, ids: list[int], block_size: int, window: int = 1024) -> float:
    """exp(mean cross-entropy) over non-overlapping windows, the same windows for every model."""
    import torch
    from torch.nn import functional as F

    window = min(window, block_size)
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window + 1]])
        if chunk.size(1) < 2:
            break
        logits = logits_fn(chunk[:, :-1])
        total += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
        count += chunk.size(1) - 1
    return math.exp(total / count)


def _agreement(before: Any, after: Any) -> dict[str, Any]:
    import torch

    from nlpkit.llm.generate import Sampling

    same_tokens = total = identical = 0
    for prompt in PROMPTS:
        ids = before.prompt_ids(prompt)[: before.cfg.block_size // 2]
        greedy = Sampling(max_new_tokens=min(NEW_TOKENS, before.cfg.block_size - len(ids) - 1), temperature=0)
        ref = list(before.tokens_from_ids(list(ids), greedy))
        if not ref:
            continue
        seq = torch.tensor([ids + ref[:-1]])
        ranked = _onnx_logits(after, seq)[0, len(ids) - 1 :].argmax(-1).tolist()
        same_tokens += sum(int(a == b) for a, b in zip(ranked, ref, strict=True))
        total += len(ref)
        identical += int(list(after.tokens_from_ids(list(ids), greedy)) == ref)
    return {
        "agreement_prompts": len(PROMPTS),
        "token_agreement": round(same_tokens / max(total, 1), 4),
        "identical_greedy_texts": identical,
    }


def _speed(gen: Any, ids: list[int], prompt_len: int = 200, new: int = 64) -> dict[str, float]:
    from nlpkit.llm.generate import Sampling

    prompt_len = min(prompt_len, gen.cfg.block_size // 2)
    new = min(new, gen.cfg.block_size - prompt_len - 1)
    prompt = ids[:prompt_len]
    t0 = time.perf_counter()
    gen.prefill([prompt], new)
    t1 = time.perf_counter()
    steps = list(gen.tokens_from_ids(list(prompt), Sampling(max_new_tokens=new, temperature=0)))
    t2 = time.perf_counter()
    decode_s = max(t2 - t1 - (t1 - t0), 1e-9)  # tokens_from_ids prefills once more: take it out
    return {
        "prefill_tok_s": round(len(prompt) / (t1 - t0), 1),
        "decode_tok_s": round(len(steps) / decode_s, 1),
    }
