"""A GGUF (v2/v3) reader that is safe on files strangers wrote: metadata and tensors.

GGUF is llama.cpp's model file: a header, typed key/value metadata, tensor descriptions, then
the tensor data. ``read_metadata`` reads the header and the metadata only, which is everything a
tokenizer or a model config needs; ``read_gguf`` also reads the tensor descriptions and maps the
data, decoding (dequantizing) one tensor at a time on request::

    meta = read_metadata("SmolLM2-135M-Instruct.Q4_1.gguf")
    meta["tokenizer.ggml.model"]          # -> 'gpt2'
    len(meta["tokenizer.ggml.tokens"])    # -> 49152 (a lazy StringArray)

    gg = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    gg.tensors["token_embd.weight"]       # -> TensorInfo(shape=(49152, 576), type_name='Q8_0', ...)
    gg.tensor("token_embd.weight")        # -> float32 array (49152, 576)

Hostile input: every count and length is checked against the bytes left in the file *before*
anything is allocated, so memory stays below the file size (numeric arrays are copied once;
string arrays keep one 8-byte offset per element, and each element takes at least 8 bytes of
file; at most ``MAX_TENSORS`` tensor descriptions). Tensor data must lie inside the file,
aligned and without overlaps. Anything malformed is a ``DataError`` (exit 65) naming the file
and byte offset.

Format (little-endian): ``b"GGUF"``, u32 version, u64 tensor count, u64 key/value count, then
per key/value: string key, u32 type, value. A string is a u64 byte length plus UTF-8 bytes; an
array is u32 element type, u64 count, elements. Per tensor: string name, u32 n_dims, n_dims u64
``ne`` (innermost first, so numpy's shape is the reverse), u32 ggml type, u64 offset relative to
the data section, which starts at the next multiple of ``general.alignment`` (default 32).
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from nlpkit.errors import DataError, InputMissing
from nlpkit.io.gguf_quants import GGML_TYPES, SUPPORTED, can_dequantize, dequantize

__all__ = [
    "GGUFFile",
    "GGUFMetadata",
    "StringArray",
    "TensorInfo",
    "dequantize",
    "read_gguf",
    "read_metadata",
]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and is long gone

# value type -> (struct format, numpy dtype); 8 STRING and 9 ARRAY are handled apart
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<B", "<u1"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
_BOOL, _STRING, _ARRAY = 7, 8, 9
# the smallest key/value: an 8-byte key length, a 1-byte key, a 4-byte type, a 1-byte value
_MIN_KV_BYTES = 14
# the smallest tensor description: name length, 1-byte name, n_dims, type, offset
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 4 + 8
MAX_DIMS = 4  # GGML_MAX_DIMS
# Each description costs a few hundred bytes of Python objects for as little as 33 bytes of
# file, so their number is capped; the largest real models have a few thousand tensors.
MAX_TENSORS = 1 << 16
DEFAULT_ALIGNMENT = 32


class StringArray(Sequence[str]):
    """A GGUF array of strings, decoded on access (``len``, indexing, iteration).

    Holds one offset per element into the mapped file rather than a Python ``str`` each,
    so a file of millions of tiny strings cannot inflate memory beyond its own size.
    """

    def __init__(self, path: str, data: mmap.mmap, offsets: array[int]):
        self._path, self._data, self._offsets = path, data, offsets

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        offset = self._offsets[i]
        (n,) = struct.unpack_from("<Q", self._data, offset)
        return _decode(self._data[offset + 8 : offset + 8 + n], self._path, offset)

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"StringArray(len={len(self)})"


@dataclass(frozen=True)
class GGUFMetadata:
    """The header and metadata of one GGUF file. ``meta[key]`` is the value; scalars are
    ``int``/``float``/``bool``/``str``, numeric arrays ``numpy`` arrays, string arrays
    ``StringArray``."""

    path: str
    version: int
    tensor_count: int
    fields: dict[str, Any]
    end: int  # byte offset where the tensor descriptions start

    def __getitem__(self, key: str) -> Any:
        if key not in self.fields:
            raise DataError(f"GGUF metadata has no {key!r}", where=self.path)
        return self.fields[key]

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a GGUF file and how it is encoded."""

    name: str
    shape: tuple[int, ...]  # numpy (row-major) order: ggml's ne reversed, e.g. (n_vocab, n_embd)
    ggml_type: int
    type_name: str  # "F32", "Q4_1", ...
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


