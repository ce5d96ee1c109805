"""nlpkit.io.gguf: the metadata reader agrees with the gguf package, and hostile files fail cleanly."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpkit.errors import DataError, InputMissing
from nlpkit.io.gguf import StringArray, read_metadata

gguf = pytest.importorskip("gguf")
T = gguf.GGUFValueType


def write_gguf(path: Path, fill) -> Path:  # type: ignore[no-untyped-def]
    """A GGUF file with no tensors, its metadata added by ``fill(writer)``."""
    writer = gguf.GGUFWriter(str(path), "llama")
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def every_type(w) -> None:  # type: ignore[no-untyped-def]
    w.add_key_value("t.u8", 200, T.UINT8)
    w.add_key_value("t.i8", -100, T.INT8)
    w.add_key_value("t.u16", 60000, T.UINT16)
    w.add_key_value("t.i16", -30000, T.INT16)
    w.add_key_value("t.u32", 4_000_000_000, T.UINT32)
    w.add_key_value("t.i32", -2_000_000_000, T.INT32)
    w.add_key_value("t.f32", 0.5, T.FLOAT32)
    w.add_key_value("t.bool", True, T.BOOL)
    w.add_key_value("t.str", "héllo ✓", T.STRING)
    w.add_key_value("t.u64", 2**63 + 5, T.UINT64)
    w.add_key_value("t.i64", -(2**62), T.INT64)
    w.add_key_value("t.f64", 1e-300, T.FLOAT64)
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.25, -1.5])
    w.add_array("t.strs", ["a", "", "Ġthe", "<|im_start|>"])
    w.add_array("t.bools", [True, False, True])


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "sample.gguf", every_type)


def test_every_value_type_reads_back(sample: Path) -> None:
    meta = read_metadata(sample)
    assert meta.version == 3 and meta.tensor_count == 0
    f = meta.fields
    assert (f["t.u8"], f["t.i8"], f["t.u16"], f["t.i16"]) == (200, -100, 60000, -30000)
    assert (f["t.u32"], f["t.i32"], f["t.u64"], f["t.i64"]) == (
        4_000_000_000,
        -2_000_000_000,
        2**63 + 5,
        -(2**62),
    )
    assert f["t.f32"] == 0.5 and f["t.f64"] == 1e-300 and f["t.bool"] is True
    assert f["t.str"] == "héllo ✓" and f["general.architecture"] == "llama"
    assert list(f["t.ints"]) == [1, -2, 3] and list(f["t.floats"]) == [0.25, -1.5]
    assert isinstance(f["t.strs"], StringArray) and list(f["t.strs"]) == ["a", "", "Ġthe", "<|im_start|>"]
    assert f["t.strs"][-1] == "<|im_start|>" and f["t.strs"][1:3] == ["", "Ġthe"]
    assert f["t.bools"].dtype == np.bool_ and list(f["t.bools"]) == [True, False, True]
    assert meta.end == sample.stat().st_size  # no tensors: the metadata ends the file


def test_agrees_with_the_gguf_package(sample: Path) -> None:
    ours = read_metadata(sample).fields
    theirs = {k: v for k, v in gguf.GGUFReader(str(sample)).fields.items() if not k.startswith("GGUF.")}
    assert set(ours) == set(theirs)
    for key, field in theirs.items():
        value = field.contents()
        mine = ours[key]
        if isinstance(mine, (StringArray, np.ndarray)):
            assert list(mine) == list(value), key
        else:
            assert mine == pytest.approx(value), key


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputMissing):
        read_metadata(tmp_path / "nope.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(DataError, match="not a GGUF file"):
        read_metadata(tmp_path / "empty.gguf")


def header(version: int = 3, tensors: int = 0, kvs: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, kvs)


def kv_string_array(key: bytes, count: int, items: bytes = b"") -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, count) + items


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + bytes(20), "no GGUF magic"),
        (header(version=1), "unsupported GGUF version 1"),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
        (header(kvs=2**63), "cannot fit"),
        (header(tensors=2**62), "cannot fit"),
        # an array claiming 2^60 strings in a file of a few dozen bytes
        (header(kvs=1) + kv_string_array(b"k", 2**60), "needs"),
        # a string claiming 2^62 bytes
        (header(kvs=1) + struct.pack("<Q", 2**62) + b"k" + bytes(20), "needs"),
        (
            header(kvs=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + bytes(8),
            "unknown value type 99",
        ),
        (
            header(kvs=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1) + bytes(12),
            "unsupported element",
        ),
        (
            header(kvs=1) + struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<IB", 0, 1) + bytes(8),
            "invalid UTF-8",
        ),
        (
            header(kvs=2) + (struct.pack("<Q", 1) + b"k" + struct.pack("<IB", 0, 1)) * 2 + bytes(8),
            "duplicate",
        ),
        (
            header(kvs=1)
            + kv_string_array(b"k", 2, struct.pack("<Q", 1) + b"a" + struct.pack("<Q", 9) + b"b"),
            "past",
        ),
    ],
)
def test_hostile_headers_fail_cleanly(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data.ljust(24, b"\0"))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message) as err:
            read_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing was allocated from the claimed counts
    assert str(path) in str(err.value)


def test_invalid_utf8_inside_a_string_array_is_a_data_error(tmp_path: Path) -> None:
    item = struct.pack("<Q", 2) + b"\xc3\x28"
    path = tmp_path / "bad.gguf"
    path.write_bytes(header(kvs=1) + kv_string_array(b"k", 1, item))
    strings = read_metadata(path)["k"]
    with pytest.raises(DataError, match="invalid UTF-8"):
        strings[0]


def test_missing_key_is_a_data_error(sample: Path) -> None:
    meta = read_metadata(sample)
    assert "t.u8" in meta and meta.get("nope", 7) == 7
    with pytest.raises(DataError, match="no 'nope'"):
        meta["nope"]


def test_every_truncation_fails_cleanly(sample: Path, tmp_path: Path) -> None:
    data = sample.read_bytes()
    path = tmp_path / "cut.gguf"
    for n in sorted({*range(0, len(data), 5), *range(len(data) - 40, len(data))}):
        path.write_bytes(data[:n])
        with pytest.raises(DataError):
            read_metadata(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_give_a_value_or_a_data_error(
    sample: Path, tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(sample.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(raw))
    try:
        meta = read_metadata(path)
        for value in meta.fields.values():  # decoding lazily can fail too, only as DataError
            if isinstance(value, StringArray):
                list(value)
    except DataError:
        pass
