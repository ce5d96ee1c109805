"""GGML tensor types and their dequantization to float32, in vectorized numpy.

A quantized GGML tensor is a sequence of fixed-size *blocks*, each holding ``block_size``
values of one row in ``type_size`` bytes: scales (f16) plus packed small integers. The layouts
below follow ``block_q*`` in llama.cpp's ``ggml-common.h`` and the reference
``dequantize_row_q*`` functions in ``ggml-quants.c``; each function here takes every block of a
tensor at once, as a ``(n_blocks, type_size)`` uint8 array, and returns ``(n_blocks, block_size)``
float32 values, doing the float arithmetic in the same order as the C code so results are
bit-identical to llama.cpp (and to the ``gguf`` package)::

    dequantize(raw_bytes, GGML_TYPES_BY_NAME["Q4_1"], (576, 1536))  # -> float32 (576, 1536)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nlpkit.errors import DataError

QK_K = 256  # values per super-block of the k-quants

# id -> (name, values per block, bytes per block), from ggml.h's ggml_type and ggml_type_traits.
# Ids missing here (4, 5, 31-33, 36-38) were removed from ggml and are rejected as unknown.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", QK_K, 84),
    11: ("Q3_K", QK_K, 110),
    12: ("Q4_K", QK_K, 144),
    13: ("Q5_K", QK_K, 176),
    14: ("Q6_K", QK_K, 210),
    15: ("Q8_K", QK_K, 292),
    16: ("IQ2_XXS", QK_K, 66),
    17: ("IQ2_XS", QK_K, 74),
    18: ("IQ3_XXS", QK_K, 98),
    19: ("IQ1_S", QK_K, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", QK_K, 110),
    22: ("IQ2_S", QK_K, 82),
    23: ("IQ4_XS", QK_K, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", QK_K, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", QK_K, 54),
    35: ("TQ2_0", QK_K, 66),
    39: ("MXFP4", 32, 17),
}
GGML_TYPES_BY_NAME = {name: i for i, (name, _, _) in GGML_TYPES.items()}

F16, F32 = np.dtype("<f2"), np.dtype("<f4")
_NIBBLES = np.array([0, 4], dtype=np.uint8)  # shifts for the low and high 4 bits of a byte
_CRUMBS = np.array([0, 2, 4, 6], dtype=np.uint8)  # shifts for the four 2-bit fields of a byte
_BITS = np.arange(8, dtype=np.uint8)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The f16 at byte ``start`` of every block, as a float32 column ``(n, 1)``."""
    return blocks[:, start : start + 2].view(F16).astype(np.float32)


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """Split ``(n, k * width)`` bytes into ``(n, 2k, width)`` 4-bit values: each run of ``width``
    bytes gives ``width`` low nibbles then ``width`` high nibbles (the layout of every 4-bit type)."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, width) >> _NIBBLES.reshape(1, 1, 2, 1)
    return (q & np.uint8(0x0F)).reshape(n, -1, width)


def _q4_0(b: np.ndarray) -> np.ndarray:  # d: f16, qs: 16 bytes; x = d * (q - 8)
    q = _nibbles(b[:, 2:], 16).reshape(len(b), 32)
    return _f16(b, 0) * (q.astype(np.float32) - np.float32(8))


def _q4_1(b: np.ndarray) -> np.ndarray:  # d, m: f16, qs: 16 bytes; x = d * q + m
    q = _nibbles(b[:, 4:], 16).reshape(len(b), 32)
    return _f16(b, 0) * q.astype(np.float32) + _f16(b, 2)


def _q5_high(qh: np.ndarray) -> np.ndarray:
    """The fifth bits of Q5_0/Q5_1: a little-endian u32 whose bit j belongs to value j."""
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def _q5_0(b: np.ndarray) -> np.ndarray:  # d: f16, qh: u32, qs: 16 bytes; x = d * (q - 16)
    q = _nibbles(b[:, 6:], 16).reshape(len(b), 32) | _q5_high(b[:, 2:6])
    return _f16(b, 0) * (q.astype(np.float32) - np.float32(16))


def _q5_1(b: np.ndarray) -> np.ndarray:  # d, m: f16, qh: u32, qs: 16 bytes; x = d * q + m
    q = _nibbles(b[:, 8:], 16).reshape(len(b), 32) | _q5_high(b[:, 4:8])
    return _f16(b, 0) * q.astype(np.float32) + _f16(b, 2)


def _q8_0(b: np.ndarray) -> np.ndarray:  # d: f16, qs: 32 int8; x = d * q
    return _f16(b, 0) * b[:, 2:].view(np.int8).astype(np.float32)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12 scale bytes of Q4_K/Q5_K into 8 six-bit scales and 8 six-bit mins
    (``get_scale_min_k4``): bytes 0-3 hold scales 0-3, bytes 4-7 mins 0-3, each with two spare
    top bits; bytes 8-11 hold the low 4 bits of scales/mins 4-7, the spare bits their top 2."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q2_k(b: np.ndarray) -> np.ndarray:
    # scales: 16 bytes (4-bit scale | 4-bit min per 16 values), qs: 64 bytes, d, dmin: f16.
    # Value i comes from byte 32 * (i // 128) + i % 32, bits 2 * (i // 32 % 4).
    n = len(b)
    scales = b[:, :16]
    dl = (_f16(b, 80) * (scales & 0x0F).astype(np.float32))[:, :, None]
    ml = (_f16(b, 82) * (scales >> 4).astype(np.float32))[:, :, None]
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _CRUMBS.reshape(1, 1, 4, 1)) & np.uint8(3)
    return (dl * q.reshape(n, 16, 16).astype(np.float32) - ml).reshape(n, QK_K)


def _q3_k(b: np.ndarray) -> np.ndarray:
    # hmask: 32 bytes, qs: 64 bytes, scales: 12 bytes (16 six-bit scales), d: f16.
    # x = d * (scale - 32) * (q2 - (0 if the hmask bit is set else 4)).
    n = len(b)
    s = b[:, 96:108]
    low = np.concatenate([s[:, :8] & 0x0F, s[:, :8] >> 4], axis=1)  # scales 0-7, then 8-15
    high = (s[:, None, 8:12] >> _CRUMBS.reshape(1, 4, 1)) & np.uint8(3)  # scale 4g + k: byte k, bits 2g
    scales = (low | (high.reshape(n, 16) << 4)).astype(np.float32) - np.float32(32)
    dl = (_f16(b, 108) * scales)[:, :, None]
    low2 = (b[:, 32:96].reshape(n, 2, 1, 32) >> _CRUMBS.reshape(1, 1, 4, 1)) & np.uint8(3)
    h = (b[:, None, :32] >> _BITS.reshape(1, 8, 1)) & np.uint8(1)  # value i: byte i % 32, bit i // 32
    q = low2.reshape(n, 8, 32).astype(np.int8) - ((h ^ np.uint8(1)) << 2).astype(np.int8)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def _q4_k(b: np.ndarray) -> np.ndarray:
    # d, dmin: f16, scales: 12 bytes, qs: 128 bytes; 8 sub-blocks of 32, x = d*sc * q - dmin*m
    n = len(b)
    sc, mn = _scale_min_k4(b[:, 4:16])
    d, dm = (_f16(b, 0) * sc)[:, :, None], (_f16(b, 2) * mn)[:, :, None]
    return (d * _nibbles(b[:, 16:], 32).astype(np.float32) - dm).reshape(n, QK_K)


def _q5_k(b: np.ndarray) -> np.ndarray:
    # d, dmin: f16, scales: 12 bytes, qh: 32 bytes, qs: 128 bytes; like Q4_K with a fifth bit,
    # bit j of qh[l] for value l of sub-block j
    n = len(b)
    sc, mn = _scale_min_k4(b[:, 4:16])
    d, dm = (_f16(b, 0) * sc)[:, :, None], (_f16(b, 2) * mn)[:, :, None]
    high = ((b[:, None, 16:48] >> _BITS.reshape(1, 8, 1)) & np.uint8(1)) << np.uint8(4)
    q = _nibbles(b[:, 48:], 32) | high
    return (d * q.astype(np.float32) - dm).reshape(n, QK_K)


def _q6_k(b: np.ndarray) -> np.ndarray:
    # ql: 128 bytes (low 4 bits), qh: 64 bytes (high 2 bits), scales: 16 int8, d: f16.
    # Each half of 128 values: value 32k + l takes the low/high nibble (k // 2) of ql[32 (k % 2) + l]
    # and bits 2k of qh[l]; x = d * scale[i // 16] * (q - 32).
    n = len(b)
    low = _nibbles(b[:, :128].reshape(n * 2, 64), 64)  # (2n, 2, 64): nibble, 2 x 32
    high = (b[:, 128:192].reshape(n * 2, 1, 32) >> _CRUMBS.reshape(1, 4, 1)) & np.uint8(3)
    q = (low.reshape(n * 2, 4, 32) | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    d = (_f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32))[:, :, None]
    return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


# name -> function over (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32
_BLOCK_DEQUANT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}
_PLAIN: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
SUPPORTED = tuple(name for name in GGML_TYPES_BY_NAME if name in _PLAIN or name in _BLOCK_DEQUANT)
# Work through big tensors this many values at a time, to bound the temporaries (a few x 16 MB).
_CHUNK_VALUES = 1 << 22


def type_name(ggml_type: int) -> str:
    return GGML_TYPES[ggml_type][0] if ggml_type in GGML_TYPES else f"type {ggml_type}"


def can_dequantize(ggml_type: int) -> bool:
    return type_name(ggml_type) in SUPPORTED


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    """Bytes that ``shape`` (row-major; the last axis is the GGML row) takes in ``ggml_type``."""
    _, block_size, type_size = GGML_TYPES[ggml_type]
    n = 1
    for dim in shape:
        n *= dim
    return n // block_size * type_size


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode the bytes of one GGML tensor into a new float32 array of ``shape`` (row-major).

    ``raw`` is a uint8 array (a view of the file is fine; it is not modified). Raises
    ``DataError`` for a type nlpkit cannot decode or bytes that do not fit ``shape``.
    """
    name = type_name(ggml_type)
    if name not in SUPPORTED:
        raise DataError(f"{name} tensors cannot be dequantized by nlpkit; supported: {', '.join(SUPPORTED)}")
    _, block_size, type_size = GGML_TYPES[ggml_type]
    if shape and shape[-1] % block_size:
        raise DataError(f"a {name} row of {shape[-1]} values is not a multiple of its block ({block_size})")
    expected = tensor_nbytes(ggml_type, shape)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.size != expected:
        raise DataError(f"{name} tensor of shape {shape} needs {expected} bytes, got {raw.nbytes}")
    raw = raw.reshape(-1)
    if name in _PLAIN:
        values = raw.view(_PLAIN[name])
        if name == "BF16":  # bfloat16 is the top half of a float32
            return (values.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return values.astype(np.float32).reshape(shape)  # astype copies, even for F32
    blocks = raw.reshape(-1, type_size)
    out = np.empty((len(blocks), block_size), dtype=np.float32)
    step = max(1, _CHUNK_VALUES // block_size)
    fn = _BLOCK_DEQUANT[name]
    with np.errstate(all="ignore"):  # inf or NaN scales in a damaged file decode to inf or NaN
        for start in range(0, len(blocks), step):
            out[start : start + step] = fn(blocks[start : start + step])
    return out.reshape(shape)
