"""Tensors on disk: safetensors written deterministically and atomically, read memory-mapped
after the header has been checked against the file (nothing trusted, no pickles), plus the
provenance metadata every artifact carries and file hashing.

    save_tensors("m.safetensors", {"w": array}, provenance(), kind="model.llama")
    tensors, metadata = load_tensors("m.safetensors")   # read-only arrays over an mmap

    # the same bytes, one tensor in memory at a time: shapes first, each array asked for in turn
    save_tensors_streaming("m.safetensors", [("w", np.float32, (3, 4))], make, provenance(), kind="x")

Part of the pipe contract (the io room).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import mmap
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from nlpkit import __version__
from nlpkit.errors import DataError, InputMissing

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import DTypeLike


_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}  # fmt: skip
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


def provenance(**extra: str) -> dict[str, str]:
    """Metadata every artifact carries: nlpkit version, the command line, plus ``extra``."""
    meta = {"nlpkit.version": __version__, "nlpkit.command": shlex.join(["nlpkit", *sys.argv[1:]])}
    meta.update(extra)
    return meta


def save_tensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str], *, kind: str) -> None:
    """Write a safetensors file (atomically; ``-`` is stdout) with str->str ``metadata``."""
    import numpy as np
    from safetensors.numpy import save

    meta = _checked_metadata(kind, metadata)
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)
    from nlpkit.io.files import open_output_binary

    with open_output_binary(path) as f:
        f.write(_sorted_header(data))


class TensorSpec(NamedTuple):
    """One tensor of ``save_tensors_streaming``, known before its data: name, dtype, shape."""

    name: str
    dtype: DTypeLike
    shape: tuple[int, ...]


def save_tensors_streaming(
    path: str,
    specs: Iterable[TensorSpec | tuple[str, DTypeLike, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    metadata: dict[str, str],
    *,
    kind: str,
) -> None:
    """Write the safetensors file ``save_tensors`` would write, byte for byte, holding one tensor
    at a time: the header is made from ``specs`` (name, dtype, shape) alone and written first,
    then ``produce(name)`` is called once per tensor, in the file's data order, and its bytes
    written before the next is asked for (keep no reference to it: that is the point).

    Each array must have exactly its declared shape and dtype (little-endian, one of
    safetensors' numpy types), else ``ValueError`` and nothing is written; so does a failing
    ``produce``. Atomic like ``save_tensors`` (``-`` is stdout). One difference: a 0-d array
    keeps its shape ``[]`` here, where safetensors' own writer turns it into ``[1]``.
    """
    import numpy as np

    meta = _checked_metadata(kind, metadata)
    codes = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    entries: dict[str, tuple[str, np.dtype[Any], tuple[int, ...]]] = {}
    for name, dtype, shape in specs:
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"bad tensor name {name!r}")
        if name in entries:
            raise ValueError(f"tensor {name!r} is declared twice")
        dt = np.dtype(dtype)
        if dt not in codes:
            raise ValueError(f"tensor {name!r}: safetensors files here hold no {dt}")
        dims = tuple(shape)
        if not all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
        entries[name] = (codes[dt], dt, tuple(int(d) for d in dims))
    rank = _data_order({code for code, _, _ in entries.values()})
    order = sorted(entries, key=lambda n: (rank[entries[n][0]], n))  # safetensors' own data order
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name in order:
        code, dt, dims = entries[name]
        size = math.prod(dims) * dt.itemsize
        header[name] = {"dtype": code, "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    raw = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    raw += b" " * (-len(raw) % 8)
    from nlpkit.io.files import open_output_binary

    with open_output_binary(path) as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name in order:
            _, dt, dims = entries[name]
            arr = produce(name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dt or arr.shape != dims:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"tensor {name!r}: produced {got}, declared {dt} {dims}")
            if arr.size:
                f.write(np.ascontiguousarray(arr).data.cast("B"))  # no copy of a C-ordered array
            del arr  # before the next produce: never two tensors alive here


def _data_order(codes: set[str]) -> dict[str, int]:
    """Where each safetensors dtype code goes in the data section: safetensors lays tensors out by
    dtype (its own ranking, which has changed between versions) and then by name. The ranking is
    read off safetensors itself, by writing one single-value tensor per dtype."""
    import numpy as np
    from safetensors.numpy import save

    if len(codes) < 2:
        return dict.fromkeys(codes, 0)
    probe = save({code: np.zeros(1, _ST_DTYPES[code]) for code in codes})
    n = int.from_bytes(probe[:8], "little")
    header = orjson.loads(probe[8 : 8 + n])
    return {code: header[code]["data_offsets"][0] for code in codes}


def _checked_metadata(kind: str, metadata: dict[str, str]) -> dict[str, str]:
    meta = {"nlpkit.kind": kind, **metadata}
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must be str->str: {bad}")
    return meta


def _sorted_header(data: bytes) -> bytes:
    """safetensors writes metadata in Rust hash order, which changes from run to run: rewrite the
    header with sorted keys (padded with spaces to 8 bytes, as safetensors does) so that the same
    tensors and metadata always give the same bytes."""
    n = int.from_bytes(data[:8], "little")
    header = orjson.dumps(orjson.loads(data[8 : 8 + n]), option=orjson.OPT_SORT_KEYS)
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def read_safetensors_header(path: str, data: bytes | mmap.mmap) -> tuple[dict[str, Any], dict[str, str], int]:
    """Validate a safetensors header against the file's real size before trusting it.

    Returns ``(tensors, metadata, data_start)``. Every way a header can lie (length past the
    end, bad JSON, duplicate names, non-string metadata, offsets outside the file, overlaps,
    a shape that does not match its byte span) is a ``DataError`` naming the file.
    """
    size = len(data)
    if size < 8:
        raise DataError("not a safetensors file (shorter than 8 bytes)", where=path)
    n = int.from_bytes(data[:8], "little")
    if n > size - 8 or n > MAX_HEADER_BYTES:
        raise DataError(f"safetensors header claims {n} bytes but the file has {size - 8}", where=path)
    try:
        header = orjson.loads(bytes(data[8 : 8 + n]))
    except orjson.JSONDecodeError:
        raise DataError("safetensors header is not valid JSON", where=path) from None
    if not isinstance(header, dict):
        raise DataError("safetensors header is not a JSON object", where=path)
    _check_duplicate_keys(bytes(data[8 : 8 + n]), path)
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DataError("safetensors metadata must map strings to strings", where=path)
    start, span = 8 + n, size - 8 - n
    spans = []
    for name, info in header.items():
        spans.append(_check_tensor_entry(path, name, info, span))
    spans.sort()
    for (_, e0, a), (b1, _, b) in itertools.pairwise(spans):
        if b1 < e0:
            raise DataError(f"tensors {a!r} and {b!r} overlap", where=path)
    return header, meta, start


def _check_duplicate_keys(raw: bytes, path: str) -> None:
    import json

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise DataError("safetensors header has duplicate tensor names", where=path)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)


def _check_tensor_entry(path: str, name: str, info: Any, span: int) -> tuple[int, int, str]:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise DataError("entry is not an object", where=where)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ST_DTYPES:
        raise DataError(f"unsupported dtype {dtype!r}", where=where)
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise DataError("bad shape", where=where)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise DataError("bad data_offsets", where=where)
    begin, end = offsets
    if not 0 <= begin <= end <= span:
        raise DataError(f"data_offsets [{begin}, {end}] outside the {span} data bytes", where=where)
    import numpy as np

    if math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize != end - begin:
        raise DataError(f"shape {shape} does not match {end - begin} bytes of {dtype}", where=where)
    return begin, end, name


def load_tensors(path: str, copy: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file memory-mapped (read-only arrays, no copy) after validation;
    ``copy``: each tensor read into its own writable array instead (what a model's weights
    need), so the weights are held once, not once copied plus once in mapped pages."""
    import numpy as np

    try:
        f = open(path, "rb")  # noqa: SIM115 - the mmap keeps its own reference
    except FileNotFoundError:
        raise InputMissing("no such file", where=path) from None
    except IsADirectoryError:
        raise InputMissing("is a directory, expected a .safetensors file", where=path) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise DataError("empty file, not safetensors", where=path)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    header, meta, start = read_safetensors_header(path, mm)
    tensors = {}
    for name, info in header.items():
        begin = info["data_offsets"][0]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        count = math.prod(info["shape"])
        if count == 0:  # frombuffer refuses an offset at the very end of the buffer
            tensors[name] = np.zeros(info["shape"], dtype)
            continue
        if copy:
            arr = np.empty(info["shape"], dtype)
            with open(path, "rb") as f:
                f.seek(start + begin)
                if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != arr.nbytes:  # type: ignore[arg-type]
                    raise DataError(f"tensor {name} is cut short", where=path)
            tensors[name] = arr
            continue
        arr = np.frombuffer(mm, dtype=dtype, count=count, offset=start + begin)
        tensors[name] = arr.reshape(info["shape"])
    return tensors, meta


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_receipt(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A quantized folder's ``quantization.json``: a damaged receipt is bad data (65), a
    missing one 66."""
    import json
    from pathlib import Path

    path = Path(folder) / "quantization.json"
    try:
        receipt = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputMissing(
            "no quantization.json beside model.onnx", where=str(path.parent), hint="quantize the model again"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError("damaged quantization receipt (not JSON)", where=str(path)) from None
    if not isinstance(receipt, dict) or not isinstance(receipt.get("model_sha256"), str):
        raise DataError("damaged quantization receipt (no model_sha256)", where=str(path))
    return receipt


def verified_onnx(folder: str | os.PathLike[str]) -> str:
    """``folder/model.onnx`` after checking it against its receipt's SHA-256 (decoders and
    encoders written by ``nlpkit quantize`` alike): a damaged file is never silently used."""
    path = os.path.join(folder, "model.onnx")
    if sha256_file(path) != read_receipt(folder)["model_sha256"]:
        raise DataError(
            "model.onnx does not match its receipt's SHA-256 (damaged or replaced)",
            where=path,
            hint="quantize the model again",
        )
    return path
