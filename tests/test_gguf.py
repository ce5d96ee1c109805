"""nlpkit.io.gguf tensors: decoding agrees bit for bit with the gguf package, hostile files fail cleanly."""

from __future__ import annotations

import os
import struct
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpkit.errors import DataError
from nlpkit.io.gguf import MAX_TENSORS, GGUFFile, TensorInfo, read_gguf, read_metadata
from nlpkit.io.gguf_quants import GGML_TYPES, SUPPORTED, dequantize

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

REAL_HOME = os.environ.get("NLPKIT_HOME")  # read before the suite isolates the store
REAL_GGUF = (
    Path(REAL_HOME or Path.home() / ".cache" / "nlpkit")
    / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
)

# Data in [-1, 1]: each type's worst-case rounding error on it (scale / 2, plus f16 scales).
ROUND_TRIP = {"F32": 0.0, "F16": 1e-3, "BF16": 4e-3, "Q8_0": 5e-3, "Q5_0": 0.07, "Q5_1": 0.04}
ROUND_TRIP |= {"Q4_0": 0.13, "Q4_1": 0.07}
# Byte positions of the f16 scales in each block; the rest of a random block is any bytes.
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0]}
F16_FIELDS |= {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def write_model(path: Path, tensors: dict[str, tuple[np.ndarray, str]], alignment: int | None = None) -> Path:
    """A GGUF file from the gguf package's writer; each tensor is (float data or raw bytes, type)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for name, (data, qtype) in tensors.items():
        if data.dtype == np.uint8:
            writer.add_tensor(name, data, raw_dtype=Q[qtype])
        elif qtype in ("F32", "F16"):
            writer.add_tensor(name, gguf.quants.quantize(data, Q[qtype]))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, Q[qtype]), raw_dtype=Q[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_blocks(rng: np.random.Generator, qtype: str, rows: int, blocks_per_row: int) -> np.ndarray:
    """Random bytes in the layout of ``qtype``, with finite f16 scales; shape (rows, row bytes)."""
    _, _, type_size = GGML_TYPES[Q[qtype]]
    raw = rng.integers(0, 256, (rows * blocks_per_row, type_size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        raw[:, at : at + 2] = rng.uniform(-2, 2, (len(raw), 1)).astype("<f2").view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.fixture
def values() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (3, 64)).astype(np.float32)


def test_round_trip_through_the_gguf_writer(tmp_path: Path, values: np.ndarray) -> None:
    path = write_model(tmp_path / "m.gguf", {t: (values, t) for t in ROUND_TRIP})
    gg = read_gguf(path)
    assert list(gg.tensors) == list(ROUND_TRIP)  # file order
    reference = gguf.GGUFReader(str(path))
    for rt in reference.tensors:
        info = gg.tensors[rt.name]
        assert (info.type_name, info.ggml_type, info.shape) == (rt.name, int(rt.tensor_type), (3, 64))
        assert (info.offset, info.nbytes) == (rt.data_offset, rt.n_bytes)
        ours = gg.tensor(rt.name)
        assert ours.dtype == np.float32 and ours.shape == (3, 64)
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(rt.data, rt.tensor_type))
        np.testing.assert_allclose(ours, values, rtol=0, atol=ROUND_TRIP[rt.name])


def test_raw_is_a_view_and_tensor_a_new_array(tmp_path: Path, values: np.ndarray) -> None:
    gg = read_gguf(write_model(tmp_path / "m.gguf", {"w": (values, "F32")}))
    raw = gg.raw("w")
    assert raw.dtype == np.uint8 and raw.nbytes == values.nbytes and not raw.flags.owndata
    assert not raw.flags.writeable  # the file is mapped read-only
    a, b = gg.tensor("w"), gg.tensor("w")
    assert a.flags.writeable and not np.shares_memory(a, raw) and not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, values)
    assert "GGUFFile" in repr(gg) and isinstance(gg, GGUFFile)


@pytest.mark.parametrize("qtype", sorted(F16_FIELDS))
def test_random_blocks_decode_like_the_gguf_package(tmp_path: Path, qtype: str) -> None:
    rng = np.random.default_rng(len(qtype))
    block_size = GGML_TYPES[Q[qtype]][1]
    raw = random_blocks(rng, qtype, rows=3, blocks_per_row=2)
    expected = gguf.quants.dequantize(raw, Q[qtype])
    assert expected.shape == (3, 2 * block_size)
    np.testing.assert_array_equal(dequantize(raw.reshape(-1), Q[qtype], (3, 2 * block_size)), expected)
    # and through a file, with the shape read back from the tensor description
    gg = read_gguf(write_model(tmp_path / "k.gguf", {"w": (raw, qtype)}))
    assert gg.tensors["w"].shape == (3, 2 * block_size)
    np.testing.assert_array_equal(gg.tensor("w"), expected)


def test_shapes_are_ggml_ne_reversed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    embd = rng.standard_normal((5, 32)).astype(np.float32)  # (n_vocab, n_embd): ggml ne [32, 5]
    cube = rng.standard_normal((2, 3, 32)).astype(np.float32)
    path = write_model(
        tmp_path / "s.gguf", {"embd": (embd, "Q8_0"), "cube": (cube, "F16"), "v": (cube[0, 0], "F32")}
    )
    gg = read_gguf(path)
    assert [gg.tensors[n].shape for n in ("embd", "cube", "v")] == [(5, 32), (2, 3, 32), (32,)]
    ne = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(path)).tensors}
    assert ne["embd"] == [32, 5] and ne["cube"] == [32, 3, 2]
    assert gg.tensor("cube").shape == (2, 3, 32)
    np.testing.assert_array_equal(gg.tensor("v"), cube[0, 0])


@pytest.mark.parametrize("alignment", [1, 8, 64, 256])
def test_custom_alignment(tmp_path: Path, values: np.ndarray, alignment: int) -> None:
    path = write_model(tmp_path / "a.gguf", {"x": (values[:1, :3], "F32"), "y": (values, "Q8_0")}, alignment)
    gg = read_gguf(path)
    assert gg.metadata["general.alignment"] == alignment
    assert all(t.offset % alignment == 0 for t in gg.tensors.values())
    np.testing.assert_array_equal(gg.tensor("x"), values[:1, :3])
    np.testing.assert_allclose(gg.tensor("y"), values, atol=5e-3)


def test_unsupported_types_and_missing_tensors(tmp_path: Path) -> None:
    raw = np.zeros((2, 66), dtype=np.uint8)  # one IQ2_XXS block per row
    gg = read_gguf(write_model(tmp_path / "iq.gguf", {"w": (raw, "IQ2_XXS")}))
    assert gg.tensors["w"].type_name == "IQ2_XXS" and gg.raw("w").nbytes == 132  # readable as bytes
    with pytest.raises(
        DataError, match=r"'w' \(at byte \d+\) is IQ2_XXS, which nlpkit cannot dequantize; supported: F32"
    ):
        gg.tensor("w")
    with pytest.raises(DataError, match="no tensor 'nope'"):
        gg.tensor("nope")
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"} <= set(SUPPORTED)


def test_dequantize_checks_its_arguments() -> None:
    with pytest.raises(DataError, match="needs 34 bytes, got 33"):
        dequantize(np.zeros(33, np.uint8), Q.Q8_0, (32,))
    with pytest.raises(DataError, match="not a multiple"):
        dequantize(np.zeros(34, np.uint8), Q.Q8_0, (2, 16))
    with pytest.raises(DataError, match="Q8_1 tensors cannot be dequantized"):
        dequantize(np.zeros(40, np.uint8), Q.Q8_1, (32,))
    with pytest.raises(DataError, match="type 4 tensors cannot"):
        dequantize(np.zeros(40, np.uint8), 4, (32,))
    bf16 = np.array([1.5, -2.25, np.inf], dtype=np.float32)
    raw = (bf16.view(np.uint32) >> 16).astype("<u2").view(np.uint8)
    np.testing.assert_array_equal(dequantize(raw, Q.BF16, (3,)), bf16)


def test_nonfinite_scales_decode_without_warnings() -> None:
    raw = np.zeros(34, np.uint8)
    raw[:2] = np.array([np.inf], "<f2").view(np.uint8)  # inf * 0 is NaN; no RuntimeWarning
    with np.errstate(all="raise"):
        out = dequantize(raw, Q.Q8_0, (32,))
    assert np.isnan(out).all()


# --------------------------------------------------------------------------- hostile files


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_u32(key: str, value: int) -> bytes:
    return string(key) + struct.pack("<II", 4, value)


def info(name: str, ne: list[int], ggml_type: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    n = len(ne) if n_dims is None else n_dims
    return string(name) + struct.pack(f"<I{len(ne)}QIQ", n, *ne, ggml_type, offset)


def gguf_file(
    infos: list[bytes], data: bytes, kvs: Sequence[bytes] = (), count: int | None = None, align: int = 32
) -> bytes:
    """A hand-built GGUF v3: header, key/values, tensor descriptions, padding, data."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos) if count is None else count, len(kvs))
    body = head + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % align) + data