class GGUFFile:
    """A GGUF file: its metadata, its tensor descriptions (in file order) and the mapped data.

    ``raw(name)`` is a read-only uint8 view of a tensor's bytes (no copy); ``tensor(name)``
    decodes it into a new float32 array of ``tensors[name].shape``.
    """

    def __init__(self, path: str, metadata: GGUFMetadata, tensors: dict[str, TensorInfo], data: mmap.mmap):
        self.path, self.metadata, self.tensors, self._data = path, metadata, tensors, data

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, {len(self.tensors)} tensors)"

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise DataError(f"GGUF file has no tensor {name!r}", where=self.path)
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        info = self.info(name)
        return np.frombuffer(self._data, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def tensor(self, name: str) -> np.ndarray:
        info = self.info(name)
        if not can_dequantize(info.ggml_type):
            raise DataError(
                f"tensor {name!r} (at byte {info.offset}) is {info.type_name}, which nlpkit cannot "
                f"dequantize; supported: {', '.join(SUPPORTED)}",
                where=self.path,
                hint="convert the model with a supported quantization (e.g. Q8_0, Q4_K_M)",
            )
        return dequantize(self.raw(name), info.ggml_type, info.shape)


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_metadata(path: str | os.PathLike[str]) -> GGUFMetadata:
    """Read the header and every key/value of a GGUF file; ``DataError`` if malformed."""
    name, data = _open(path)
    return _Reader(name, data).read()


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read the metadata and tensor descriptions of a GGUF file and map its data.

    ``DataError`` if anything is malformed: counts that cannot fit, unknown tensor types,
    misaligned, overlapping or out-of-file tensor data. Tensors are decoded lazily.
    """
    name, data = _open(path)
    reader = _Reader(name, data)
    metadata = reader.read()
    return GGUFFile(name, metadata, reader.tensor_infos(metadata), data)


def _open(path: str | os.PathLike[str]) -> tuple[str, mmap.mmap]:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise DataError(f"not a GGUF file ({size} bytes, shorter than a GGUF header)", where=name)
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise InputMissing("no such file", where=name) from None
    except IsADirectoryError:
        raise InputMissing("is a directory, expected a .gguf file", where=name) from None
    return name, data


def _decode(raw: bytes, path: str, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"invalid UTF-8 in a string at byte {offset}", where=path) from None


class _Reader:
    """A cursor over the mapped file; every read checks the bytes that remain first."""

    def __init__(self, path: str, data: mmap.mmap):
        self.path, self.data, self.pos, self.size = path, data, 0, len(data)
        self.alignment_at = 0  # where the general.alignment key/value starts, for error messages

    def fail(self, what: str, at: int | None = None) -> DataError:
        return DataError(
            f"{what} (at byte {self.pos if at is None else at})",
            where=self.path,
            hint="the GGUF file is damaged or not GGUF",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        start = self.pos
        n = self.unpack("<Q", what)
        self.need(n, what)
        self.pos += n
        return _decode(self.data[self.pos - n : self.pos], self.path, start)

    def read(self) -> GGUFMetadata:
        if self.data[:4] != MAGIC:
            raise DataError("not a GGUF file (no GGUF magic)", where=self.path)
        self.pos = 4
        version = self.unpack("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = (
                "big-endian GGUF is not supported" if swapped in SUPPORTED_VERSIONS else "need GGUF v2 or v3"
            )
            raise DataError(f"unsupported GGUF version {version}", where=self.path, hint=hint)
        tensor_count = self.unpack("<Q", "tensor count")
        kv_count = self.unpack("<Q", "metadata count")
        # Counts are bounded by what the rest of the file could possibly describe.
        if kv_count * _MIN_KV_BYTES > self.size - self.pos:
            raise self.fail(f"metadata count {kv_count} cannot fit in the file")
        if tensor_count * _MIN_TENSOR_BYTES > self.size - self.pos:
            raise self.fail(f"tensor count {tensor_count} cannot fit in the file")
        fields: dict[str, Any] = {}
        for _ in range(kv_count):
            start = self.pos
            key = self.string("metadata key")
            if key == "general.alignment":
                self.alignment_at = start
            if key in fields:
                raise self.fail(f"duplicate metadata key {key!r}")
            fields[key] = self.value(self.unpack("<I", "value type"), key)
        return GGUFMetadata(self.path, version, tensor_count, fields, self.pos)

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            value = self.unpack(_SCALARS[vtype][0], key)
            return bool(value) if vtype == _BOOL else value
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY:
            return self.array(key)
        raise self.fail(f"unknown value type {vtype} for {key!r}")

    def array(self, key: str) -> Any:
        etype = self.unpack("<I", f"{key} element type")
        count = self.unpack("<Q", f"{key} length")
        if etype in _SCALARS:
            dtype = np.dtype(_SCALARS[etype][1])
            self.need(count * dtype.itemsize, f"array {key!r} of {count}")
            values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += count * dtype.itemsize
            return values != 0 if etype == _BOOL else values
        if etype == _STRING:
            self.need(count * 8, f"array {key!r} of {count} strings")  # before allocating offsets
            offsets = array("Q", [0]) * count
            pos, size, unpack_from = self.pos, self.size, struct.unpack_from
            for i in range(count):
                if pos + 8 > size:
                    break
                offsets[i] = pos
                pos += 8 + unpack_from("<Q", self.data, pos)[0]
            else:
                if pos <= size:
                    self.pos = pos
                    return StringArray(self.path, self.data, offsets)
            self.pos = min(pos, size)
            raise self.fail(f"array {key!r} runs past the end of the file")
        # Arrays of arrays are legal GGUF but no tokenizer or config uses them.
        raise self.fail(f"unsupported element type {etype} in array {key!r}")

    def tensor_infos(self, meta: GGUFMetadata) -> dict[str, TensorInfo]:
        """Read the tensor descriptions that follow the metadata and check where their data lies."""
        alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
            raise self.fail(
                f"general.alignment must be a power of two, not {alignment!r}", at=self.alignment_at
            )
        if meta.tensor_count > MAX_TENSORS:
            raise self.fail(f"tensor count {meta.tensor_count} is more than nlpkit reads ({MAX_TENSORS})")
        infos: list[tuple[TensorInfo, int]] = []  # (info with a relative offset, where it was described)
        names: set[str] = set()
        for _ in range(meta.tensor_count):
            infos.append(self.tensor_info(names))
        # The data section starts at the first aligned byte after the descriptions.
        data_start = -(-self.pos // alignment) * alignment
        tensors: dict[str, TensorInfo] = {}
        for info, described_at in infos:
            what = f"tensor {info.name!r} (described at byte {described_at})"
            if info.offset % alignment:
                raise self.fail(
                    f"{what} has offset {info.offset}, not a multiple of {alignment}", at=described_at
                )
            start = data_start + info.offset
            if start + info.nbytes > self.size:
                raise self.fail(
                    f"{what} data of {info.nbytes} bytes runs past the end of the file ({self.size} bytes)",
                    at=start,
                )
            tensors[info.name] = TensorInfo(
                info.name, info.shape, info.ggml_type, info.type_name, start, info.nbytes
            )
        ordered = sorted(tensors.values(), key=lambda t: t.offset)
        for before, after in itertools.pairwise(ordered):
            if after.offset < before.offset + before.nbytes:
                raise self.fail(f"tensors {before.name!r} and {after.name!r} overlap", at=after.offset)
        return tensors

    def tensor_info(self, names: set[str]) -> tuple[TensorInfo, int]:
        """One description: string name, u32 n_dims, n_dims u64 ne, u32 type, u64 relative offset."""
        start = self.pos
        name = self.string("tensor name")
        if name in names:
            raise self.fail(f"duplicate tensor name {name!r}", at=start)
        names.add(name)
        n_dims = self.unpack("<I", f"tensor {name!r} dimension count")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"tensor {name!r} has {n_dims} dimensions, expected 1 to {MAX_DIMS}", at=start)
        self.need(8 * n_dims, f"tensor {name!r} dimensions")
        ne = struct.unpack_from(f"<{n_dims}Q", self.data, self.pos)
        if not all(0 < n < 1 << 63 for n in ne):
            raise self.fail(f"tensor {name!r} has an invalid dimension in {list(ne)}")
        self.pos += 8 * n_dims
        ggml_type = self.unpack("<I", f"tensor {name!r} type")
        if ggml_type not in GGML_TYPES:
            raise self.fail(f"tensor {name!r} has unknown type {ggml_type}", at=self.pos - 4)
        type_name, block_size, type_size = GGML_TYPES[ggml_type]
        if ne[0] % block_size:
            raise self.fail(
                f"tensor {name!r} rows of {ne[0]} values are not a multiple of the {type_name} block "
                f"({block_size})",
                at=start,
            )
        count = 1
        for n in ne:  # Python ints: no overflow, and one bound check settles it
            count *= n
        nbytes = count // block_size * type_size
        if nbytes > self.size:
            size = nbytes if nbytes < 1 << 64 else "over 2**64"
            raise self.fail(
                f"tensor {name!r} of shape {list(ne)[::-1]} {type_name} would take {size} bytes, "
                f"more than the whole file ({self.size})",
                at=start,
            )
        offset = self.unpack("<Q", f"tensor {name!r} offset")
        return TensorInfo(name, tuple(reversed(ne)), ggml_type, type_name, offset, nbytes), start
