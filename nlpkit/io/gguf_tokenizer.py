"""A Hugging Face tokenizer rebuilt from a GGUF file's ``tokenizer.ggml.*`` metadata."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from nlpkit.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
MAX_GGUF_VOCAB = 1 << 22  # 4M tokens: far above any real vocabulary, a bound on hostile files


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) whose regexes isolate every digit
# before GPT-2's split; the others we know use GPT-2's split alone.
_GGUF_DIGIT_PRE = {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva"}
_GGUF_GPT2_PRE = {"default", "gpt2", "mpt", "olmo", "jais", "trillion"}
# Qwen2's split (its tokenizer.json): like GPT-4's, but one digit at a time; NFC-normalised first
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def from_gguf(path: str | os.PathLike[str]) -> Tokenizer:
    """Rebuild a byte-level BPE tokenizer from a GGUF file's metadata.

    ``tokenizer.ggml.tokens`` and ``.merges`` make the BPE; control tokens (type 3) become
    special tokens, user-defined ones (type 4) added tokens; the pre-tokenizer follows
    ``tokenizer.ggml.pre``. For SmolLM2 this reproduces Hugging Face's tokenizer ids.
    """
    import numpy as np
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    from nlpkit.io.gguf import StringArray, read_metadata
    from nlpkit.io.talk import say

    name = os.fspath(path)
    meta = read_metadata(name)
    kind = meta.get("tokenizer.ggml.model")
    if not isinstance(kind, str) or kind != "gpt2":  # an array here must not reach ``!=``
        raise DataError(
            f"unsupported GGUF tokenizer model {kind if isinstance(kind, str) else type(kind).__name__!r}",
            where=name,
            hint="only byte-level BPE (tokenizer.ggml.model = gpt2) can be rebuilt",
        )
    tokens, merges = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.merges", [])
    if not isinstance(tokens, StringArray) or not isinstance(merges, StringArray | list):
        raise DataError("tokenizer.ggml.tokens and .merges must be string arrays", where=name)
    if len(tokens) > MAX_GGUF_VOCAB:
        raise DataError(f"implausible vocabulary of {len(tokens)} tokens", where=name)
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if vocab.setdefault(t, i) != i:
            raise DataError(f"token {t!r} appears twice (ids {vocab[t]} and {i})", where=name)
    pairs = []
    for j, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        if not sep or not a or not b or " " in b:
            raise DataError(f"merge {j} ({m[:40]!r}) is not two tokens separated by one space", where=name)
        pairs.append((a, b))
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    except Exception as e:
        raise DataError(f"cannot build the BPE ({str(e)[:200]})", where=name) from None
    pre = meta.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str):
        raise DataError(f"tokenizer.ggml.pre must be a string, not {type(pre).__name__}", where=name)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    elif pre in _GGUF_DIGIT_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        if pre not in _GGUF_GPT2_PRE:
            say(f"{name}: pre-tokenizer {pre!r} is approximated by GPT-2's; ids may differ on some text")
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None:
        if not isinstance(types, np.ndarray) or types.dtype.kind not in "iu":
            raise DataError("tokenizer.ggml.token_type must be an array of integers", where=name)
        if len(types) != len(tokens):
            raise DataError("tokenizer.ggml.token_type and tokens differ in length", where=name)
        special = [
            AddedToken(tokens[i], special=True, normalized=False) for i in (types == _CONTROL).nonzero()[0]
        ]
        added = [AddedToken(tokens[i], normalized=False) for i in (types == _USER_DEFINED).nonzero()[0]]
        tok.add_special_tokens(special)
        tok.add_tokens(added)
    return tok
