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
import fcntl
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import orjson

from nlpkit.errors import DataError, InputMissing, IOFailure, Locked, UsageError

if TYPE_CHECKING:
    pass

STDIO = "-"
MAX_LINE_BYTES = int(os.environ.get("NLPKIT_MAX_LINE_BYTES", 8 << 20))

Record = dict[str, Any]


# --------------------------------------------------------------------------- talk (stderr)


def _env_quiet() -> bool:
    return os.environ.get("NLPKIT_QUIET", "") not in ("", "0")


_quiet = _env_quiet()


def set_quiet(quiet: bool) -> None:
    """``-q`` (or ``NLPKIT_QUIET=1``): silence everything on stderr but errors."""
    global _quiet
    _quiet = quiet or _env_quiet()


def is_quiet() -> bool:
    return _quiet


def say(message: str) -> None:
    """A summary or warning for people: stderr only, never stdout, silent under ``-q``."""
    if not _quiet:
        print(f"nlpkit: {message}", file=sys.stderr, flush=True)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class Progress:
    """Progress on stderr: a rich bar on a terminal, a plain line every ``every`` s otherwise.

    ``with Progress("embedding", total=n) as p: p.advance(k)``. Rich is told not to
    redirect stdout, so data written to stdout never mixes with the bar.
    """

    def __init__(
        self,
        description: str,
        total: float | None = None,
        unit: str = "",
        every: float = 10.0,
        output: str | None = None,
    ):
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.output = output  # where the command's data goes: "-" on a terminal hides the bar
        self.done = 0.0
        self._rich: Any = None
        self._task: Any = None
        self._start = self._last = time.monotonic()

    def __enter__(self) -> Progress:
        # No bar while data streams to the same terminal: the lines would tear it apart.
        if not _quiet and _stderr_is_terminal() and not (self.output == STDIO and sys.stdout.isatty()):
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            console = Console(stderr=True, no_color="NO_COLOR" in os.environ)
            self._rich = RichProgress(
                *RichProgress.get_default_columns(),
                console=console,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total)
        return self

    def advance(self, n: float = 1.0, **fields: Any) -> None:
        self.done += n
        if self._rich is not None:
            desc = self.description + "".join(f" {k}={v}" for k, v in fields.items())
            self._rich.update(self._task, advance=n, description=desc)
        elif not _quiet and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            self._plain_line(fields)

    def _plain_line(self, fields: dict[str, Any]) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        of = f"/{self.total:g}" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        rate = f"{self.done / elapsed:.1f}{self.unit}/s"
        say(f"{self.description}: {self.done:g}{of}{self.unit} ({rate}){extra}")

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()


def with_progress(
    items: Iterable[Any], description: str, total: float | None = None, output: str | None = None
) -> Iterator[Any]:
    """Pass ``items`` through, counting them on a progress display (stderr, terminal only)."""
    with Progress(description, total=total, output=output) as progress:
        for item in items:
            yield item
            progress.advance(1)


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


# --------------------------------------------------------------------------- atomic files


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` all or nothing: temp file beside it, fsync, ``os.replace``, fsync folder.

    If the block raises (or the process dies), ``path`` keeps its old content and the
    temporary file is removed (or, after ``kill -9``, left as ``.NAME.tmp-PID``).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputMissing("no such folder", where=str(folder), hint="create it first")
    if target.exists() and not target.is_file() and not target.is_dir():
        # /dev/null, a FIFO, a terminal: write to it; renaming over it would replace the device
        try:
            with open(target, mode) as dev:
                yield dev
        except OSError as e:
            if isinstance(e, BrokenPipeError):
                raise
            raise IOFailure(f"cannot write ({e.strerror})", where=str(target)) from None
        return
    tmp = folder / f".{target.name}.tmp-{os.getpid()}"
    try:
        f = open(tmp, mode)  # noqa: SIM115 - closed below
    except OSError as e:
        raise IOFailure(f"cannot write ({e.strerror})", where=str(target)) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(folder)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            raise IOFailure(f"cannot write ({e.strerror})", where=str(target)) from None
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def open_output_binary(path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    """A binary output: a file written atomically, or stdout for ``-`` (never a terminal)."""
    if path == STDIO:
        if sys.stdout.isatty():
            raise UsageError(
                "refusing to write binary data to a terminal", hint="redirect stdout or give -o FILE"
            )
        return contextlib.nullcontext(sys.stdout.buffer)
    return atomic_open(path)


@contextlib.contextmanager
def lock_for(output: str | os.PathLike[str], wait: bool = False) -> Iterator[None]:
    """Hold ``OUTPUT.lock`` (advisory ``flock``) while writing ``output``.

    Another run holding it: ``Locked`` (exit 75) naming its PID, or block with ``wait``.
    """
    lock_path = f"{output}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                raise Locked(
                    f"locked by another nlpkit run (PID {holder})",
                    where=str(output),
                    hint="wait for it to finish, or pass --wait",
                ) from None
            say(f"{output}: waiting for another nlpkit run (PID {holder}) to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# Tensors on disk live in tensorio.py; these names stay importable from here.
from nlpkit.tensorio import (  # noqa: E402,F401
    MAX_HEADER_BYTES,
    load_tensors,
    provenance,
    read_safetensors_header,
    save_tensors,
    sha256_file,
)
