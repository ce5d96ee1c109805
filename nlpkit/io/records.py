"""The pipe contract: records in, records out, tensors on disk, files written atomically.

Every command reads and writes through this module, so the rules live in one place:

* text in: UTF-8 plain lines (each becomes ``{"text": line}``) or JSONL objects, from files
  or ``-`` (stdin); errors name ``FILE:LINE``;
* records out: one JSON object per line, UTF-8, no NaN/Infinity, flushed per batch, the
  input's fields passed through;
* tensors: ``.safetensors`` with str->str metadata (``nlpkit.kind``, ``nlpkit.version``,
  ``nlpkit.config``, provenance), read memory-mapped after validating the header;
* every file is written to a temporary sibling, fsynced, then ``os.replace``-d into place,
  so a reader (or a ``kill -9``) only ever sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, BinaryIO

import orjson

from nlpkit.errors import DataError, InputMissing, UsageError
from nlpkit.io.files import atomic_open
from nlpkit.io.talk import STDIO

MAX_LINE_BYTES = int(os.environ.get("NLPKIT_MAX_LINE_BYTES", 8 << 20))

Record = dict[str, Any]


# --------------------------------------------------------------------------- reading records


def _name(path: str) -> str:
    return "<stdin>" if path == STDIO else path


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading; ``-`` is stdin (refused when it is a terminal)."""
    if path == STDIO:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no input: stdin is a terminal", hint="give a FILE or pipe text into nlpkit")
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputMissing("no such file", where=path) from None
    except IsADirectoryError:
        raise InputMissing("is a directory, expected a file", where=path) from None
    except PermissionError:
        raise InputMissing("permission denied", where=path) from None
    with f:
        yield f


def iter_lines(path: str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[str, str]]:
    """Yield ``(where, line)`` for each non-blank line of ``path``, decoded as strict UTF-8.

    ``where`` is ``FILE:LINE`` for error messages. A line longer than ``max_line_bytes``
    (``NLPKIT_MAX_LINE_BYTES``, default 8 MiB) is refused rather than read whole.
    """
    with open_input(path) as f:
        for lineno, raw in enumerate(_bounded_lines(f, path, max_line_bytes), 1):
            where = f"{_name(path)}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"invalid UTF-8 at byte {e.start + 1}", where=where, hint="convert the input to UTF-8"
                ) from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield where, line


def _bounded_lines(f: BinaryIO, path: str, limit: int) -> Iterator[bytes]:
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise DataError(
                f"line longer than {limit} bytes",
                where=f"{_name(path)}:{lineno}",
                hint="split it, or raise NLPKIT_MAX_LINE_BYTES",
            )
        yield raw


