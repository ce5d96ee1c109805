"""The one training loop (``loop``) with its config (``config``), data (``data``),
checkpoints (``checkpoint``), distributed setup (``dist``), evaluation (``evaluate``) and
training curves (``curves``).
"""
