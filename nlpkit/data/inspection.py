"""Checking a user's own fine-tuning file: which shape it is written in, how many records,
which are malformed (each named ``FILE:LINE``), which repeat, and how long they are in tokens;
optionally rewriting the good records in a standard shape.

Reads JSONL (one record per line) or one JSON array (``[{...}, ...]``, as Alpaca and ShareGPT
ship), streamed either way. A problem never stops the check: every one is reported and counted.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from nlpkit.data.shapes import FIELDS, INPUT_SHAPES, SHAPES, ShapeError, convert, detect, json_type, problems
from nlpkit.errors import DataError, UsageError

Record = dict[str, Any]
PERCENTILES = (50, 90, 95, 99)
SHAPE_SAMPLE = 1000  # records read before deciding the file's shape (the most common among them)


@dataclass
class FileReport:
    """What ``inspect_file`` found in one file (``as_record`` is its JSONL form)."""

    file: str
    shape: str | None = None
    records: int = 0
    good: int = 0
    shapes: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (FILE:LINE, what)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (FILE:LINE, of FILE:LINE)
    tokens: list[int] = field(default_factory=list)

    def as_record(self) -> Record:
        out: Record = {
            "file": self.file,
            "shape": self.shape,
            "records": self.records,
            "good": self.good,
            "problems": len(self.problems),
            "duplicates": len(self.duplicates),
            "shapes": dict(self.shapes),
        }
        if self.tokens:
            out["tokens"] = token_stats(self.tokens)
        return out


def token_stats(lengths: list[int]) -> Record:
    """Count, mean, nearest-rank percentiles and max of token lengths."""
    ordered = sorted(lengths)
    n = len(ordered)
    stats: Record = {"count": n, "mean": round(sum(ordered) / n, 1)}
    for p in PERCENTILES:
        stats[f"p{p}"] = ordered[max(0, -(-p * n // 100) - 1)]
    stats["max"] = ordered[-1]
    return stats


def read_file(path: str, report: FileReport) -> Iterator[tuple[str, Any]]:
    """``(FILE:LINE, value)`` for each record of a JSONL file or a JSON array; lines that are not
    JSON become problems of ``report`` (an array that breaks off ends the file, reported)."""
    from nlpkit.io.records import open_input

    name = "<stdin>" if path == "-" else path
    with open_input(path) as f:
        head = f.peek(64)[:64] if hasattr(f, "peek") else b""
        if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":
            yield from _array(f, name, report)
            return
    yield from _jsonl(path, name, report)


def _array(f: Any, name: str, report: FileReport) -> Iterator[tuple[str, Any]]:
    from nlpkit.data.json_array import Tail, iter_array

    tail = Tail()
    try:
        for line, value in iter_array(f, name, tail):
            yield f"{name}:{line}", value
    except DataError as e:  # past a syntax error in an array nothing can be trusted: stop here
        report.problems.append((e.where or name, f"{e.message}; the rest of the file was not read"))
        return
    if tail.line is not None:
        report.problems.append((f"{name}:{tail.line}", "the array breaks off here (file truncated?)"))


def _jsonl(path: str, name: str, report: FileReport) -> Iterator[tuple[str, Any]]:
    from nlpkit.io.records import iter_lines

    for where, line in iter_lines(path):
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as e:
            report.records += 1  # a record, if a broken one
            report.problems.append((where, f"invalid JSON ({e.msg})"))


def inspect_file(
    path: str,
    *,
    to: str | None = None,
    dedupe: bool = False,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    emit: Callable[[Record], None] | None = None,
) -> FileReport:
    """Check every record of ``path`` against the file's shape (the shape most of its first
    ``SHAPE_SAMPLE`` records have); ``to``: convert each good record and hand it to ``emit``;
    ``dedupe``: leave repeats out of what is emitted; ``count_tokens``: the token length of each
    good record's text."""
    if to is not None and to not in SHAPES:
        raise UsageError(f"unknown shape {to!r}", hint=f"use {', '.join(SHAPES)}")
    report = FileReport("<stdin>" if path == "-" else path)
    records = _records(path, report)
    head = list(itertools.islice(records, SHAPE_SAMPLE))  # the file's shape: most of these have it
    report.shape = report.shapes.most_common(1)[0][0] if report.shapes else None
    seen: dict[bytes, str] = {}
    texts: list[str] = []  # waiting to be counted, in batches

    def count_waiting() -> None:
        if count_tokens is not None and texts:
            report.tokens += count_tokens(texts)
            texts.clear()

    for where, record, shape in itertools.chain(head, records):
        bad = _check(record, shape, report.shape)
        converted = None
        if not bad and shape is not None and to is not None:
            try:
                converted = convert(record, shape, to)
            except ShapeError as e:
                bad = [f"cannot be rewritten as {to}: {e}"]
        if bad or shape is None:  # (no shape is one of the problems)
            report.problems.extend((where, b) for b in bad)
            continue
        report.good += 1
        key = hashlib.sha256(
            orjson.dumps({f: record.get(f) for f in FIELDS[shape]}, option=orjson.OPT_SORT_KEYS)
        ).digest()
        if key in seen:
            report.duplicates.append((where, seen[key]))
            if dedupe:
                continue
        else:
            seen[key] = where
        if count_tokens is not None:
            texts.append(convert(record, shape, "completion")["text"])
            if len(texts) >= 1000:
                count_waiting()
        if converted is not None and emit is not None:
            emit(converted)
    count_waiting()
    if report.records == 0 and not report.problems:
        report.problems.append((f"{report.file}:1", "no records: the file is empty"))
    report.problems.sort(key=lambda p: _line_of(p[0]))
    return report


