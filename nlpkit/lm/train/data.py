"""Text for language models: read records, tokenize, pack into blocks, split off validation.

    texts = read_texts(["plays/"])                   # one string per line or JSONL record
    tok = char_tokenizer(texts)                      # or nlpkit.text.tokenizer.load(spec)
    stream = encode_stream(tok, texts)               # int32 ids, records joined by "\n"
    train, val = split_data(stream, model_cfg, train_cfg)
    x, y = train.batch(epoch, np.arange(16))         # (16, block_size) inputs and targets

The encoder-decoder reads ``{"input": ..., "output": ...}`` records instead (``pairs=True``)
and trains on padded (source, decoder input, target) batches (``PairSet``). The whole token
stream is held in memory (4 bytes a token).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from nlpkit.lm.config import ModelConfig
    from nlpkit.lm.train.config import TrainConfig


SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")  # the character tokenizer's first ids
SEPARATOR = "\n"  # joins records in the token stream
IGNORE = -100  # a target that takes no part in the loss


def read_texts(
    paths: Sequence[str], *, field: str = "text", fmt: str = "auto", pairs: bool = False
) -> list[Any]:
    """Texts (or ``(input, output)`` pairs) of every record in files, folders (all their files)
    or ``-``, as a list: training reads them twice (tokenizer, then ids)."""
    from nlpkit.io.records import read_texts as texts

    return list(texts(paths, field, fmt, suffixes=None, pairs=pairs))


def char_tokenizer(texts: Sequence[str]) -> Tokenizer:
    """One token per character seen (sorted by code point, as nanoGPT's shakespeare_char does)
    after <pad> <unk> <bos> <eos>; unseen characters become <unk>. A real tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    chars = sorted(set(SEPARATOR).union(*texts) - set(SPECIALS))
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def special_ids(tok: Tokenizer, add: bool) -> dict[str, int | None]:
    """pad/bos/eos ids, found by their usual names; ``add``: add the missing ones."""
    names = {"pad": ("<pad>", "[PAD]", "<|pad|>"), "bos": ("<bos>", "<s>", "[CLS]", "<|im_start|>"),
             "eos": ("<eos>", "</s>", "[SEP]", "<|endoftext|>", "<|im_end|>")}  # fmt: skip
    ids: dict[str, int | None] = {}
    for role, candidates in names.items():
        ids[role] = next((i for c in candidates if (i := tok.token_to_id(c)) is not None), None)
        if ids[role] is None and add:
            from tokenizers import AddedToken

            tok.add_special_tokens([AddedToken(f"<{role}>", special=True, normalized=False)])
            ids[role] = tok.token_to_id(f"<{role}>")
    return ids


def encode_stream(tok: Tokenizer, texts: Sequence[str], chunk: int = 4096) -> np.ndarray:
    """Every text followed by the separator, tokenized, as one int32 stream."""
    parts = []
    for i in range(0, len(texts), chunk):
        batch = [t + SEPARATOR for t in texts[i : i + chunk]]
        parts += [
            np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(batch, add_special_tokens=False)
        ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


class TokenStream:
    """A token stream cut into (block_size + 1)-token windows. Training: each epoch starts at a
    seeded random offset and takes the windows in a seeded random order (so a data position is
    just (epoch, index)); validation: windows from the start, in order, the last one shorter."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int = 0, train: bool = True):
        self.tokens, self.T, self.seed, self.train = tokens, block_size, seed, train
        self._order: tuple[int, np.ndarray] | None = None

    def _starts(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(0, max(len(self.tokens) - 1, 0), self.T)
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.T)) if len(self.tokens) > 2 * self.T + 1 else 0
            n = (len(self.tokens) - 1 - offset) // self.T
            self._order = (epoch, offset + rng.permutation(n) * self.T)
        return self._order[1]

    def __len__(self) -> int:
        return len(self._starts(0))

    def batch(self, epoch: int, ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        import torch

        starts = self._starts(epoch)[ids]
        T = min(self.T, len(self.tokens) - 1 - int(starts.max()))
        window = self.tokens[starts[:, None] + np.arange(T + 1)]  # (B, T+1)
        w = torch.from_numpy(window.astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Validation batches (full windows, then the shorter last one), ``limit`` batches spread
        evenly over the stream when given."""
        n = len(self)
        ids = np.arange(n)
        if limit is not None and limit * batch_size < n:
            ids = np.unique(np.linspace(0, n - 1, limit * batch_size).astype(np.int64))
        last = len(self.tokens) - 1 - self._starts(0)[-1] < self.T if n else False
        full = ids[ids < n - 1] if last else ids
        for i in range(0, len(full), batch_size):
            yield self.batch(0, full[i : i + batch_size])
        if last and ids[-1] == n - 1:
            yield self.batch(0, ids[-1:])


class PairSet:
    """``(input ids, output ids)`` pairs, padded per batch: (source, decoder input, targets)."""

    def __init__(
        self, pairs: list[tuple[list[int], list[int]]], cfg: ModelConfig, seed: int = 0, train: bool = True
    ):
        self.pairs, self.cfg, self.seed, self.train = pairs, cfg, seed, train

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, epoch: int, ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        import torch

        order = (
            np.random.default_rng([self.seed, epoch]).permutation(len(self))
            if self.train
            else np.arange(len(self))
        )
        chosen = [self.pairs[i] for i in order[ids]]
        S, T = max(len(s) for s, _ in chosen), max(len(t) for _, t in chosen) + 1
        pad, bos, eos = self.cfg.pad_id, self.cfg.bos_id, self.cfg.eos_id
        src = torch.full((len(chosen), S), pad or 0, dtype=torch.long)
        tgt = torch.full((len(chosen), T), pad or 0, dtype=torch.long)
        targets = torch.full((len(chosen), T), IGNORE, dtype=torch.long)
        for row, (s, t) in enumerate(chosen):
            src[row, : len(s)] = torch.tensor(s)
            tgt[row, : len(t) + 1] = torch.tensor([bos, *t])
            targets[row, : len(t) + 1] = torch.tensor([*t, eos])
        return src, tgt, targets

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self) if limit is None else min(len(self), limit * batch_size)
        for i in range(0, n, batch_size):
            yield self.batch(0, np.arange(i, min(i + batch_size, n)))


Dataset = TokenStream | PairSet


def encode_pairs(
    tok: Tokenizer, pairs: Sequence[tuple[str, str]], block_size: int
) -> list[tuple[list[int], list[int]]]:
    """Source ids cut to block_size + eos, output ids cut to block_size - 1 (room for bos/eos)."""
    eos = special_ids(tok, add=False)["eos"]
    if eos is None:
        raise DataError("the tokenizer has no end-of-sequence token (<eos>, </s>, ...)")
    src = tok.encode_batch([s for s, _ in pairs], add_special_tokens=False)
    out = tok.encode_batch([t for _, t in pairs], add_special_tokens=False)
    return [([*s.ids[: block_size - 1], eos], t.ids[: block_size - 1]) for s, t in zip(src, out, strict=True)]


def split_data(data: Any, cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """The first 1 - val_fraction trains, the rest validates (nanoGPT's split)."""
    n = len(data)
    cut = int(n * (1 - train_cfg.val_fraction))
    if isinstance(data, np.ndarray):
        if cut < 2 or n - cut < 2:
            raise DataError(f"only {n} tokens: too little text to hold out a validation split")
        return TokenStream(data[:cut], cfg.block_size, train_cfg.seed), TokenStream(
            data[cut:], cfg.block_size, train=False
        )
    if cut < 1 or cut == n:
        raise DataError(f"only {n} pairs: too few to hold out a validation split")
    return PairSet(data[:cut], cfg, train_cfg.seed), PairSet(data[cut:], cfg, train=False)


def load_data(paths: Sequence[str], tok: Tokenizer, cfg: ModelConfig, field: str, fmt: str) -> Any:
    texts = read_texts(paths, field=field, fmt=fmt, pairs=cfg.arch == "seq2seq")
    return encode_pairs(tok, texts, cfg.block_size) if cfg.arch == "seq2seq" else encode_stream(tok, texts)
