"""The entry point: the Typer app (``cli.app``) with every command family registered on it.

Each command module registers its commands on ``app`` when imported; ``app`` itself lives in
``cli.app`` so that command modules never import the module that imports them. The order of
``FAMILIES`` is the order of the panels in ``nlpkit --help``.
"""

from __future__ import annotations

import importlib

from nlpkit.cli.app import app

FAMILIES = (
    "vectors",
    "convert",
    "word2vec",
    "tokens",
    "lm",
    "llm",
    "tune",
    "serve",
    "rag",
    "models",
    "data",
)

for _family in FAMILIES:
    importlib.import_module(f"nlpkit.cli.{_family}")


def main() -> None:
    try:
        app(prog_name="nlpkit")
    except OSError as e:  # --help or --version into a full disk or a closed stdout: one line, 74
        import errno
        import os
        import sys

        if isinstance(e, BrokenPipeError) or os.environ.get("NLPKIT_DEBUG", "") not in ("", "0"):
            raise
        if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG):
            print(f"nlpkit: error: <stdout>: cannot write ({e.strerror})", file=sys.stderr, flush=True)
            raise SystemExit(74) from None
        raise
