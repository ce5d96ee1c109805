"""The ONNX Runtime backend: a quantized model folder (``nlpkit quantize``) that decodes like the
torch Llama, so ``Generator`` (sampling, stop strings, streaming, batching, chat templates) runs
it unchanged.

    model = OnnxDecoder.load("q4/")                 # model.onnx + quantization.json, checked
    cache = model.new_cache(B, max_len)            # KV buffers owned by ONNX Runtime
    logits = model.step(ids, cache)                # (B, vocab); prefill or one token per row

The graph (quantize.graph) takes right-padded rows and per-row lengths; the torch protocol the
Generator speaks is left-padded, so ``__call__`` moves each row's tokens to the left. Keys and
values live in one preallocated buffer per layer, bound as both the past input and the present
output (GroupQueryAttention's shared-buffer mode), so a decode step copies no cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError, Unavailable, UsageError

if TYPE_CHECKING:
    import torch

    from nlpkit.lm.config import ModelConfig

MODEL_FILE = "model.onnx"


def is_onnx_folder(folder: str | Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()


def session_options(threads: int | None = None) -> Any:
    from nlpkit.io.deps import allowed_cores, require

    ort = require("onnxruntime", "a quantized model")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or allowed_cores()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def open_session(path: Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on ``device`` (cpu, cuda, auto); cuda without its provider is 69."""
    from nlpkit.io.deps import require

    ort = require("onnxruntime", "a quantized model")
    available = ort.get_available_providers()
    if device not in ("cpu", "auto", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"unknown --device {device!r}", hint="use cpu, cuda or auto")
    want_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    if want_cuda and "CUDAExecutionProvider" not in available:
        raise Unavailable(
            "--device cuda: ONNX Runtime has no CUDA execution provider here",
            hint="pip install onnxruntime-gpu (in place of onnxruntime), or use --device cpu",
        )
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... on a damaged file
        raise DataError(f"ONNX Runtime cannot load the model ({str(e)[:200]})", where=str(path)) from None
    if want_cuda and "CUDAExecutionProvider" not in sess.get_providers():
        raise Unavailable("--device cuda: the CUDA execution provider did not start", hint="use --device cpu")
    return sess


