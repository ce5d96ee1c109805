"""Supervised fine-tuning data: records in the standard shapes as token ids with a loss mask.

    examples, report = read_examples(["train.jsonl"], tok, template, max_length=512)
    data = SFTSet(examples, pad_id=2, seed=1)
    x, y = data.batch(epoch, np.arange(4))     # (4, T) inputs and targets, -100 where masked

Shapes (``nlpkit data show`` writes them): ``instruction`` and ``messages`` (or ShareGPT's
``conversations``) records are rendered with the model's chat template and the loss covers the
assistant turns only (every prompt token is masked); ``completion`` records (``{"text"}``) are
trained on every token, followed by the end-of-sequence token. Any other shape is refused with
its ``FILE:LINE``.

An example longer than ``max_length`` is cut to its first ``max_length`` tokens (counted and
reported); one whose first response token lies beyond the cut has nothing to learn from and is
dropped (counted too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

    from nlpkit.text.chat_template import ChatTemplate

IGNORE = -100  # a target that takes no part in the loss
CHAT_SHAPES = ("instruction", "conversations", "sharegpt")


@dataclass
class Example:
    ids: np.ndarray  # int32 (n,)
    labels: np.ndarray  # int32 (n,): the token where trained, IGNORE where masked


@dataclass
class Report:
    """What reading the data did, for the log."""

    examples: int = 0
    chat: int = 0  # examples trained on their responses only
    completion: int = 0  # examples trained on every token
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = []
        if self.chat:
            what.append(f"{self.chat} chat examples: loss on response tokens only (prompt tokens masked)")
        if self.completion:
            what.append(f"{self.completion} completion examples: loss on all tokens")
        cut = f"; {self.truncated} truncated to --max-length" if self.truncated else ""
        drop = f"; {self.dropped} dropped (no response token within --max-length)" if self.dropped else ""
        return f"{'; '.join(what)}; {self.trained_tokens} of {self.tokens} tokens trained{cut}{drop}"


def read_examples(
    paths: Sequence[str], tok: Any, template: ChatTemplate | None, max_length: int
) -> tuple[list[Example], Report]:
    """Every record of ``paths`` (JSONL files or ``-``) as a masked example."""
    from nlpkit.data.shapes import detect, problems
    from nlpkit.io.records import read_records

    eos = _eos(tok, template)
    report, out = Report(), []
    for where, record in read_records(paths, fmt="jsonl", required=False, string=False):
        shape = detect(record)
        if shape not in (*CHAT_SHAPES, "completion"):
            got = f"a {shape} record" if shape else "a record of no known shape"
            raise DataError(
                f"{got}: fine-tuning takes instruction, messages or completion (text) records",
                where=where,
                hint="see `nlpkit data inspect FILE` (--to SHAPE rewrites a file)",
            )
        bad = problems(record, shape)
        if bad:
            raise DataError(f"{shape} record: {bad[0]}", where=where)
        if shape == "completion":
            ids = [*tok.encode(record["text"], add_special_tokens=False).ids, eos]
            example = Example(np.asarray(ids, np.int32), np.asarray(ids, np.int32))
            report.completion += 1
        else:
            if template is None:
                raise UsageError(
                    "the model has no chat template to render instruction or messages data",
                    where=where,
                    hint='give completion ({"text"}) records, or a chat model',
                )
            example = _chat_example(record, shape, tok, template, where)
            report.chat += 1
        if len(example.ids) > max_length:
            report.truncated += 1
            example = Example(example.ids[:max_length], example.labels[:max_length])
        trained = int((example.labels[1:] != IGNORE).sum())
        if trained == 0:
            report.dropped += 1
            continue
        report.tokens += len(example.ids)
        report.trained_tokens += trained
        out.append(example)
    report.examples = len(out)
    if not out:
        raise DataError(
            "no example left to train on",
            where=", ".join("<stdin>" if p == "-" else p for p in paths),
            hint="raise --max-length or give longer responses",
        )
    return out, report


def _eos(tok: Any, template: ChatTemplate | None) -> int:
    for name in (template.eos_token if template else "", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>"):
        if name and (i := tok.token_to_id(name)) is not None:
            return int(i)
    raise DataError("the tokenizer has no end-of-sequence token (<|endoftext|>, </s>, ...)")


def _chat_example(
    record: dict[str, Any], shape: str, tok: Any, template: ChatTemplate, where: str
) -> Example:
    """The rendered conversation; labels on each assistant turn's tokens (its end marker included)."""
    from nlpkit.data.shapes import to_messages
    from nlpkit.text.chat_template import encode_chat

    messages = to_messages(record, shape)
    ids = encode_chat(tok, template, messages, add_generation_prompt=False)
    labels = np.full(len(ids), IGNORE, np.int32)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(encode_chat(tok, template, messages[:i], add_generation_prompt=True))
        end = len(encode_chat(tok, template, messages[: i + 1], add_generation_prompt=False))
        if end > len(ids) or start >= end:
            raise DataError("the chat template does not render the conversation turn by turn", where=where)
        labels[start:end] = ids[start:end]
    return Example(np.asarray(ids, np.int32), labels)


class SFTSet:
    """Examples padded per batch (right padding: the causal mask keeps real tokens exact) as
    (inputs, targets) shifted by one. Training takes a seeded permutation per epoch, so a data
    position is just (epoch, index); evaluation takes the examples in order."""

    def __init__(self, examples: list[Example], pad_id: int, seed: int = 0, train: bool = True):
        self.examples, self.pad, self.seed, self.train = examples, pad_id, seed, train

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, epoch: int, ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        import torch

        order = np.random.default_rng([self.seed, epoch]).permutation(len(self)) if self.train else None
        chosen = [self.examples[int(i if order is None else order[i])] for i in ids]
        T = max(len(e.ids) for e in chosen) - 1
        x = np.full((len(chosen), T), self.pad, np.int64)
        y = np.full((len(chosen), T), IGNORE, np.int64)
        for row, e in enumerate(chosen):
            n = len(e.ids) - 1
            x[row, :n], y[row, :n] = e.ids[:-1], e.labels[1:]
        return torch.from_numpy(x), torch.from_numpy(y)

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self) if limit is None else min(len(self), limit * batch_size)
        for i in range(0, n, batch_size):
            yield self.batch(0, np.arange(i, min(i + batch_size, n)))


def digest(examples: Sequence[Example]) -> str:
    """A digest of the tokenized data (a resumed run must train on the same examples)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.ids.tobytes() + b"|" + e.labels.tobytes() + b";")
    return h.hexdigest()