# a valid file: "a" is 2x4 f32 at 0, "b" 8 f32 at 32
DATA = np.arange(16, dtype="<f4").tobytes()
GOOD = [info("a", [4, 2]), info("b", [8], offset=32)]


def test_the_hand_built_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "good.gguf"
    path.write_bytes(gguf_file(GOOD, DATA))
    gg = read_gguf(path)
    np.testing.assert_array_equal(gg.tensor("a"), np.arange(8).reshape(2, 4))
    np.testing.assert_array_equal(gg.tensor("b"), np.arange(8, 16))
    assert gg.tensors["a"] == TensorInfo("a", (2, 4), 0, "F32", path.stat().st_size - 64, 32)
    assert read_metadata(path).tensor_count == 2  # the metadata reader skips the tensors
    path.write_bytes(gguf_file([], b"", [kv_u32("general.alignment", 64)]))
    assert read_gguf(path).tensors == {}


HOSTILE = {
    "n_dims 0": (gguf_file([info("a", [], n_dims=0)], DATA), "0 dimensions, expected 1 to 4"),
    "n_dims 9": (gguf_file([info("a", [4], n_dims=9)], DATA), "9 dimensions"),
    "dim 0": (gguf_file([info("a", [4, 0])], DATA), "invalid dimension"),
    "dim 2^64-1": (gguf_file([info("a", [2**64 - 1])], DATA), "invalid dimension"),
    "2^60 elements": (gguf_file([info("a", [2**30, 2**30])], DATA), "would take 4611686018427387904 bytes"),
    "overflowing dims": (
        gguf_file([info("a", [2**62] * 4)], DATA),
        "would take over 2\\*\\*64 bytes, more than the whole file",
    ),
    "offset past the end": (gguf_file([info("a", [4], offset=2**40)], DATA), "runs past the end"),
    "ends one byte late": (gguf_file([info("a", [4], offset=32)], DATA[:47]), "runs past the end"),
    "misaligned offset": (gguf_file([info("a", [4], offset=4)], DATA), "offset 4, not a multiple of 32"),
    "overlap": (gguf_file([info("a", [4, 2]), info("b", [8], offset=0)], DATA), "'a' and 'b' overlap"),
    "overlap by one value": (gguf_file([info("a", [9]), info("b", [7], offset=32)], DATA), "overlap"),
    "unknown type 4": (gguf_file([info("a", [32], ggml_type=4)], DATA), "unknown type 4"),
    "unknown type 2^32-1": (
        gguf_file([info("a", [32], ggml_type=2**32 - 1)], DATA),
        "unknown type 4294967295",
    ),
    "ragged Q4_0 rows": (
        gguf_file([info("a", [16, 2], ggml_type=2)], DATA),
        "16 values are not a multiple of the Q4_0 block",
    ),
    "duplicate": (gguf_file([info("a", [4]), info("a", [4], offset=32)], DATA), "duplicate tensor name 'a'"),
    "alignment 0": (
        gguf_file(GOOD, DATA, [kv_u32("general.alignment", 0)]),
        "power of two, not 0 \\(at byte 24\\)",
    ),
    "alignment 3": (gguf_file(GOOD, DATA, [kv_u32("general.alignment", 3)], align=3), "power of two, not 3"),
    "alignment a string": (
        gguf_file(GOOD, DATA, [string("general.alignment") + struct.pack("<I", 8) + string("32")]),
        "power of two, not '32'",
    ),
    "tensor count 2^62": (gguf_file(GOOD, DATA, count=2**62), "tensor count .* cannot fit"),
    "more descriptions claimed": (gguf_file(GOOD, DATA, count=3), "past|needs|unknown|dimensions"),
    "name past the end": (gguf_file([struct.pack("<Q", 2**62) + b"abc"], b""), "tensor name needs"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tensor_headers_fail_cleanly(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message) as err:
            read_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing was allocated from the claimed sizes
    assert str(path) in str(err.value) and "at byte" in str(err.value)
    assert err.value.exit_code == 65


def test_more_tensors_than_nlpkit_reads(tmp_path: Path) -> None:
    path = tmp_path / "many.gguf"
    path.write_bytes(gguf_file([], bytes(33 * (MAX_TENSORS + 1)), count=MAX_TENSORS + 1))
    with pytest.raises(DataError, match="more than nlpkit reads"):
        read_gguf(path)


def test_every_truncation_fails_cleanly(tmp_path: Path) -> None:
    data = gguf_file([info("a", [32], ggml_type=8), info("b", [8], offset=64)], bytes(64) + DATA[:32])
    assert read_gguf_bytes(tmp_path, data).tensors["a"].type_name == "Q8_0"
    for n in range(24, len(data)):
        with pytest.raises(DataError):
            read_gguf_bytes(tmp_path, data[:n])


def read_gguf_bytes(tmp_path: Path, data: bytes) -> GGUFFile:
    path = tmp_path / "cut.gguf"
    path.write_bytes(data)
    return read_gguf(path)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 32)).astype(np.float32)
    tensors = {
        "f": (x, "F32"),
        "h": (x, "F16"),
        "q": (x, "Q4_1"),
        "k": (random_blocks(rng, "Q6_K", 1, 1), "Q6_K"),
    }
    return write_model(tmp_path_factory.mktemp("gguf") / "small.gguf", tensors).read_bytes()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_give_tensors_or_a_data_error(
    small_model: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(small_model)
    start = data.draw(st.sampled_from([0, len(small_model) // 3]))  # anywhere, or past most metadata
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(start, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        gg = read_gguf_bytes(tmp_path, bytes(raw))
        for name, t in gg.tensors.items():
            assert t.offset + t.nbytes <= len(raw)
            if t.type_name in SUPPORTED:
                assert gg.tensor(name).shape == t.shape
    except DataError:
        pass


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_the_real_smollm2_file_decodes_like_the_gguf_package() -> None:
    if not REAL_GGUF.exists():
        pytest.skip("run `nlpkit models pull smollm2-135m-instruct` first")
    gg = read_gguf(REAL_GGUF)
    reference = gguf.GGUFReader(str(REAL_GGUF))
    assert list(gg.tensors) == [t.name for t in reference.tensors]
    types = set()
    for rt in reference.tensors:
        info = gg.tensors[rt.name]
        assert info.shape == tuple(int(d) for d in reversed(rt.shape)), rt.name
        assert (info.ggml_type, info.offset, info.nbytes) == (int(rt.tensor_type), rt.data_offset, rt.n_bytes)
        ours = gg.tensor(rt.name)
        assert ours.shape == info.shape and ours.dtype == np.float32
        assert np.array_equal(ours, gguf.quants.dequantize(rt.data, rt.tensor_type)), rt.name
        types.add(info.type_name)
    assert types == {"F32", "Q8_0", "Q4_1"}
    assert gg.tensors["token_embd.weight"].shape == (49152, 576)