class OnnxCache:
    """Keys and values of every layer for B rows: ONNX Runtime buffers (B, n_kv, max_len, hs)
    shared by the past input and the present output; ``lengths`` (B,) real tokens per row."""

    def __init__(self, cfg: ModelConfig, B: int, max_len: int, device: str):
        from nlpkit.io.deps import require

        self.cfg = cfg
        ort = require("onnxruntime", "a quantized model")
        self.max_len = min(max_len or cfg.block_size, cfg.block_size)
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        shape = (B, cfg.kv_heads, self.max_len, cfg.hs)
        # on the CPU the buffers are numpy arrays ONNX Runtime writes in place (row operations
        # are numpy slicing); on CUDA they are device buffers
        self.arrays: list[tuple[np.ndarray, np.ndarray]] = []
        if self.device == "cpu":
            self.arrays = [
                (np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in range(cfg.n_layer)
            ]
            wrap = ort.OrtValue.ortvalue_from_numpy
            self.kv = [(wrap(k), wrap(v)) for k, v in self.arrays]
        else:
            self.kv = [
                (ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device),
                 ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device))
                for _ in range(cfg.n_layer)
            ]  # fmt: skip
        self.lengths = np.zeros(B, dtype=np.int64)
        self.binding: Any = None  # the session's IOBinding with these buffers bound (OnnxDecoder.run)
        self.logits = np.zeros((B, 1, cfg.vocab_size), dtype=np.float32)  # decode steps write here

    @property
    def pos(self) -> int:
        """Positions used by the longest row (the Generator stops or restarts at ``max_len``)."""
        return int(self.lengths.max()) if len(self.lengths) else 0

    # ---- continuous batching (nlpkit.serve.engine): rows join and leave a running batch, the
    # same three operations as lm.kv_cache.KVCache. Rows here are right-padded (each row's
    # tokens start at column 0 and GroupQueryAttention writes at its own length), so no
    # realignment is needed: rows are copied, and ``room`` columns are kept free after the longest.

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def select(self, rows: list[int]) -> OnnxCache:
        """Keep only ``rows`` (in that order)."""
        host = self._host()
        out = self._like(len(rows), self.max_len)
        out._fill([(k[rows], v[rows]) for k, v in host], self.lengths[rows])
        return out

    def merge(self, other: OnnxCache, room: int = 0) -> OnnxCache:
        """The rows of ``self`` then those of ``other`` (a fresh prefill), with ``room`` free
        columns after the longest row."""
        width = max(self.pos, other.pos)
        out = self._like(self.rows + other.rows, width + room)
        keep = min(width, out.max_len)
        joined = [
            (
                np.concatenate([ka[:, :, :keep], kb[:, :, :keep]]),
                np.concatenate([va[:, :, :keep], vb[:, :, :keep]]),
            )
            for (ka, va), (kb, vb) in zip(self._host(width), other._host(width), strict=True)
        ]
        out._fill(joined, np.concatenate([self.lengths, other.lengths]))
        return out

    def compact(self, room: int) -> OnnxCache:
        """Make sure ``room`` columns are free after the longest row (self when they are)."""
        if self.pos + room <= self.max_len:
            return self
        out = self._like(self.rows, self.pos + room)
        out._fill(self._host(self.pos), self.lengths)
        return out

    def _like(self, B: int, max_len: int) -> OnnxCache:
        out = OnnxCache.__new__(OnnxCache)
        OnnxCache.__init__(out, self.cfg, B, max_len, self.device)
        return out

    def _host(self, width: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each layer's (k, v) as host arrays, the first ``width`` columns (all when None)."""
        pairs = self.arrays or [(k.numpy(), v.numpy()) for k, v in self.kv]
        return [(k[:, :, :width], v[:, :, :width]) for k, v in pairs] if width is not None else pairs

    def _fill(self, pairs: list[tuple[np.ndarray, np.ndarray]], lengths: np.ndarray) -> None:
        width = min(pairs[0][0].shape[2], self.max_len)
        if self.arrays:
            for (k, v), (pk, pv) in zip(self.arrays, pairs, strict=True):
                k[:, :, :width], v[:, :, :width] = pk[:, :, :width], pv[:, :, :width]
        else:  # device buffers: build them from host arrays padded to max_len
            from nlpkit.io.deps import require

            ort = require("onnxruntime", "a quantized model")
            shape = (len(lengths), self.cfg.kv_heads, self.max_len, self.cfg.hs)
            fresh = []
            for pk, pv in pairs:
                k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
                k[:, :, :width], v[:, :, :width] = pk[:, :, :width], pv[:, :, :width]
                wrap = ort.OrtValue.ortvalue_from_numpy
                fresh.append((wrap(k, self.device, 0), wrap(v, self.device, 0)))
            self.kv = fresh
        self.lengths = np.asarray(lengths, dtype=np.int64).copy()


class OnnxDecoder:
    """A quantized decoder in ONNX Runtime with the torch Llama's generation protocol."""

    is_onnx = True

    def __init__(self, session: Any, cfg: ModelConfig, device: str = "cpu"):
        self.session, self.cfg, self.device = session, cfg, device

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", threads: int | None = None) -> OnnxDecoder:
        """Open ``folder/model.onnx`` after checking it against its receipt's SHA-256."""
        from nlpkit.io.tensors import verified_onnx
        from nlpkit.lm.config import read_config

        folder = Path(folder)
        verified_onnx(folder)
        return cls(open_session(folder / MODEL_FILE, device, threads), read_config(folder), device)

    def new_cache(self, B: int = 1, max_len: int = 0) -> OnnxCache:
        return OnnxCache(self.cfg, B, max_len, self.device)

    def __call__(
        self, idx: torch.Tensor, cache: OnnxCache | None = None, pad_mask: Any = None
    ) -> tuple[Any, None]:
        """Logits (B, 1, vocab) of each row's last real token: left-padded rows (``pad_mask``
        True for real tokens) as the torch model takes them; without a cache, a fresh one."""
        ids = idx.cpu().numpy()
        mask = np.ones(ids.shape, dtype=bool) if pad_mask is None else pad_mask.cpu().numpy().astype(bool)
        rows = [row[m] for row, m in zip(ids, mask, strict=True)]
        if cache is None:
            cache = self.new_cache(len(rows), max(len(r) for r in rows))
        return self.run(rows, cache)[:, None], None

    def step(self, idx: torch.Tensor, cache: OnnxCache) -> torch.Tensor:
        """(B, vocab) logits after appending ``idx`` (B, T) to every row."""
        return self.run(list(idx.cpu().numpy()), cache)

    def run(self, rows: list[np.ndarray], cache: OnnxCache, every: bool = False) -> torch.Tensor:
        """Append each row's new tokens to the cache; logits of each row's last new token
        (``every``: of every new position, (B, T, vocab), rows right-padded)."""
        import torch

        B, T = len(rows), max(len(r) for r in rows)
        new = np.array([len(r) for r in rows], dtype=np.int64)
        if int((cache.lengths + new).max()) > cache.max_len:
            raise UsageError(f"the sequence outgrows the cache of {cache.max_len} positions")
        ids = np.zeros((B, T), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
        total = cache.lengths + new
        mask = (np.arange(int(total.max()))[None] < total[:, None]).astype(np.int64)
        index = np.arange(T)[None].repeat(B, 0) if every else (new - 1)[:, None]
        binding = cache.binding
        if binding is None:  # the KV buffers stay bound for the cache's life: only ids and mask change
            binding = cache.binding = self.session.io_binding()
            binding.bind_output("logits", "cpu")  # first: get_outputs()[0] is the logits
            for i, (k, v) in enumerate(cache.kv):
                binding.bind_ortvalue_input(f"past_key_values.{i}.key", k)
                binding.bind_ortvalue_input(f"past_key_values.{i}.value", v)
                binding.bind_ortvalue_output(f"present.{i}.key", k)
                binding.bind_ortvalue_output(f"present.{i}.value", v)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("logits_index", np.ascontiguousarray(index, dtype=np.int64))
        if every or cache.device != "cpu":
            binding.bind_output("logits", "cpu")
        else:  # one position per row: straight into the cache's own array, no copy
            out = cache.logits
            binding.bind_output("logits", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(binding)
        cache.lengths = total
        if every or cache.device != "cpu":
            logits = torch.from_numpy(binding.get_outputs()[0].numpy())
            return logits if every else logits[:, 0]
        return torch.from_numpy(cache.logits[:, 0].copy())  # a copy: callers keep logits across steps


def eval_onnx_model(
    spec: str, paths: list[str], *, field: str = "text", fmt: str = "auto", device: str = "cpu"
) -> dict[str, Any]:
    """``nlpkit eval`` on a quantized folder: the same windows and counting as the torch path
    (lm.train.evaluate), each window one prefill with every position's logits."""
    import math

    import torch
    from torch.nn import functional as F

    from nlpkit.lm.train.data import TokenStream, load_data
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.tokenizer import load

    folder = resolve_model(spec)
    decoder = OnnxDecoder.load(folder, device)
    cfg = decoder.cfg
    window = min(cfg.block_size, 1024)
    dataset = TokenStream(load_data(paths, load(str(folder)), cfg, field, fmt), window, train=False)
    if len(dataset) == 0:
        raise DataError("too little text to evaluate (fewer than 2 tokens)", where=", ".join(paths))
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in dataset.eval_batches(1):
            logits = decoder.run(list(x.numpy()), decoder.new_cache(x.size(0), x.size(1)), every=True)
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
            ).item()
            count += int((y != -100).sum())
    loss = total / max(count, 1)
    return {"model": spec, "loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
