"""Fixed splits: a record's split is decided by a hash of a stable key (a question's text, a
conversation's id, a movie's name), never by its position or a random draw, so the splits are
the same on every run and every machine, and records sharing a key never straddle two splits.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
# percent of keys in each split: 80 / 10 / 10
_BOUNDS = ((80, "train"), (90, "validation"), (100, "test"))


def split_of(dataset: str, key: str) -> str:
    """The split of ``key`` in ``dataset``: SHA-256 of ``"dataset\\0key"``, its first 8 bytes as
    an integer, modulo 100; 0-79 train, 80-89 validation, 90-99 test.

    ``split_of("trivia", "What is the capital of France?") -> "train"``
    """
    digest = hashlib.sha256(f"{dataset}\0{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for bound, name in _BOUNDS if bucket < bound)
