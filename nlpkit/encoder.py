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
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError, InputMissing, IOFailure, Unavailable, UsageError

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

DEFAULT_MODEL = "minilm-l6-v2"
BACKENDS = ("auto", "onnx", "torch")
# sentence-transformers' max_seq_length (sentence_bert_config.json) of the named assets, whose
# folders in the store keep only the weights, tokenizer and configs.
ASSET_MAX_LENGTH = {"minilm-l6-v2": 256}

ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "relu": None}

Runner = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]


@dataclass
class BertConfig:
    """The keys of a Hugging Face BERT ``config.json`` that shape the network."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self) -> None:
        sizes = (self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads)
        if min(*sizes, self.intermediate_size, self.max_position_embeddings, self.type_vocab_size) < 1:
            raise ValueError("sizes must be positive")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            raise ValueError("only position_embedding_type 'absolute' is supported")

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputMissing(
                "no config.json", where=str(path.parent), hint="a BERT folder needs one"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"invalid config.json ({e})", where=str(path)) from None
        if not isinstance(raw, dict):
            raise DataError("config.json must be a JSON object", where=str(path))
        if raw.get("model_type", "bert") != "bert":
            raise DataError(f"model_type {raw.get('model_type')!r} is not 'bert'", where=str(path))
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError) as e:
            raise DataError(f"unusable BERT config ({e})", where=str(path)) from None


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


# --------------------------------------------------------------------------- loading


def resolve_model(spec: str) -> tuple[str, Path]:
    """A named asset or a folder -> (name, folder); a folder must hold the three files."""
    from nlpkit import store

    if store.is_asset_name(spec):
        folder = store.asset_dir(spec)
        if not (folder / "config.json").is_file():  # glove-6b-50d, smollm2-135m-instruct
            raise UsageError(
                f"{spec} is not a sentence encoder", hint=f"use {DEFAULT_MODEL} or a BERT model folder"
            )
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise InputMissing(
                f"no such model folder or named model {spec!r}",
                hint="give a BERT folder (config.json, model.safetensors, tokenizer.json) "
                f"or {DEFAULT_MODEL}",
            )
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise InputMissing(f"no {needed} in the model folder", where=str(folder))
    return spec, folder


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
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def load_encoder(spec: str = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu") -> SentenceEncoder:
    """Load a sentence encoder: a named asset (``minilm-l6-v2``) or a BertModel folder.

    ``backend``: ``onnx``, ``torch`` or ``auto`` (onnx when onnxruntime is installed).
    ``device``: ``cpu``, ``cuda`` or ``auto``.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend {backend!r}", hint="use auto, onnx or torch")
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise UsageError(f"unknown --device {device!r}", hint="use cpu, cuda or auto")
    name, folder = resolve_model(spec)
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
            from nlpkit.formats import say

            say("onnxruntime is not installed: embedding with PyTorch (pip install 'nlpkit[onnx]')")
    run = onnx_runner(folder, device) if backend == "onnx" else torch_runner(folder, device)
    return SentenceEncoder(name, tokenizer, cfg.hidden_size, max_length, backend, run)


def torch_runner(folder: Path, device: str) -> Runner:
    """Run ``nlpkit.bert.SentenceBert`` under ``torch.inference_mode`` on ``device``."""
    from nlpkit.train import import_torch, resolve_device

    torch = import_torch()
    from nlpkit.bert import SentenceBert, load_bert

    dev = resolve_device(device)
    model = SentenceBert(load_bert(folder)).to(dev)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev))
        return out.float().cpu().numpy()

    return run


