"""Reading a JSON array one element at a time, so a 125 MB file never sits in memory as one
parsed list, and a file cut off mid-record (ShareGPT's package ships such a prefix) still gives
every complete element before the cut."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from nlpkit.errors import DataError

_SKIP = re.compile(r"[\s,]*")  # between elements: whitespace and the separating commas


@dataclass
class Tail:
    """What followed the last complete element: ``None`` fields when the array was closed."""

    line: int | None = None  # the line where the incomplete element starts
    chars: int = 0  # characters of it that were dropped


def iter_array(
    f: IO[bytes], name: str, tail: Tail | None = None, block: int = 1 << 22
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, element)`` for each complete element of the JSON array in ``f``.

    ``line`` is the 1-based line where the element starts (for ``FILE:LINE`` messages). A file
    that ends before the array closes stops at the last complete element; what was dropped is
    recorded in ``tail`` (the caller reports it). Anything else malformed: ``DataError``.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    parse = json.JSONDecoder().raw_decode
    buf, pos, line, eof, opened = "", 0, 1, False, False
    while True:
        skipped = _SKIP.match(buf, pos)
        start = skipped.end() if skipped else pos
        line += buf.count("\n", pos, start)
        pos = start
        if pos < len(buf):
            if not opened:
                if buf[pos] != "[":
                    raise DataError("expected a JSON array ('[')", where=f"{name}:{line}")
                opened, pos = True, pos + 1
                continue
            if buf[pos] == "]":
                _expect_end(f, buf[pos + 1 :], name, line)
                return
            try:
                value, end = parse(buf, pos)
            except json.JSONDecodeError as e:
                if not _cut_off(e, buf):  # malformed, whatever follows
                    at = line + buf.count("\n", pos, e.pos)
                    raise DataError(f"invalid JSON ({e.msg})", where=f"{name}:{at}") from None
                if eof:  # the file ends mid-element: keep what came before
                    if tail is not None:
                        tail.line, tail.chars = line, len(buf) - pos
                    return
            else:
                yield line, value
                line += buf.count("\n", pos, end)
                pos = end
                continue
        elif eof:
            if opened and tail is not None:
                tail.line, tail.chars = line, 0
            if not opened:
                raise DataError("empty file: expected a JSON array", where=f"{name}:1")
            return
        chunk = f.read(block)
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            raise DataError(f"invalid UTF-8 ({e.reason})", where=f"{name}:{line}") from None
        eof = not chunk
        buf, pos = buf[pos:] + text, 0


def _expect_end(f: IO[bytes], rest: str, name: str, line: int) -> None:
    """Nothing but whitespace may follow the closing bracket (else it would be dropped unseen)."""
    if rest.strip() or f.read(1 << 16).strip():
        raise DataError("unexpected data after the JSON array", where=f"{name}:{line}")


def _cut_off(e: json.JSONDecodeError, buf: str) -> bool:
    """Whether the parse failed because the text ended (not because it was malformed)."""
    return e.pos >= len(buf.rstrip()) - 1 or e.msg.startswith("Unterminated string")
