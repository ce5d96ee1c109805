"""Sentence embeddings from a BERT-style encoder: mean pooling, L2 normalisation, in ONNX Runtime.

    enc = load_encoder("minilm-l6-v2")          # a named asset, or a BertModel folder
    enc.encode(["A cat.", "A dog."]).shape      # -> (2, 384), float32 unit rows

``backend="onnx"`` (the default when onnxruntime is installed) runs a graph exported once from
the PyTorch encoder (pooling and normalisation inside it), fused by ONNX Runtime's BERT
optimizer, and cached in the store under ``$NLPKIT_HOME/onnx/KEY/``; later loads need neither
torch nor an export. ``backend="torch"`` runs ``nlpkit.bert`` directly.

Texts are tokenized with the folder's ``tokenizer.json`` (truncated to ``max_length`` tokens,
special tokens included, as sentence-transformers does: 256 for all-MiniLM-L6-v2), sorted by
length so each batch pads only to its own longest text, and returned in input order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.embed.config import BertConfig, Runner
from nlpkit.embed.onnx import onnx_runner, quantized_runner
from nlpkit.errors import DataError, UsageError
from nlpkit.store.assets import DEFAULT_ENCODER
from nlpkit.store.resolve import resolve_encoder

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer


DEFAULT_MODEL = DEFAULT_ENCODER
BACKENDS = ("auto", "onnx", "torch")
# sentence-transformers' max_seq_length (sentence_bert_config.json) of the named assets, whose
# folders in the store keep only the weights, tokenizer and configs.
ASSET_MAX_LENGTH = {"minilm-l6-v2": 256}


class SentenceEncoder:
    """Texts -> L2-normalised float32 embeddings (n, dim); built by ``load_encoder``."""

    def __init__(self, name: str, tokenizer: Tokenizer, dim: int, max_length: int, backend: str, run: Runner):
        self.name, self.dim, self.max_length, self.backend = name, dim, max_length, backend
        self.tokenizer = tokenizer
        self._run = run  # (B, T) int64 ids, (B, T) int64 mask -> (B, dim) float32

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, dim={self.dim}, backend={self.backend!r})"

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts`` in batches of ``batch_size``; rows come back in input order.

        ``encode(["a", "b"]) -> array (2, dim)``; an empty list gives ``(0, dim)``.
        """
        import numpy as np

        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
        ids = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]
        lengths = np.array([len(x) for x in ids])
        order = np.argsort(-lengths, kind="stable")  # longest first: padding stays per batch
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            T = int(lengths[rows[0]])
            batch = np.zeros((len(rows), T), np.int64)
            mask = np.zeros((len(rows), T), np.int64)
            for r, i in enumerate(rows):
                batch[r, : lengths[i]] = ids[i]
                mask[r, : lengths[i]] = 1
            out[rows] = self._run(batch, mask)
        return out


def _max_length(folder: Path, positions: int) -> int:
    """sentence-transformers' truncation: sentence_bert_config.json, the asset's, else positions."""
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        try:
            value = json.loads(sbert.read_text()).get("max_seq_length")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise DataError("invalid sentence_bert_config.json", where=str(sbert)) from None
        if isinstance(value, int) and value > 0:
            return min(value, positions)
    manifest = folder / "asset.json"
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text()).get("name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            name = None
        if name in ASSET_MAX_LENGTH:
            return min(ASSET_MAX_LENGTH[name], positions)
    return positions


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The folder's tokenizer.json, truncating to ``max_length`` tokens, padding nothing."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception on a bad file
        raise DataError(f"unreadable tokenizer.json ({str(e)[:200]})", where=str(path)) from None
    tok.no_padding()  # ours pads per batch; the file's fixed 128 would waste work
    tok.enable_truncation(max_length=max_length)
    return tok


def _onnxruntime_available() -> bool:
    from nlpkit.io.deps import is_installed

    return is_installed("onnxruntime")


def load_encoder(spec: str = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu") -> SentenceEncoder:
    """Load a sentence encoder: a named asset (``minilm-l6-v2``) or a BertModel folder.

    ``backend``: ``onnx``, ``torch`` or ``auto`` (onnx when onnxruntime is installed).
    ``device``: ``cpu``, ``cuda`` or ``auto``.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend {backend!r}", hint="use auto, onnx or torch")
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise UsageError(f"unknown --device {device!r}", hint="use cpu, cuda or auto")
    name, folder = resolve_encoder(spec)
    cfg = BertConfig.from_file(folder / "config.json")
    max_length = _max_length(folder, cfg.max_position_embeddings)
    tokenizer = load_tokenizer(folder, max_length)
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise DataError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model {cfg.vocab_size}",
            where=str(folder),
        )
    if backend == "auto":
        backend = "onnx" if _onnxruntime_available() else "torch"
        if backend == "torch":
            from nlpkit.io.talk import say

            say("onnxruntime is not installed: embedding with PyTorch (pip install 'nlpkit[onnx]')")
    if (folder / "model.onnx").is_file():  # quantized by `nlpkit quantize`: its own graph, checked
        if backend == "torch":
            raise UsageError(
                "a quantized encoder runs on ONNX Runtime only", hint="leave out --backend torch"
            )
        run = quantized_runner(folder, device)
        return SentenceEncoder(name, tokenizer, cfg.hidden_size, max_length, "onnx-int8", run)
    run = onnx_runner(folder, device) if backend == "onnx" else torch_runner(folder, device)
    return SentenceEncoder(name, tokenizer, cfg.hidden_size, max_length, backend, run)


def torch_runner(folder: Path, device: str) -> Runner:
    """Run ``nlpkit.bert.SentenceBert`` under ``torch.inference_mode`` on ``device``."""
    from nlpkit.io.deps import import_torch, resolve_device

    torch = import_torch()
    from nlpkit.embed.bert import SentenceBert, load_bert

    dev = resolve_device(device)
    model = SentenceBert(load_bert(folder)).to(dev)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev))
        return out.float().cpu().numpy()

    return run


# --------------------------------------------------------------------------- records


def embed_records(
    encoder: SentenceEncoder,
    records: Iterable[tuple[str, dict[str, Any]]],
    field: str = "text",
    batch_size: int = 32,
    chunk: int | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yield ``(record + {"embedding": row}, row)`` in input order.

    Records are gathered ``chunk`` at a time (default 32 batches) so that length sorting
    keeps padding low while output still streams. ``field`` must hold a string; an empty
    string is embedded like any text (``[CLS] [SEP]``), as sentence-transformers does.
    """
    chunk = chunk or batch_size * 32
    texts: list[str] = []
    held: list[dict[str, Any]] = []
    for where, record in records:
        text = record.get(field)
        if not isinstance(text, str):
            raise DataError(f"field {field!r} must be a string of text", where=where)
        texts.append(text)
        held.append(record)
        if len(texts) >= chunk:
            yield from _embedded(encoder, held, texts, batch_size)
            texts, held = [], []
    if texts:
        yield from _embedded(encoder, held, texts, batch_size)


def _embedded(
    encoder: SentenceEncoder, records: list[dict[str, Any]], texts: list[str], batch_size: int
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    matrix = encoder.encode(texts, batch_size)
    for record, row in zip(records, matrix, strict=True):
        yield {**record, "embedding": row}, row
