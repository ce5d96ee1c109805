"""Pretrained LLMs as a library: generation (``generate``), chat (``chat``), export for
transformers (``export``). The CLI and the server both call it.
"""
