"""Documents for retrieval: find source files safely, turn them into plain text, cut chunks.

    for src in discover(["docs/", "notes/*.md"]):        # regular in-tree files only
        doc = read_document(src)                         # text + map back to the file
        for c in chunk_text(doc.text, size=1000, overlap=150):
            print(doc.original_span(c.start, c.end), c.text[:40])

Safety (reliability.md, "indexing a folder stays inside it"): folders are walked without
following links; symlinks, FIFOs, sockets and devices found in a folder are skipped with a
warning and never opened (a FIFO would block a cron job forever); files over ``max_bytes``,
binary files and files that are not UTF-8 are skipped with a warning. Stored paths are the
path as the user typed it joined with the path *inside* the walked folder, so they never
name anything outside it.

Offsets: conversion (reStructuredText, Markdown, HTML -> text) records anchors from the
converted text back into the original file. ``Document.original_span`` maps chunk offsets to
character offsets in the original file: exact for text copied through, the start of the
markup for text that replaced markup (a role, an entity, a tag).
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import ClassVar

from nlpkit.errors import InputMissing

MAX_FILE_BYTES = 20 << 20
KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
         ".rst": "rst", ".html": "html", ".htm": "html"}  # fmt: skip


def kind_of(name: str) -> str | None:
    """``text``, ``markdown``, ``rst`` or ``html`` from the file name (``x.rst.txt`` is rst)."""
    lower = name.lower()
    for inner in (".rst.txt", ".md.txt"):
        if lower.endswith(inner):
            return "rst" if inner == ".rst.txt" else "markdown"
    return KINDS.get(os.path.splitext(lower)[1])


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Source:
    """A file to index: ``path`` is what we open, ``name`` what the index stores and cites."""

    path: str
    name: str
    kind: str
    named: bool = False  # named on the command line (a link there is followed, as cat does)


def discover(
    sources: Iterable[str],
    warn: Callable[[str], None] = lambda message: None,
    max_bytes: int = MAX_FILE_BYTES,
    strict: bool = False,
) -> Iterator[Source]:
    """Every indexable regular file under ``sources`` (files, folders or glob patterns).

    Sorted within each folder so that runs are deterministic. Skips are reported through
    ``warn``; a named source that does not exist is an ``InputMissing`` (exit 66), and so is
    a pattern that matches nothing when ``strict`` (``--sync``: a mistyped pattern or an
    unmounted folder must not empty the index).
    """
    seen: set[str] = set()
    for spec in sources:
        matches = [spec]
        if not os.path.lexists(spec) and glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches and strict:
                hint = "--sync would remove every document it matched before; check the pattern"
                raise InputMissing("the pattern matches nothing", where=spec, hint=hint)
            if not matches:
                warn(f"{spec}: the pattern matches nothing")
        elif not os.path.lexists(spec):
            raise InputMissing("no such file or folder", where=spec)
        for path in matches:
            for src in _from_path(path, warn, max_bytes):
                if src.name not in seen:
                    seen.add(src.name)
                    yield src


def _from_path(path: str, warn: Callable[[str], None], max_bytes: int) -> Iterator[Source]:
    try:
        st = os.stat(path)  # a path the user named: follow it (as ls and cat do)
    except OSError as e:
        warn(f"{path}: skipped ({e.strerror})")
        return
    name = os.path.normpath(path)
    if not _storable(name, warn):
        return
    if stat.S_ISDIR(st.st_mode):
        yield from _walk(path, name, warn, max_bytes)
    elif stat.S_ISREG(st.st_mode):
        if _size_ok(path, st.st_size, max_bytes, warn):
            yield Source(path, name, kind_of(path) or "text", named=True)
    else:
        warn(f"{path}: skipped (not a regular file)")


def _walk(root: str, name: str, warn: Callable[[str], None], max_bytes: int) -> Iterator[Source]:
    """The documents under ``root`` (io.files.walk_files): known kinds, storable names, bounded sizes."""
    from nlpkit.io.files import walk_files

    for path, shown, st in walk_files(root, warn, name, accept=lambda n: _storable(n, warn)):
        kind = kind_of(path)
        if kind is not None and _size_ok(path, st.st_size, max_bytes, warn):
            yield Source(path, shown, kind)


def _storable(name: str, warn: Callable[[str], None]) -> bool:
    """Whether ``name`` is text the index can store and cite (not undecodable bytes)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        warn(f"{shown}: skipped (the name is not valid UTF-8; rename the file)")
        return False


def _size_ok(path: str, size: int, max_bytes: int, warn: Callable[[str], None]) -> bool:
    if size > max_bytes:
        warn(f"{path}: skipped ({size} bytes, over the {max_bytes}-byte limit; see --max-file-bytes)")
        return False
    return True


