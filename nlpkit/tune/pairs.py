"""Preference pairs as token ids: what reward models and DPO train on.

    pairs, report = read_pairs(["pairs.jsonl"], tok, template, max_length=256)
    data = PairSet(pairs, pad_id=2, seed=1)
    ids, labels = data.batch(epoch, np.arange(4))   # (8, T): the 4 chosen rows, then the 4 rejected

Records are TRL's two preference shapes: ``{"prompt", "chosen", "rejected"}`` as strings
(standard) or as lists of messages (conversational). With a chat template the prompt is the
rendered user turn(s) plus the assistant header and each response the rendered assistant turn
(its end marker included); without one, the response text follows the prompt text and ends
with the end-of-sequence token. ``labels`` are the ids on response tokens and ``IGNORE`` on the
prompt and on padding, so nothing but the responses carries a gradient.

Pairs that cannot teach anything are skipped and counted, never silently: the same response
twice, an empty response, a prompt that leaves no room for a response within ``max_length``.
Responses that do not fit are cut (counted). A record of another shape is refused with its
``FILE:LINE``.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from nlpkit.errors import DataError
from nlpkit.tune.sft import IGNORE, SFTSet, _eos

if TYPE_CHECKING:
    import torch

    from nlpkit.text.chat_template import ChatTemplate

PAIR_SHAPES = ("preference", "preference-chat")


@dataclass
class Pair:
    prompt: np.ndarray  # int32 ids of the rendered prompt
    chosen: np.ndarray  # int32 ids of the preferred response
    rejected: np.ndarray


@dataclass
class PairReport:
    pairs: int = 0
    truncated: int = 0
    tokens: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)

    def line(self) -> str:
        cut = f"; {self.truncated} with a response cut to --max-length" if self.truncated else ""
        skips = "; ".join(f"{n} skipped ({why})" for why, n in self.skipped.most_common())
        return f"{self.pairs} preference pairs, {self.tokens} tokens{cut}" + (f"; {skips}" if skips else "")


def read_pairs(
    paths: Sequence[str], tok: Any, template: ChatTemplate | None, max_length: int
) -> tuple[list[Pair], PairReport]:
    """Every record of ``paths`` (JSONL files or ``-``) as a tokenized pair."""
    from nlpkit.data.shapes import detect, problems
    from nlpkit.io.records import read_records

    eos = None if template is not None else _eos(tok, None)
    report, out = PairReport(), []
    for where, record in read_records(paths, fmt="jsonl", required=False, string=False):
        shape = detect(record)
        if shape not in PAIR_SHAPES:
            got = f"a {shape} record" if shape else "a record of no known shape"
            raise DataError(
                f'{got}: preference training takes {{"prompt", "chosen", "rejected"}} records',
                where=where,
                hint="see `nlpkit data inspect FILE`; `nlpkit data pull rotten-tomatoes` has pairs",
            )
        bad = [p for p in problems(record, shape) if "same" not in p and "empty" not in p]
        if bad:
            raise DataError(f"{shape} record: {bad[0]}", where=where)
        prompt, chosen, rejected = _encode(record, shape, tok, template, eos, where)
        why = _skip_reason(prompt, chosen, rejected, tok, template, max_length)
        if why:
            report.skipped[why] += 1
            continue
        room = max_length - len(prompt)
        if len(chosen) > room or len(rejected) > room:
            report.truncated += 1
            chosen, rejected = chosen[:room], rejected[:room]
            if np.array_equal(chosen, rejected):
                report.skipped["the same response within --max-length"] += 1
                continue
        report.tokens += 2 * len(prompt) + len(chosen) + len(rejected)
        out.append(Pair(prompt, chosen, rejected))
    report.pairs = len(out)
    if not out:
        raise DataError(
            f"no preference pair left to train on ({report.line()})",
            where=", ".join("<stdin>" if p == "-" else p for p in paths),
            hint="each pair needs two different, non-empty replies to a prompt that fits --max-length",
        )
    return out, report


def _skip_reason(
    prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, tok: Any, template: Any, max_length: int
) -> str:
    if len(prompt) >= max_length:
        return "prompt of --max-length tokens or more"
    if np.array_equal(chosen, rejected):
        return "chosen equals rejected"
    if not (_has_text(chosen, tok) and _has_text(rejected, tok)):
        return "an empty response"
    return ""


def _has_text(response: np.ndarray, tok: Any) -> bool:
    """Whether a response holds more than the template's markers and whitespace."""
    return bool(tok.decode(response.tolist(), skip_special_tokens=True).strip())


