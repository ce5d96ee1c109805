"""Files: atomic writes (temporary sibling, fsync, rename), output locks, and the one path walker."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from nlpkit.errors import DataError, InputMissing, IOFailure, Locked, UsageError

if TYPE_CHECKING:
    pass
from typing import TYPE_CHECKING

from nlpkit.io.talk import STDIO, say

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
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only or missing place: one line, exit 74, never a traceback
        raise IOFailure(f"cannot create the lock file ({e.strerror})", where=lock_path) from None
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


def walk_files(
    root: str,
    warn: Callable[[str], None],
    name: str | None = None,
    accept: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(path, shown name, stat)`` of every regular file under ``root``: depth-first, sorted,
    hidden entries skipped, links never followed, each skip reported once through ``warn``.

    The one directory walker: training inputs, tokenizer corpora and RAG documents all use it.
    ``accept(shown)`` can refuse an entry (a folder too) before it is opened.
    """
    name = os.path.normpath(root) if name is None else name
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        warn(f"{root}: skipped ({e.strerror})")
        return
    for entry in entries:
        # "docs/x.md"; in the current folder "x.md", the name a glob or a file argument gives
        path, shown = entry.path, entry.name if name == os.curdir else os.path.join(name, entry.name)
        if entry.name.startswith("."):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            warn(f"{path}: skipped ({e.strerror})")
            continue
        if stat.S_ISLNK(st.st_mode):
            warn(f"{path}: skipped (symbolic link; links are not followed inside a folder)")
        elif accept is not None and not accept(shown):
            continue
        elif stat.S_ISDIR(st.st_mode):
            yield from walk_files(path, warn, shown, accept)
        elif not stat.S_ISREG(st.st_mode):
            warn(f"{path}: skipped (not a regular file: FIFO, socket or device)")
        else:
            yield path, shown, st


def expand_paths(paths: Iterable[str], suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Files and ``-`` as given; folders walked (``walk_files``), keeping only names ending in
    ``suffixes`` when given, in which case a folder with none of them is an error."""
    from nlpkit.io.talk import say

    out: list[str] = []
    for p in paths:
        if p == "-" or not os.path.isdir(p):
            out.append(p)
            continue
        found = [path for path, _, _ in walk_files(p, say) if suffixes is None or path.endswith(suffixes)]
        if suffixes is not None and not found:
            raise DataError(f"no {'/'.join('*' + x for x in suffixes)} files in this folder", where=p)
        out += found
    return out