def read_source(src: Source, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, opened without blocking and checked to still be a regular file.

    ``O_NONBLOCK`` (and ``O_NOFOLLOW`` for files found inside a folder) plus an ``fstat``
    after opening close the race where a regular file is swapped for a FIFO or a link
    between discovery and reading.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if src.named else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(src.path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(0, f"over the {max_bytes}-byte limit")
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- conversion


@dataclass
class Document:
    """Plain text of one source and anchors mapping it back to the original file's characters."""

    name: str
    text: str
    title: str = ""
    # (offset in text, offset in the original) at every place where copying starts again
    anchors: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])

    def original_offset(self, pos: int) -> int:
        i = bisect.bisect_right(self.anchors, (pos, float("inf"))) - 1
        out0, orig0 = self.anchors[max(i, 0)]
        if i + 1 < len(self.anchors):  # replaced text maps no further than the next anchor
            return min(orig0 + pos - out0, self.anchors[i + 1][1])
        return orig0 + pos - out0

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return self.original_offset(start), max(self.original_offset(end), self.original_offset(start))


def decode_text(data: bytes) -> str | None:
    """UTF-8 text (a BOM dropped), or None for binary / undecodable bytes."""
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def convert(name: str, text: str, kind: str) -> Document:
    """Plain text from ``text`` of the given kind (text, markdown, rst or html)."""
    if kind == "html":
        return _html_to_text(name, text)
    if kind == "rst":
        out, anchors = _rewrite(text, _RST, _rst_repl)
        return Document(name, out, _rst_title(out) or _stem(name), anchors)
    if kind == "markdown":
        out, anchors = _rewrite(text, _MD, _md_repl)
        return Document(name, out, _md_title(text) or _stem(name), anchors)
    return Document(name, text, _stem(name))


def _stem(name: str) -> str:
    base = os.path.basename(name)
    for suffix in (".rst.txt", ".md.txt"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]


def _rewrite(text: str, pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str]) -> tuple[str, list]:
    """One pass of ``pattern.sub(repl, text)`` that records where copying resumes."""
    parts: list[str] = []
    anchors = [(0, 0)]
    out = last = 0
    for m in pattern.finditer(text):
        parts.append(text[last : m.start()])
        out += m.start() - last
        new = repl(m)
        parts.append(new)
        if new != m.group(0):
            anchors.append((out, m.start()))
            out += len(new)
            anchors.append((out, m.end()))
        else:
            out += len(new)
        last = m.end()
    parts.append(text[last:])
    return "".join(parts), anchors


# reStructuredText: directives become their argument (".. function:: getcwd()" -> "getcwd()"),
# roles their text (":func:`~os.getcwd`" -> "os.getcwd"), section underlines and targets vanish.
_RST = re.compile(
    r"(?P<under>^([=\-~^\"'*+#`:.])\2{2,}[ \t]*$)"
    r"|(?P<target>^[ \t]*\.\. _[^:\n]*:.*$)"
    r"|(?P<directive>^(?P<indent>[ \t]*)\.\. (?P<dname>[\w:-]+)::[ \t]?)"
    r"|(?P<field>^(?P<findent>[ \t]+):[\w-]+:(?:[ \t]|$))"
    r"|(?P<role>:(?P<rname>[\w:.+-]+):`[~!]?(?P<rtext>[^`<]*?)\s*(?:<[^`>]*>)?`)"
    r"|(?P<literal>``(?P<ltext>[^`\n]+)``)",
    re.M,
)
_ADMONITIONS = {"note", "warning", "seealso", "versionadded", "versionchanged", "deprecated", "tip",
                "important", "caution", "attention", "hint", "impl-detail"}  # fmt: skip


def _rst_repl(m: re.Match[str]) -> str:
    if m.group("under") is not None or m.group("target") is not None:
        return ""
    if m.group("directive") is not None:
        dname = m.group("dname").split(":")[-1]
        label = {
            "seealso": "See also: ",
            "versionadded": "New in version ",
            "versionchanged": "Changed in version ",
            "deprecated": "Deprecated since version ",
        }
        if dname in _ADMONITIONS:
            return m.group("indent") + label.get(dname, dname.capitalize() + ": ")
        return m.group("indent")
    if m.group("field") is not None:
        return m.group("findent")
    if m.group("role") is not None:
        prefix = {"pep": "PEP ", "rfc": "RFC "}.get(m.group("rname"), "")
        return prefix + m.group("rtext")
    return m.group("ltext")


