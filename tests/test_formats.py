"""The pipe contract: JSONL records, safetensors, atomic writes, locks."""

from __future__ import annotations

import json
import os
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlpkit.errors import DataError, InputMissing, Locked, UsageError
from nlpkit.io import files as io_files
from nlpkit.io import records as io_records
from nlpkit.io import tensors as io_tensors

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
records = st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(lambda d: {**d, "text": "x"})


@settings(max_examples=200, deadline=None)
@given(st.lists(records, min_size=1, max_size=5))
def test_jsonl_round_trip(tmp_path_factory: pytest.TempPathFactory, recs: list[dict]) -> None:
    path = str(tmp_path_factory.mktemp("rt") / "out.jsonl")
    with io_records.RecordWriter(path) as out:
        out.write_all(recs)
    back = [r for _, r in io_records.read_records(path)]
    assert back == recs


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_records_or_a_data_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "in.txt"
    path.write_bytes(data)
    try:
        for _, record in io_records.read_records(str(path)):
            assert isinstance(record["text"], str)
    except DataError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.uint8]).flatmap(
            lambda dt: st.lists(st.integers(0, 100), min_size=0, max_size=6).map(
                lambda xs: np.array(xs, dtype=dt)
            )
        ),
        max_size=4,
    ),
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)
def test_safetensors_round_trip(tmp_path_factory: pytest.TempPathFactory, tensors: dict, meta: dict) -> None:
    path = str(tmp_path_factory.mktemp("st") / "t.safetensors")
    io_tensors.save_tensors(path, tensors, meta, kind="test")
    back, back_meta = io_tensors.load_tensors(path)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    assert back_meta == {"nlpkit.kind": "test", **meta}


def test_our_safetensors_read_by_the_reference_library(tmp_path) -> None:
    from safetensors.numpy import load_file

    path = str(tmp_path / "a.safetensors")
    io_tensors.save_tensors(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {}, kind="test")
    assert np.array_equal(load_file(path)["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


def _header_file(tmp_path, header: bytes, data: bytes = b"\0" * 16, claim: int | None = None) -> str:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if claim is None else claim) + header + data)
    return str(path)


@pytest.mark.parametrize(
    ("header", "claim", "message"),
    [
        (b"{}", 1 << 40, "header claims"),
        (b"{not json", None, "not valid JSON"),
        (
            b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
            b'"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
            None,
            "duplicate",
        ),
        (b'{"__metadata__": {"k": 1}}', None, "strings to strings"),
        (b'{"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}', None, "outside"),
        (
            b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
            b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}',
            None,
            "overlap",
        ),
        (b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}', None, "does not match"),
        (b'{"a": {"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}}', None, "unsupported dtype"),
    ],
)
def test_crafted_safetensors_headers_are_refused(tmp_path, header, claim, message) -> None:
    with pytest.raises(DataError, match=message):
        io_tensors.load_tensors(_header_file(tmp_path, header, claim=claim))


def test_truncated_and_empty_safetensors(tmp_path) -> None:
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        io_tensors.load_tensors(str(tmp_path / "e.safetensors"))
    (tmp_path / "s.safetensors").write_bytes(b"abc")
    with pytest.raises(DataError, match="shorter than 8"):
        io_tensors.load_tensors(str(tmp_path / "s.safetensors"))
    with pytest.raises(InputMissing):
        io_tensors.load_tensors(str(tmp_path / "missing.safetensors"))


def test_pickle_offered_as_safetensors_never_runs(tmp_path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError):
        io_tensors.load_tensors(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "a"\n', "invalid JSON"),
        (b'{"text": NaN}\n', "invalid JSON"),
        (b"[1, 2]\n", None),  # a line not starting with '{' is text in auto mode
        (b'{"other": 1}\n', "missing field 'text'"),
        (b'{"text": 3}\n', "must be a string"),
        (b"ok\n\xff\xfe\n", "invalid UTF-8"),
        (b"", "empty input"),
        (b"\n  \n", "empty input"),
    ],
)
def test_read_records_errors_name_file_and_line(tmp_path, content, message) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    if message is None:
        assert [r for _, r in io_records.read_records(str(path))] == [{"text": "[1, 2]"}]
        return
    with pytest.raises(DataError, match=message) as e:
        list(io_records.read_records(str(path)))
    assert str(path) in str(e.value)


