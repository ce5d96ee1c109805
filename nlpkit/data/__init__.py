"""Datasets for fine-tuning: the pulled datasets as records in the standard shapes with fixed
splits (``datasets``, ``readers``, ``splits``), the shapes themselves (``shapes``), checking a
user's own file (``inspection``), and lexicon sentiment judges (``sentiment``).

Depends on ``errors``, ``io``, ``store`` and ``text``. Modules are imported by name; this package
imports nothing, so ``nlpkit --help`` stays cheap.
"""