def _encode(
    record: dict[str, Any], shape: str, tok: Any, template: ChatTemplate | None, eos: int | None, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt, chosen, rejected) ids; the two responses continue the same prompt ids."""
    if template is None:
        if shape != "preference":
            raise DataError("conversational pairs need a model with a chat template", where=where)
        prompt = tok.encode(record["prompt"], add_special_tokens=False).ids
        responses = [
            [*tok.encode(record[k], add_special_tokens=False).ids, eos] for k in ("chosen", "rejected")
        ]
        return _arrays(prompt, *responses)
    messages = _prompt_messages(record, shape)
    prompt = render(tok, template, messages)
    responses = []
    for key in ("chosen", "rejected"):
        reply = record[key] if shape == "preference-chat" else [{"role": "assistant", "content": record[key]}]
        full = render(tok, template, [*messages, *reply], open_turn=False)
        if full[: len(prompt)] != prompt:
            raise DataError(
                "the chat template does not render the prompt as a prefix of the reply", where=where
            )
        responses.append(full[len(prompt) :])
    return _arrays(prompt, *responses)


def _prompt_messages(record: dict[str, Any], shape: str) -> list[dict[str, str]]:
    if shape == "preference-chat":
        return [{"role": m["role"], "content": m["content"]} for m in record["prompt"]]
    return [{"role": "user", "content": record["prompt"]}]


def render(
    tok: Any, template: ChatTemplate, messages: list[dict[str, str]], open_turn: bool = True
) -> list[int]:
    """The conversation's ids; ``open_turn``: end with the assistant header (a prompt)."""
    from nlpkit.text.chat_template import encode_chat

    return encode_chat(tok, template, messages, add_generation_prompt=open_turn)


def _arrays(*rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, c = (np.asarray(r, np.int32) for r in rows)
    return a, b, c


class PairSet(SFTSet):
    """Pairs batched as one right-padded (2B, T) tensor: the B chosen sequences, then the B
    rejected ones (one forward pass serves both). As SFTSet: a seeded permutation per epoch
    for training, the pairs in order for evaluation."""

    def batch(self, epoch: int, ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        import torch

        order = np.random.default_rng([self.seed, epoch]).permutation(len(self)) if self.train else None
        chosen = [cast(Pair, self.examples[int(i if order is None else order[i])]) for i in ids]
        rows = [(p.prompt, p.chosen) for p in chosen] + [(p.prompt, p.rejected) for p in chosen]
        T = max(len(a) + len(b) for a, b in rows)
        x = np.full((len(rows), T), self.pad, np.int64)
        y = np.full((len(rows), T), IGNORE, np.int64)
        for r, (prompt, response) in enumerate(rows):
            n = len(prompt) + len(response)
            x[r, :n] = np.concatenate([prompt, response])
            y[r, len(prompt) : n] = response
        return torch.from_numpy(x), torch.from_numpy(y)


def digest(pairs: Sequence[Pair]) -> str:
    """A digest of the tokenized pairs (a resumed run must train on the same ones)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.prompt.tobytes() + b"|" + p.chosen.tobytes() + b"|" + p.rejected.tobytes() + b";")
    return h.hexdigest()


def evaluate_pairs(run: Any, limit: int) -> dict[str, float]:
    """The objective's loss and numbers, averaged over up to ``limit`` validation batches, as
    ``val_loss`` and ``val_<name>`` (the loop's ``Run.evaluate`` for reward models and DPO)."""
    import torch

    from nlpkit.lm.train.dist import autocast

    model, was_training = run.model, run.model.training
    model.eval()
    sums: dict[str, float] = collections.defaultdict(float)
    n = 0
    with torch.no_grad(), autocast(run.device):
        for cpu_batch in run.val_data.eval_batches(run.cfg.batch_size, limit):
            batch = [t.to(run.device) for t in cpu_batch]
            numbers, loss = model(*batch)
            rows = batch[0].size(0) // 2
            sums["loss"] += float(loss) * rows
            for k, v in numbers.items():
                sums[k] += float(v) * rows
            n += rows
    model.train(was_training)
    return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