def allowed_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_runtime(name: str) -> Any:
    """Import an optional runtime module or raise ``Unavailable`` (69) with the install line."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise Unavailable(f"{name} is not installed", hint="pip install 'nlpkit[onnx]'") from None


# --------------------------------------------------------------------------- ONNX Runtime

EXPORT_VERSION = "1"  # part of the cache key: bump whenever the exported graph changes
OPSET = 17


def onnx_cache_dir(folder: Path) -> Path:
    """``$NLPKIT_HOME/onnx/KEY/``: KEY hashes the weights, config.json and the export recipe."""
    import hashlib

    from nlpkit import store
    from nlpkit.formats import sha256_file

    weights = None
    manifest = folder / "asset.json"
    if manifest.is_file():  # a store asset already knows its hash: skip re-reading 90 MB
        try:
            weights = json.loads(manifest.read_text()).get("files", {}).get("model.safetensors")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            weights = None
    if not isinstance(weights, str):
        weights = sha256_file(folder / "model.safetensors")
    h = hashlib.sha256(f"nlpkit-onnx {EXPORT_VERSION} opset {OPSET}\n{weights}\n".encode())
    h.update((folder / "config.json").read_bytes())
    return store.home() / "onnx" / h.hexdigest()[:32]


def _cached_ok(path: Path) -> bool:
    """The cached graph exists and its SHA-256 matches the receipt written after it."""
    from nlpkit.formats import sha256_file

    try:
        receipt = json.loads(path.with_suffix(".json").read_text())
        return path.stat().st_size == receipt["size"] and sha256_file(path) == receipt["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_onnx(folder: Path) -> tuple[Path, bool]:
    """The cached ONNX graph of ``folder``'s encoder, exported first if missing or damaged.

    Returns ``(path, exported_now)``. Concurrent runs take turns on a lock beside the file,
    so one exports and the others reuse its result.
    """
    from nlpkit.formats import lock_for

    target = onnx_cache_dir(folder) / "model.onnx"
    if _cached_ok(target):
        return target, False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IOFailure(f"cannot create the ONNX cache ({e.strerror})", where=str(target.parent)) from None
    with lock_for(target, wait=True):
        if _cached_ok(target):
            return target, False
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # a killed export's leftovers
            stale.unlink(missing_ok=True)
        export_onnx(folder, target)
    return target, True


def export_onnx(folder: Path, target: Path) -> None:
    """Export ``SentenceBert`` (pooling + normalisation inside the graph), fuse it with ONNX
    Runtime's BERT optimizer where available, and move it into place with a receipt."""
    import time
    import warnings

    from nlpkit.bert import SentenceBert, load_bert
    from nlpkit.formats import say, sha256_file, write_bytes_atomic
    from nlpkit.train import import_torch

    torch = import_torch()
    check_runtime("onnx")
    started = time.monotonic()
    say(f"exporting {folder.name} to ONNX once (cached in {target.parent})")
    model = SentenceBert(load_bert(folder))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    dummy = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    axes = {"batch": 0, "seq": 1}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model,
                dummy,
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["embeddings"],
                dynamic_axes={
                    "input_ids": {v: k for k, v in axes.items()},
                    "attention_mask": {v: k for k, v in axes.items()},
                    "embeddings": {0: "batch"},
                },
                do_constant_folding=True,
            )
        fused = _fuse(tmp, model.bert.cfg.num_attention_heads, model.bert.cfg.hidden_size)
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    receipt = {"sha256": sha, "size": size, "opset": OPSET, "fused": fused, "source": str(folder)}
    write_bytes_atomic(target.with_suffix(".json"), (json.dumps(receipt, indent=2) + "\n").encode())
    say(f"exported in {time.monotonic() - started:.1f}s ({', '.join(fused) or 'no fusions'})")


def _fuse(path: Path, num_heads: int, hidden_size: int) -> list[str]:
    """Rewrite the graph with ONNX Runtime's BERT fusions (Attention, SkipLayerNorm, BiasGelu)
    in place; returns what was fused. A failure keeps the plain graph: slower, same result."""
    from nlpkit.formats import say

    try:
        from onnxruntime.transformers import optimizer

        opt = optimizer.optimize_model(
            str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        stats = opt.get_fused_operator_statistics()
        opt.save_model_to_file(str(path))
    except Exception as e:  # the optimizer is best effort by design
        say(f"ONNX Runtime's BERT fusions failed ({type(e).__name__}: {e}); using the plain graph")
        return []
    return sorted(f"{k}x{v}" for k, v in stats.items() if v)


def onnx_session(path: Path, device: str) -> Any:
    """An InferenceSession with every graph optimisation, one thread per allowed core."""
    ort = check_runtime("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = allowed_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its warnings are not for our users
    available = ort.get_available_providers()
    cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), opts, providers=providers)
    if cuda and "CUDAExecutionProvider" not in session.get_providers():
        raise Unavailable(
            "--device cuda was asked for but ONNX Runtime has no CUDA here",
            hint="pip install onnxruntime-gpu, or use --device cpu",
        )
    return session


def onnx_runner(folder: Path, device: str) -> Runner:
    """Run the cached ONNX graph (exporting it first if needed; a damaged cache is redone once)."""
    check_runtime("onnxruntime")
    path, fresh = ensure_onnx(folder)
    try:
        session = onnx_session(path, device)
    except Unavailable:
        raise
    except Exception as e:
        if fresh:
            raise DataError(f"ONNX Runtime cannot load the exported graph ({e})", where=str(path)) from None
        from nlpkit.formats import say

        say(f"the cached ONNX graph cannot be loaded ({type(e).__name__}); exporting it again")
        path.with_suffix(".json").unlink(missing_ok=True)
        path, _ = ensure_onnx(folder)
        session = onnx_session(path, device)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

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