def _rst_title(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()[:200]
    return ""


_MD = re.compile(
    r"(?P<fence>^[ \t]*(```|~~~).*$)"
    r"|(?P<head>^#{1,6}[ \t]+)"
    r"|(?P<link>!?\[(?P<ltext>[^\]\n]*)\]\([^)\n]*\))",
    re.M,
)


def _md_repl(m: re.Match[str]) -> str:
    if m.group("link") is not None:
        return m.group("ltext")
    return ""


def _md_title(text: str) -> str:
    m = re.search(r"^#{1,6}[ \t]+(.+)$", text, re.M)
    return m.group(1).strip()[:200] if m else ""


class _HTMLText(HTMLParser):
    """Text outside script/style, block tags as line breaks, with anchors to the source."""

    BLOCK: ClassVar[set[str]] = set(
        [
            "p",
            "div",
            "br",
            "li",
            "ul",
            "ol",
            "tr",
            "table",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "pre",
            "section",
            "article",
            "header",
            "footer",
            "dt",
            "dd",
            "blockquote",
            "hr",
        ]
    )
    SKIP: ClassVar[set[str]] = {"script", "style", "template", "noscript"}

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.parts: list[str] = []
        self.anchors: list[tuple[int, int]] = [(0, 0)]
        self.out = 0
        self.skipping = 0
        self.title = ""
        self._in_title = False

    def _pos(self) -> int:
        line, col = self.getpos()
        return self.line_starts[line - 1] + col

    def _tail(self) -> str:
        return self.parts[-1][-2:] if self.parts else "\n\n"

    def _emit(self, text: str) -> None:
        self.anchors.append((self.out, self._pos()))
        self.parts.append(text)
        self.out += len(text)

    def _newlines(self, n: int) -> None:
        """Line breaks for a block tag, never more than one blank line in a row."""
        have = len(self._tail()) - len(self._tail().rstrip("\n"))
        if n > have:
            self._emit("\n" * (n - have))

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self._newlines(2 if tag in ("p", "div", "section", "pre") or tag[0] == "h" else 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self._newlines(1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self.skipping and not (data.isspace() and self._tail().endswith("\n")):
            self._emit(data)


def _html_to_text(name: str, source: str) -> Document:
    parser = _HTMLText(source)
    parser.feed(source)
    parser.close()
    title = " ".join(parser.title.split()) or _stem(name)
    return Document(name, "".join(parser.parts), title[:200], parser.anchors)


# --------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets into the converted text
    end: int
    text: str


_PARA = re.compile(r"\n[ \t]*\n\s*")
_SENT = re.compile(r"(?<=[.!?:;])\s+(?=\S)|\n(?=\s*[-*+•] )|\n(?=[ \t]*\S)")


def _units(text: str, size: int) -> list[tuple[int, int, bool]]:
    """Sentence-sized spans ``(start, end, starts_paragraph)``; none longer than ``size``."""
    units: list[tuple[int, int, bool]] = []
    pos = 0
    for para_end, next_start in [(m.start(), m.end()) for m in _PARA.finditer(text)] + [
        (len(text), len(text))
    ]:
        para = (pos, para_end)
        first = True
        s = para[0]
        cuts = [m.start() for m in _SENT.finditer(text, para[0], para[1])] + [para[1]]
        for cut in cuts:
            if cut > s and text[s:cut].strip():
                for a, b in _hard_split(text, s, cut, size):
                    units.append((a, b, first))
                    first = False
            s = cut
            while s < para[1] and text[s].isspace():
                s += 1
        pos = next_start
    return units


def _hard_split(text: str, start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    """Cut a span longer than ``size`` at the last whitespace before each limit."""
    while end - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        cut = cut if cut > start else start + size
        yield start, cut
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        yield start, end


def chunk_text(text: str, size: int = 1000, overlap: int = 150) -> list[Chunk]:
    """Cut ``text`` into chunks of at most ``size`` characters on paragraph, then sentence,
    boundaries; consecutive chunks share up to ``overlap`` characters of whole sentences.

    ``chunk_text("One. Two.\\n\\nThree.", size=10, overlap=0)`` ->
    ``[Chunk(0, 9, "One. Two."), Chunk(11, 17, "Three.")]``
    """
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("need size >= 1 and 0 <= overlap < size")
    units = _units(text, size)
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j = i + 1
        # grow while it fits; stop early at a paragraph break once the chunk is half full
        while j < len(units) and units[j][1] - units[i][0] <= size:
            if units[j][2] and units[j - 1][1] - units[i][0] >= size // 2:
                break
            j += 1
        start, end = units[i][0], units[j - 1][1]
        chunks.append(Chunk(start, end, text[start:end]))
        if j >= len(units):
            break
        back = j
        while back - 1 > i and end - units[back - 1][0] <= overlap:
            back -= 1
        i = back
    return chunks