def parse_record(line: str, where: str) -> Record:
    """Parse one JSONL line into a dict; NaN, Infinity and non-objects are refused."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON ({e.msg})", where=where, hint="each line must be one JSON object"
        ) from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}", where=where)
    return value


def _input_paths(paths: str | Sequence[str], fmt: str) -> list[str]:
    """The inputs as a list, after checking ``--input-format`` (both readers share this)."""
    if fmt not in ("auto", "text", "jsonl"):
        raise UsageError(f"unknown input format {fmt!r}", hint="use auto, text or jsonl")
    return [paths] if isinstance(paths, str) else list(paths)


def _empty_input(paths: list[str]) -> DataError:
    names = ", ".join(_name(p) for p in paths)
    return DataError("empty input: no records", where=names, hint="give at least one line of text or JSONL")


def read_records(
    paths: str | Sequence[str],
    *,
    field: str = "text",
    fmt: str = "auto",
    allow_empty: bool = False,
    required: bool = True,
    string: bool = True,
) -> Iterator[tuple[str, Record]]:
    """Yield ``(where, record)`` from plain-text or JSONL inputs.

    ``fmt``: ``text`` (each line is ``{field: line}``), ``jsonl`` (each line an object that
    must have ``field`` unless ``required`` is false, and it must be a string unless ``string``
    is false), or ``auto`` (a line that starts with ``{`` is JSON). Blank lines are
    skipped. With no record at all and ``allow_empty`` false: a ``DataError``.
    """
    paths = _input_paths(paths, fmt)
    count = 0
    for path in paths:
        for where, line in iter_lines(path):
            if fmt == "jsonl" or (fmt == "auto" and line.lstrip().startswith("{")):
                record = parse_record(line, where)
                if field not in record:
                    if required:
                        raise DataError(f"missing field {field!r}", where=where)
                elif string and not isinstance(record[field], str):
                    raise DataError(f"field {field!r} must be a string", where=where)
            else:
                record = {field: line}
            count += 1
            yield where, record
    if count == 0 and not allow_empty:
        raise _empty_input(paths)


class RecordBatch:
    """Up to ``size`` records from one input file: ``records``, their ``field`` values in
    ``texts``, and ``where(i)`` naming record ``i`` as ``FILE:LINE`` for error messages."""

    __slots__ = ("linenos", "name", "records", "texts")

    def __init__(self, name: str):
        self.name = name
        self.records: list[Record] = []
        self.texts: list[Any] = []
        self.linenos: list[int] = []

    def where(self, i: int) -> str:
        return f"{self.name}:{self.linenos[i]}"


def read_record_batches(
    paths: str | Sequence[str],
    *,
    field: str = "text",
    fmt: str = "auto",
    size: int = 1000,
    allow_empty: bool = False,
) -> Iterator[RecordBatch]:
    """``read_records`` in batches, for commands that stream millions of short records.

    Same records, same checks and the same errors, with a fraction of the per-line work:
    input is read in blocks of at most 1 MiB as it arrives (``read1``: a pipe is not held
    back), each block decoded and split at once, and ``FILE:LINE`` formatted only on error.
    A line longer than ``NLPKIT_MAX_LINE_BYTES`` is still refused before it is held whole.
    """
    paths = _input_paths(paths, fmt)
    count = 0
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for path in paths:
        batch = RecordBatch(_name(path))
        for first, lines in _line_blocks(path, MAX_LINE_BYTES):
            for lineno, line in enumerate(lines, first):
                if not line or line.isspace():
                    continue
                if fmt == "jsonl" or (fmt == "auto" and line.lstrip()[:1] == "{"):
                    try:
                        record = loads(line)
                    except decode_error:
                        record = None
                    if type(record) is not dict:
                        record = parse_record(line, batch.name + f":{lineno}")  # the usual error
                    text = record.get(field, _MISSING)
                    if type(text) is not str:
                        problem = (
                            f"missing field {field!r}"
                            if text is _MISSING
                            else f"field {field!r} must be a string"
                        )
                        raise DataError(problem, where=f"{batch.name}:{lineno}")
                else:
                    text = line
                    record = {field: line}
                batch.records.append(record)
                batch.texts.append(text)
                batch.linenos.append(lineno)
                if len(batch.records) >= size:
                    count += len(batch.records)
                    yield batch
                    batch = RecordBatch(batch.name)
        if batch.records:
            count += len(batch.records)
            yield batch
    if count == 0 and not allow_empty:
        raise _empty_input(paths)


_MISSING = object()


def _line_blocks(path: str, limit: int, block: int = 1 << 20) -> Iterator[tuple[int, list[str]]]:
    """``(number of the first line, lines)`` per block read, ``\r\n`` stripped, as ``iter_lines``
    (blank lines included); errors are raised in line order, after the lines before them."""
    name = _name(path)
    with open_input(path) as f:
        read = getattr(f, "read1", f.read)
        lineno, rest = 1, b""
        while chunk := read(block):
            buf = rest + chunk if rest else chunk
            cut = buf.rfind(b"\n")
            if cut >= 0:
                lines, error = _decode_block(buf[:cut], lineno, name, limit)
                yield lineno, lines
                if error:
                    raise error
                lineno += len(lines)
            rest = buf[cut + 1 :]
            if len(rest) > limit:
                raise _too_long(limit, f"{name}:{lineno}")
        if rest:
            lines, error = _decode_block(rest, lineno, name, limit)
            yield lineno, lines
            if error:
                raise error


def _decode_block(head: bytes, lineno: int, name: str, limit: int) -> tuple[list[str], DataError | None]:
    """The lines of ``head``, or those before the first bad one and its error."""
    try:
        lines = head.decode("utf-8").split("\n")
        # a UTF-8 character is at most 4 bytes: most blocks need no byte count
        if max(map(len, lines)) * 4 <= limit or all(len(x.encode("utf-8")) <= limit for x in lines):
            return ([x.rstrip("\r") for x in lines] if b"\r" in head else lines), None
    except UnicodeDecodeError:
        pass
    good: list[str] = []
    for i, raw in enumerate(head.split(b"\n"), lineno):
        if len(raw) > limit:
            return good, _too_long(limit, f"{name}:{i}")
        try:
            good.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            bad = DataError(
                f"invalid UTF-8 at byte {e.start + 1}", where=f"{name}:{i}", hint="convert the input to UTF-8"
            )
            return good, bad
    return good, None


def _too_long(limit: int, where: str) -> DataError:
    return DataError(
        f"line longer than {limit} bytes", where=where, hint="split it, or raise NLPKIT_MAX_LINE_BYTES"
    )


# --------------------------------------------------------------------------- writing records


def _check_finite(value: Any, path: str = "") -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"refusing to write a non-finite number at {path or 'top level'}")
    elif type(value).__name__ == "ndarray":  # numpy is imported only by commands that use it
        import numpy as np

        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise DataError(f"refusing to write a non-finite number in {path or 'array'}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def dumps_record(record: Record) -> bytes:
    """One JSONL line (with its newline): UTF-8, compact, float32 arrays written shortest."""
    _check_finite(record)
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


class RecordWriter:
    """Write records as JSONL to ``-`` (stdout) or a file (atomically, on success).

    Lines are buffered and flushed per ``flush_every`` records, so a consumer downstream in a
    pipe sees complete records promptly and ``| head`` stops us early.
    """

    def __init__(self, path: str = STDIO, flush_every: int = 64):
        self.path, self.flush_every = path, flush_every
        self.count = 0
        self._atomic: contextlib.AbstractContextManager[IO[bytes]] | None = None
        self._out: IO[bytes]

    def __enter__(self) -> RecordWriter:
        if self.path == STDIO:
            self._out = sys.stdout.buffer
        else:
            self._atomic = atomic_open(self.path)
            self._out = self._atomic.__enter__()
        return self

    def write(self, record: Record) -> None:
        self._out.write(dumps_record(record))
        self.count += 1
        if self.count % self.flush_every == 0:
            self._out.flush()

    def write_lines(self, data: bytes, count: int) -> None:
        """Write ``count`` records the caller already serialized as JSONL (e.g. a batch from
        a fast path that only adds ints and strings to records parsed by ``read_records``,
        which are finite by construction); flushed at once."""
        self._out.write(data)
        self.count += count
        self._out.flush()

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._atomic is not None:
            self._atomic.__exit__(exc_type, exc, tb)
        elif exc_type is None:
            self._out.flush()


# --------------------------------------------------------------------------- the command's work


def read_texts(
    paths: Sequence[str],
    field: str = "text",
    fmt: str = "auto",
    *,
    suffixes: tuple[str, ...] | None = (".txt",),
    pairs: bool = False,
) -> Iterator[Any]:
    """The texts of files, folders and ``-`` (stdin), in order; with ``pairs``, the
    ``(input, output)`` of JSONL records ``{"input": ..., "output": ...}``.

    Folders give their files ending in ``suffixes`` (all files when None). With ``fmt="auto"``
    a ``.txt`` file is plain text (a line that starts with ``{`` is still text), a
    ``.jsonl``/``.json`` file is JSONL, and other inputs are told apart line by line.
    """
    from nlpkit.io.files import expand_paths

    count = 0
    for path in expand_paths(paths, suffixes):
        kind = fmt
        if fmt == "auto" and path.endswith(".txt") and not pairs:
            kind = "text"
        elif fmt == "auto" and path.endswith((".jsonl", ".json")):
            kind = "jsonl"
        for where, record in read_records(
            path, field="input" if pairs else field, fmt=kind, allow_empty=True
        ):
            count += 1
            if not pairs:
                yield record[field]
            elif not isinstance(record.get("output"), str):
                raise DataError('expected JSONL records {"input": ..., "output": ...}', where=where)
            else:
                yield record["input"], record["output"]
    if count == 0:
        raise DataError(
            "empty input: no records", where=", ".join(paths), hint="give at least one line of text"
        )
