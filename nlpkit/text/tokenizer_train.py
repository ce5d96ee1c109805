"""Tokenizer training over Hugging Face ``tokenizers``: streamed, and reproducible to the byte.

Five models, all lossless by default (``decode(encode(x)) == x``):

* ``bpe`` (default), ``wordpiece``, ``unigram``: byte-level pre-tokenization (GPT-2's), whose
  256-symbol alphabet is always in the vocabulary, so any text round-trips;
* ``wordlevel``: whole words (byte-level pieces); words outside the vocabulary become ``[UNK]``;
* ``char``: one token per character, with byte fallback (``<0xF0>``...) for unseen characters.

Training streams its input: the trainer keeps a count per *distinct* pre-tokenized word (and
``char`` a count per distinct character), never the text, so memory grows with the vocabulary
of the corpus, not its size (see ``train``). The same corpus and options give the same bytes.

    tok = train(["to be or not to be"] * 10, TrainConfig(model="bpe", vocab_size=300))
    tok.encode("to be").tokens  # -> ['to', 'Ġbe']

Loading, saving (``to_json``), encoding and decoding are in tokenizer.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nlpkit.errors import UsageError
from nlpkit.io.files import expand_paths
from nlpkit.text.tokenizer import read_batches

if TYPE_CHECKING:
    from tokenizers import Tokenizer


MODELS = ("bpe", "wordpiece", "unigram", "wordlevel", "char")
PRE_TOKENIZERS = ("byte-level", "metaspace", "whitespace")
NORMALIZERS = ("none", "nfc", "nfd", "nfkc", "nfkd", "lowercase")
DEFAULT_SPECIALS = {
    "bpe": ["<|endoftext|>"],
    "wordpiece": ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
    "unigram": ["<unk>", "<s>", "</s>"],
    "wordlevel": ["[UNK]", "[PAD]"],
    "char": ["<unk>", "<pad>"],
}
# The unknown token of each model: byte-level BPE never needs one.
DEFAULT_UNK = {"bpe": None, "wordpiece": "[UNK]", "unigram": "<unk>", "wordlevel": "[UNK]", "char": "<unk>"}
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
WORDPIECE_PREFIX = "##"


@dataclass
class TrainConfig:
    """What ``nlpkit tokenize train`` learns; fields mirror the flags."""

    model: str = "bpe"
    vocab_size: int = 8000
    # Pairs (bpe, wordpiece) or words (wordlevel) or characters (char) seen fewer times are
    # not learned. None: 2. Unigram has no such threshold.
    min_frequency: int | None = None
    special_tokens: list[str] | None = None  # None: DEFAULT_SPECIALS[model]
    unk_token: str | None = None  # None: DEFAULT_UNK[model]
    normalizer: str = "none"  # comma-separated, applied in order: "nfkc,lowercase"
    pre_tokenizer: str | None = None  # None: byte-level (char: no pre-tokenizer)
    show_progress: bool = False
    specials: list[str] = field(init=False)
    unk: str | None = field(init=False)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"--model {self.model!r} is not one of {', '.join(MODELS)}")
        for name in self.normalizer.split(","):
            if name not in NORMALIZERS:
                raise UsageError(f"--normalizer {name!r} is not one of {', '.join(NORMALIZERS)}")
        if self.model == "char":
            if self.pre_tokenizer not in (None, "none"):
                raise UsageError("--pre-tokenizer does not apply to --model char")
        elif self.pre_tokenizer is None:
            self.pre_tokenizer = "byte-level"
        elif self.pre_tokenizer not in PRE_TOKENIZERS:
            raise UsageError(
                f"--pre-tokenizer {self.pre_tokenizer!r} is not one of {', '.join(PRE_TOKENIZERS)}"
            )
        if self.min_frequency is not None and self.model == "unigram":
            raise UsageError("--min-frequency does not apply to --model unigram")
        if self.min_frequency is not None and self.min_frequency < 0:
            raise UsageError("--min-frequency must be >= 0")
        self.unk = self.unk_token if self.unk_token is not None else DEFAULT_UNK[self.model]
        if self.unk is None and self.pre_tokenizer != "byte-level":
            self.unk = "<unk>"  # without the byte alphabet, BPE needs a token for unseen symbols
        specials = list(DEFAULT_SPECIALS[self.model] if self.special_tokens is None else self.special_tokens)
        if self.unk is not None and self.unk not in specials:
            specials.insert(0, self.unk)
        if len(set(specials)) != len(specials) or not all(specials):
            raise UsageError("--special-token values must be distinct and non-empty")
        self.specials = specials
        # Byte-level models hold the 256 byte symbols (WordPiece also their 256 "##" forms);
        # char holds 256 byte-fallback tokens.
        if self.model == "char":
            alphabet = 256
        elif self.model == "wordlevel" or self.pre_tokenizer != "byte-level":
            alphabet = 0
        else:
            alphabet = 512 if self.model == "wordpiece" else 256
        needed = len(specials) + alphabet
        if self.vocab_size <= needed:
            raise UsageError(
                f"--vocab-size {self.vocab_size} is too small",
                hint=f"{self.model} with these options needs more than {needed} "
                f"({len(specials)} special tokens" + (f" and {alphabet} byte symbols)" if alphabet else ")"),
            )


# --------------------------------------------------------------------------- training


TextSource = Iterable[str] | Callable[[], Iterable[str]]


def train(texts: TextSource, config: TrainConfig) -> Tokenizer:
    """Learn a tokenizer from ``texts``, streamed: nothing but the trainer's counts is kept.

    Memory bound: the trainer's tables over *distinct* pre-tokenized words (counts, then the
    words' symbols and pair positions while merging), about 1 KB per distinct word (measured:
    Shakespeare's 36k distinct words take 34 MB over the 40 MB of a bare process, for 1x and
    4x the corpus alike; unigram about 1.7x that), plus a few hundred lines in flight; never
    the corpus. So the bound is set by the corpus's vocabulary, not its length; ``char``
    keeps one count per distinct character.

    ``texts`` may be a callable giving a fresh iterable: WordPiece and BPE without byte-level
    pre-tokenization read the corpus twice (once for its alphabet; see ``_seeds``).
    """
    from tokenizers import AddedToken, Tokenizer, models, trainers

    cfg = config
    fresh: Callable[[], Iterable[str]] = texts if callable(texts) else lambda: texts
    min_freq = 2 if cfg.min_frequency is None else cfg.min_frequency
    if cfg.model == "char":
        return _train_char(fresh(), cfg, min_freq)
    common: dict[str, Any] = {"vocab_size": cfg.vocab_size, "show_progress": cfg.show_progress}
    specials = [AddedToken(s, special=True, normalized=False) for s in cfg.specials]
    alphabet = _byte_alphabet() if cfg.pre_tokenizer == "byte-level" else []
    seeds = _seeds(fresh, cfg)
    specials += [AddedToken(s, special=True, normalized=False) for s in seeds]
    model: Any
    trainer: Any
    if cfg.model == "bpe":
        suffix: dict[str, Any] = {"end_of_word_suffix": "</w>"} if cfg.pre_tokenizer == "whitespace" else {}
        model = models.BPE(unk_token=cfg.unk, **suffix)
        trainer = trainers.BpeTrainer(
            **common, **suffix, min_frequency=min_freq, special_tokens=specials, initial_alphabet=alphabet
        )
    elif cfg.model == "wordpiece":
        model = models.WordPiece(unk_token=cfg.unk, max_input_chars_per_word=1 << 30)
        trainer = trainers.WordPieceTrainer(
            **common,
            min_frequency=min_freq,
            special_tokens=specials,
            initial_alphabet=alphabet,
            continuing_subword_prefix=WORDPIECE_PREFIX,
        )
    elif cfg.model == "unigram":
        model = models.Unigram()
        trainer = trainers.UnigramTrainer(
            **common, special_tokens=specials, initial_alphabet=alphabet, unk_token=cfg.unk
        )
    else:
        model = models.WordLevel(unk_token=cfg.unk)
        trainer = trainers.WordLevelTrainer(**common, min_frequency=min_freq, special_tokens=specials)
    tok = Tokenizer(model)
    _set_pipeline(tok, cfg)
    tok.train_from_iterator(fresh(), trainer)
    if seeds:
        tok = _edit_json(tok, lambda d: _unseed(d, set(seeds)))
    if cfg.model == "unigram":
        tok = _edit_json(tok, lambda d: _canonical_unigram(d, len(cfg.specials)))
    return tok


def needs_two_passes(cfg: TrainConfig) -> bool:
    """Whether ``train`` reads its input twice (see ``_seeds``)."""
    seeded = cfg.model == "wordpiece" or (cfg.model == "bpe" and cfg.pre_tokenizer == "whitespace")
    return seeded and cfg.pre_tokenizer != "byte-level"


def _seeds(fresh: Callable[[], Iterable[str]], cfg: TrainConfig) -> list[str]:
    """WordPiece's ``##x`` and BPE's ``x</w>`` forms of every symbol, given to the trainer up
    front as special tokens and demoted after training.

    Why: the trainer numbers the forms it meets in hash-map order, and merge ties are broken
    by those numbers, so without seeding two runs learn different vocabularies. Seeding every
    byte symbol also means no word ever needs [UNK]. Without byte-level pre-tokenization the
    symbols come from a first pass over the corpus.
    """
    if cfg.model == "wordpiece":
        form = WORDPIECE_PREFIX + "{}"
    elif cfg.model == "bpe" and cfg.pre_tokenizer == "whitespace":
        form = "{}</w>"
    else:
        return []
    if cfg.pre_tokenizer == "byte-level":
        units = _byte_alphabet()
    else:
        source = fresh()
        if iter(source) is source:  # a one-shot iterator cannot be read twice
            raise UsageError(
                f"{cfg.model} with --pre-tokenizer {cfg.pre_tokenizer} reads its input twice; pass a callable"
            )
        units = sorted(_count_chars(source, _probe(cfg)).keys() - set(" \t\n\r\f\v"))
        if cfg.pre_tokenizer == "metaspace":
            units = sorted({*units, "▁"})
    return [form.format(c) for c in units if form.format(c) not in cfg.specials]


def _unseed(data: dict[str, Any], seeds: set[str]) -> None:
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in seeds]


def _canonical_unigram(data: dict[str, Any], n_specials: int) -> None:
    """Make the trainer's output independent of hash-map order.

    Alphabet symbols never seen in training get ``min_score + k * 1e-4`` with ``k`` in
    hash-set order; they all get ``min_score`` instead (they only ever compete with each
    other). Scores are rounded to 1e-6 (the EM sums run in hash-map order, so the last bits
    vary) and pieces sorted by (score desc, piece).
    """
    vocab = data["model"]["vocab"]
    body = vocab[n_specials:]
    low = min(s for _, s in body)

    def unseen(piece: str, score: float) -> bool:
        k = (score - low) / 1e-4
        return len(piece) == 1 and abs(k - round(k)) < 1e-3 and round(k) <= 512

    body = [[p, round(low if unseen(p, s) else s, 6)] for p, s in body]
    data["model"]["vocab"] = vocab[:n_specials] + sorted(body, key=lambda x: (-x[1], x[0]))


def _edit_json(tok: Tokenizer, edit: Callable[[dict[str, Any]], None]) -> Tokenizer:
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    edit(data)
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _probe(cfg: TrainConfig) -> Tokenizer:
    from tokenizers import Tokenizer, models

    probe = Tokenizer(models.BPE())
    _set_pipeline(probe, cfg)
    return probe


def _count_chars(texts: Iterable[str], probe: Tokenizer) -> Counter[str]:
    normalize = probe.normalizer.normalize_str if probe.normalizer is not None else None
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(normalize(text) if normalize else text)
    return counts


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _set_pipeline(tok: Tokenizer, cfg: TrainConfig) -> None:
    """Normalizer, pre-tokenizer and the decoder that undoes them."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    norms = [n for n in cfg.normalizer.split(",") if n != "none"]
    if norms:
        table = {
            "nfc": normalizers.NFC,
            "nfd": normalizers.NFD,
            "nfkc": normalizers.NFKC,
            "nfkd": normalizers.NFKD,
            "lowercase": normalizers.Lowercase,
        }
        tok.normalizer = normalizers.Sequence([table[n]() for n in norms])
    pre, wordpiece = cfg.pre_tokenizer, cfg.model == "wordpiece"
    # WordPiece's decoder puts a space before every word-initial piece; byte-level and
    # metaspace pieces carry their own spaces (Ġ, ▁), so those inserted spaces are removed.
    joined = (
        [decoders.WordPiece(WORDPIECE_PREFIX, cleanup=False), decoders.Replace(" ", "")] if wordpiece else []
    )
    if pre == "byte-level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.Sequence([*joined, decoders.ByteLevel()])
    elif pre == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Sequence([*joined, decoders.Metaspace(prepend_scheme="first")])
    elif pre == "whitespace":  # lossy: spacing is not kept; decoding joins words with one space
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        if cfg.model == "bpe":
            tok.decoder = decoders.BPEDecoder(suffix="</w>")
        elif wordpiece:
            tok.decoder = decoders.WordPiece(WORDPIECE_PREFIX)
    else:  # char
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])


