"""The entry point: the Typer app (``cli.app``) with every command family registered on it.

Each command module registers its commands on ``app`` when imported; ``app`` itself lives in
``cli.app`` so that command modules never import the module that imports them. The order of
``FAMILIES`` is the order of the panels in ``nlpkit --help``.
"""

from __future__ import annotations

import importlib

from nlpkit.cli.app import app

FAMILIES = ("vectors", "convert", "word2vec", "tokens", "lm", "llm", "quantize", "lora", "rag", "models",
            "data")  # fmt: skip

for _family in FAMILIES:
    importlib.import_module(f"nlpkit.cli.{_family}")


def main() -> None:
    app(prog_name="nlpkit")
