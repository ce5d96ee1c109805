"""Bounds on the sizes a model file may claim: a count read from metadata (a GGUF's, a
config.json's) is checked against these before anything is allocated, so a hostile or broken
file fails with one line instead of exhausting memory. The model config (``lm.config``) and
the GGUF conversion (``store.gguf_folder``) share them."""

from __future__ import annotations

# config.json name -> the largest value nlpkit accepts (a width in the hundreds of millions is
# a typo or an attack, not a model)
LIMITS = {"vocab_size": 1 << 22, "block_size": 1 << 20, "n_layer": 1024, "n_embd": 1 << 16, "n_head": 1024,
          "head_dim": 4096, "intermediate_size": 1 << 20}  # fmt: skip
# block_size x head size: 2**27 (1.5 GiB of float32 tables) admits a 1M context with heads of 128
MAX_ROTARY = 1 << 27