def _train_char(texts: Iterable[str], cfg: TrainConfig, min_freq: int) -> Tokenizer:
    """Characters by frequency (ties by code point), after specials and the 256 byte tokens."""
    from tokenizers import AddedToken, Tokenizer, models

    counts = _count_chars(texts, _probe(cfg))
    room = cfg.vocab_size - len(cfg.specials) - len(BYTE_TOKENS)
    chars = [c for c in sorted(counts, key=lambda c: (-counts[c], c)) if counts[c] >= min_freq]
    chars = [c for c in chars if c not in cfg.specials][:room]
    vocab = {t: i for i, t in enumerate([*cfg.specials, *BYTE_TOKENS, *chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=cfg.unk, byte_fallback=True))
    _set_pipeline(tok, cfg)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in cfg.specials])
    return tok


# --------------------------------------------------------------------------- training from files


@dataclass
class CorpusStats:
    records: int = 0
    chars: int = 0


def train_from_paths(
    paths: Iterable[str], config: TrainConfig, *, field: str = "text", fmt: str = "auto"
) -> tuple[Tokenizer, CorpusStats]:
    """``train`` over files, folders (their regular files, sorted) or ``-`` (stdin).

    When the trainer needs two passes (see ``_seeds``), stdin is first copied to
    a temporary file, so memory stays bounded either way.
    """
    import shutil
    import tempfile

    files = expand_paths(paths)
    two_passes = needs_two_passes(config)
    stats = CorpusStats()

    def texts() -> Iterator[str]:
        stats.records = stats.chars = 0
        for batch in read_batches(files, field=field, fmt=fmt):
            stats.records += len(batch.texts)
            stats.chars += sum(map(len, batch.texts))
            yield from batch.texts

    if not (two_passes and "-" in files):
        return train(texts, config), stats
    with tempfile.NamedTemporaryFile(prefix="nlpkit-stdin-") as spool:
        from nlpkit.io.records import open_input

        with open_input("-") as stdin:
            shutil.copyfileobj(stdin, spool)
        spool.flush()
        files = [spool.name if f == "-" else f for f in files]  # errors name the copy
        return train(texts, config), stats
