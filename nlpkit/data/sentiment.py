"""Lexicon sentiment judges, rated by people: VADER (Hutto & Gilbert 2014: a lexicon of 7,520
tokens each rated by 10 people, plus rules for negation, intensifiers, "but" and capitals; the
``vaderSentiment`` package's own code) and AFINN (Nielsen 2011: 3,382 words scored -5..5;
a text's score is the sum over the words and phrases it contains, as the ``afinn`` package
computes it). Cheap and independent of any model, so they make honest judges of generated text.

``judge("vader")("What a great movie!") -> {"judge": "vader", "score": 0.6588, "pos": ..., ...}``
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nlpkit.errors import UsageError

JUDGES = ("vader", "afinn")
Judge = Callable[[str], dict[str, Any]]


def judge(name: str, afinn_folder: Path | None = None) -> Judge:
    """The judge called ``name``: a function from a text to its ``"sentiment"`` object.

    VADER needs the ``sentiment`` extra (vaderSentiment); AFINN reads the ``afinn`` dataset from
    the store (``nlpkit data pull afinn``), or ``afinn_folder``."""
    if name == "vader":
        return _vader()
    if name == "afinn":
        if afinn_folder is None:
            from nlpkit.store.assets import asset_dir

            afinn_folder = asset_dir("afinn", kind="dataset")
        return _afinn(read_afinn(afinn_folder / "AFINN-en-165.txt"))
    raise UsageError(f"unknown judge {name!r}", hint=f"use {' or '.join(JUDGES)}")


def _vader() -> Judge:
    from nlpkit.io.deps import require

    module = require("vaderSentiment.vaderSentiment", "-j vader")
    analyzer = module.SentimentIntensityAnalyzer()

    def score(text: str) -> dict[str, Any]:
        s = analyzer.polarity_scores(text)  # compound: normalised to -1..1
        return {"judge": "vader", "score": s["compound"], "pos": s["pos"], "neu": s["neu"], "neg": s["neg"]}

    return score


def read_afinn(path: Path) -> dict[str, int]:
    """AFINN's ``WORD<TAB>SCORE`` lines as a dict (``DataError`` names a bad line)."""
    from nlpkit.errors import DataError, InputMissing

    words: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputMissing(
            "no such file", where=str(path), hint="run `nlpkit data pull --force afinn`"
        ) from None
    for lineno, line in enumerate(lines, 1):
        word, _, score = line.strip().partition("\t")
        try:
            words[word] = int(score)
        except ValueError:
            raise DataError("expected WORD<TAB>SCORE", where=f"{path}:{lineno}") from None
    return words


def _afinn(words: dict[str, int]) -> Judge:
    # Longest first, so "does not work" wins over "work"; whole words only; lower case.
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    pattern = re.compile(rf"\b(?:{alternatives})\b")

    def score(text: str) -> dict[str, Any]:
        found = pattern.findall(re.sub(r"\s+", " ", text).lower())
        return {"judge": "afinn", "score": sum(words[w] for w in found), "words": len(found)}

    return score