def _records(path: str, report: FileReport) -> Iterator[tuple[str, Record, str | None]]:
    for where, value in read_file(path, report):
        report.records += 1
        if not isinstance(value, dict):
            report.problems.append((where, f"expected a JSON object, not {json_type(value)}"))
            continue
        shape = detect(value)
        if shape is not None:
            report.shapes[shape] += 1
        yield where, value, shape


def _check(record: Record, shape: str | None, file_shape: str | None) -> list[str]:
    if shape is None:
        fields = ", ".join(sorted(record)) or "none"
        return [f"no known shape (fields: {fields}); expected one of {', '.join(INPUT_SHAPES)}"]
    if shape != file_shape:
        return [f"a {shape} record in a file of {file_shape} records"]
    return problems(record, shape)


def _line_of(where: str) -> int:
    tail = where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


# --------------------------------------------------------------------------- the command's work


def inspect_files(
    paths: list[str],
    *,
    tokenizer: str | None = None,
    to: str | None = None,
    dedupe: bool = False,
    output: str = "-",
    text: bool = False,
    quiet: bool = False,
) -> list[Record]:
    """``nlpkit data inspect``: check each file, list every problem on stderr as
    ``FILE:LINE: what``, and write one report record per file (to stdout; to stderr as text
    with ``to``, whose converted records go to ``output``). Returns the reports."""
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    if to is not None and to not in SHAPES:
        raise UsageError(f"unknown --to shape {to!r}", hint=f"use {', '.join(SHAPES)}")
    count_tokens = _token_counter(tokenizer) if tokenizer else None
    reports = []
    with RecordWriter(output) as out:  # the converted records with --to, else the reports
        for path in paths:
            report = inspect_file(
                path, to=to, dedupe=dedupe, count_tokens=count_tokens, emit=out.write if to else None
            )
            _tell(report, dedupe and to is not None)
            reports.append(report.as_record())
            if to is None and not text:
                out.write(reports[-1])
    if to is not None or text:
        _summary(reports, to_stderr=to is not None)
    return reports


def _token_counter(spec: str) -> Callable[[list[str]], list[int]]:
    from nlpkit.text.tokenizer import load

    tok = load(spec)

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    return count


MAX_LISTED = 1000  # problems listed per file on stderr (all are counted)


def _tell(report: FileReport, deduped: bool) -> None:
    """Every problem (up to ``MAX_LISTED``) and the duplicates, one line each, on stderr."""
    import sys

    from nlpkit.io.talk import is_quiet

    for where, what in report.problems[:MAX_LISTED]:
        print(f"nlpkit: {where}: {what}", file=sys.stderr)  # listed even under -q: they are errors
    if len(report.problems) > MAX_LISTED:
        print(
            f"nlpkit: {report.file}: ... and {len(report.problems) - MAX_LISTED} more problems",
            file=sys.stderr,
        )
    if not is_quiet():
        for where, first in report.duplicates[:20]:
            print(f"nlpkit: {where}: duplicate of {first}", file=sys.stderr)
        if len(report.duplicates) > 20:
            print(
                f"nlpkit: {report.file}: ... and {len(report.duplicates) - 20} more duplicates",
                file=sys.stderr,
            )
        if report.duplicates and deduped:
            print(
                f"nlpkit: {report.file}: {len(report.duplicates)} duplicates left out (--dedupe)",
                file=sys.stderr,
            )
    sys.stderr.flush()


def _summary(reports: list[Record], to_stderr: bool) -> None:
    import sys

    from nlpkit.io.talk import is_quiet

    if to_stderr and is_quiet():
        return
    stream = sys.stderr if to_stderr else sys.stdout
    for r in reports:
        line = (
            f"{r['file']}: {r['shape'] or 'unknown'} shape, {r['records']} records, {r['good']} good, "
            f"{r['problems']} problems, {r['duplicates']} duplicates"
        )
        if "tokens" in r:
            t = r["tokens"]
            line += f"; tokens p50 {t['p50']} p90 {t['p90']} p95 {t['p95']} p99 {t['p99']} max {t['max']}"
        print(("nlpkit: " if to_stderr else "") + line, file=stream, flush=True)