def test_long_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"short\n" + b"x" * 5000 + b"\n")
    with pytest.raises(DataError, match=r"long.txt:2: line longer than 1000 bytes"):
        list(io_records.iter_lines(str(path), max_line_bytes=1000))


def test_jsonl_mode_and_text_mode(tmp_path) -> None:
    path = tmp_path / "in.txt"
    path.write_text('{"text": "a"}\nplain\n')
    assert [r for _, r in io_records.read_records(str(path), fmt="text")] == [
        {"text": '{"text": "a"}'},
        {"text": "plain"},
    ]
    with pytest.raises(DataError, match="in.txt:2: invalid JSON"):
        list(io_records.read_records(str(path), fmt="jsonl"))
    with pytest.raises(UsageError):
        list(io_records.read_records(str(path), fmt="xml"))


def test_writer_refuses_nan(tmp_path) -> None:
    with pytest.raises(DataError, match="non-finite"):
        io_records.dumps_record({"x": float("nan")})
    with pytest.raises(DataError, match="non-finite"):
        io_records.dumps_record({"v": np.array([1.0, np.inf], dtype=np.float32)})
    line = io_records.dumps_record({"text": "é", "v": np.array([0.5, 1 / 3], dtype=np.float32)})
    assert json.loads(line) == {"text": "é", "v": [0.5, 0.33333334]}
    assert "é".encode() in line


def test_atomic_open_keeps_old_file_on_error(tmp_path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), io_files.atomic_open(path) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    with io_files.atomic_open(path) as f:
        f.write(b"new")
    assert path.read_text() == "new"


def test_atomic_open_into_missing_folder(tmp_path) -> None:
    with pytest.raises(InputMissing, match="no such folder"), io_files.atomic_open(tmp_path / "no" / "x"):
        pass


def test_lock_contention_names_the_holder(tmp_path) -> None:
    out = tmp_path / "index"
    with io_files.lock_for(out):
        errors = []

        def second() -> None:
            try:
                with io_files.lock_for(out):
                    pass
            except Locked as e:
                errors.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join()
        # flock locks belong to the open file description, so a second open in the same
        # process conflicts just like another process would.
        assert errors and f"PID {os.getpid()}" in str(errors[0]) and errors[0].exit_code == 75
    with io_files.lock_for(out):  # released: free again
        pass


def test_waiting_for_a_lock_says_so_then_takes_it(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "index"
    got = threading.Event()

    def second() -> None:
        with io_files.lock_for(out, wait=True):
            got.set()

    with io_files.lock_for(out):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        assert not got.is_set()  # still waiting while the first holds it
    t.join(timeout=10)
    assert got.is_set() and f"waiting for another nlpkit run (PID {os.getpid()})" in capsys.readouterr().err


def test_load_tensors_copy_reads_writable_arrays_equal_to_the_mapped_ones(tmp_path) -> None:
    import numpy as np

    from nlpkit.io.tensors import load_tensors, save_tensors

    path = str(tmp_path / "t.safetensors")
    want = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([7, -1], dtype=np.int64),
            "empty": np.zeros((0, 3), np.float32)}  # fmt: skip
    save_tensors(path, want, {"k": "v"}, kind="test")
    mapped, meta = load_tensors(path)
    copied, meta2 = load_tensors(path, copy=True)
    assert meta == meta2
    for k, v in want.items():
        assert np.array_equal(copied[k], v) and np.array_equal(mapped[k], v) and copied[k].dtype == v.dtype
    assert copied["a"].flags.writeable and not mapped["a"].flags.writeable
