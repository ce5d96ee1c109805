"""The pipe contract and everything that touches bytes: records in/out (``records``), talk on
stderr (``talk``), atomic files, locks and the path walker (``files``), safetensors (``tensors``),
GGUF reading (``gguf``, ``gguf_quants``, ``gguf_tokenizer``), optional dependencies (``deps``).

Depends on ``nlpkit.errors`` only. Modules are imported by name (``from nlpkit.io.records import
read_records``); this package imports nothing, so importing one of them stays cheap.
"""
