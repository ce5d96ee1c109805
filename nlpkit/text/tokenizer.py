"""Tokenizers: load, save, encode and decode, over Hugging Face ``tokenizers``.

A tokenizer is a ``tokenizer.json`` (the Hugging Face format, so ``transformers`` loads ours and
we load theirs); ``load`` also takes a model folder, a named asset, or a GGUF file, whose
byte-level BPE is rebuilt from its metadata (``from_gguf``). Encoding and decoding stream
records in batches (``encode_records``, ``decode_records``); each record keeps its fields.

    tok = load("smollm2-135m-instruct")  # rebuilt from the model's .gguf
    tok.encode("to be").tokens  # -> ['to', 'Ġbe']

Training (``train``, ``TrainConfig``) is in tokenizer_train.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError, InputMissing, UsageError
from nlpkit.io.gguf_tokenizer import from_gguf

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from nlpkit.io.records import RecordBatch


SPECIAL_POLICIES = ("allow", "deny", "error")


# --------------------------------------------------------------------------- loading and saving


def load(spec: str) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json``, a model folder, a ``.gguf`` file, or a named
    asset (``minilm-l6-v2``, ``smollm2-135m-instruct``)."""
    path = Path(spec)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        from nlpkit.io.gguf import is_gguf

        return from_gguf(path) if is_gguf(path) else _load_json(path)
    from nlpkit.store.assets import asset_dir, is_asset_name

    if is_asset_name(spec):
        return _load_folder(asset_dir(spec))
    raise InputMissing(
        "no such tokenizer",
        where=spec,
        hint="give a tokenizer.json, a model folder, a .gguf file, or a named asset (nlpkit models list)",
    )


def _load_folder(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return _load_json(folder / "tokenizer.json")
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return from_gguf(ggufs[0])
    what = "several .gguf files" if ggufs else "no tokenizer.json or .gguf file"
    raise InputMissing(f"{what} in the folder", where=str(folder), hint="name the file itself with -t")


def _load_json(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on any malformed file
        raise DataError(f"not a tokenizer.json ({str(e)[:200]})", where=str(path)) from None


def to_json(tok: Tokenizer) -> bytes:
    """The tokenizer.json bytes: the same tokenizer always gives the same bytes."""
    return tok.to_str(pretty=True).encode("utf-8") + b"\n"


# --------------------------------------------------------------------------- reading text


def read_batches(
    paths: list[str], *, field: str = "text", fmt: str = "auto", size: int = 1000
) -> Iterator[RecordBatch]:
    """``formats.read_record_batches`` over ``paths``, where ``auto`` reads ``.txt`` files as
    plain text: a play or a program may well have a line starting with ``{``."""
    from nlpkit.io.records import read_record_batches

    count = 0
    for path in paths:
        file_fmt = "text" if fmt == "auto" and path.endswith(".txt") else fmt
        for batch in read_record_batches(path, field=field, fmt=file_fmt, size=size, allow_empty=True):
            count += len(batch.records)
            yield batch
    if count == 0:
        names = ", ".join("<stdin>" if p == "-" else p for p in paths)
        raise DataError("empty input: no records", where=names, hint="give at least one line of text")


# --------------------------------------------------------------------------- encoding


def special_ids(tok: Tokenizer) -> set[int]:
    """Ids of the tokenizer's special added tokens (``<|im_start|>``, ``[CLS]``...)."""
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}


def encode_records(
    tok: Tokenizer,
    batches: Iterable[RecordBatch],
    *,
    special: str = "allow",
    add_special: bool = True,
    check_roundtrip: bool = False,
    ids_only: bool = False,
    max_length: int | None = None,
) -> Iterator[tuple[bytes, int]]:
    """Encode batches of records; yield ``(jsonl_bytes, n_records)`` per batch, in order.

    Each record keeps its fields and gains ``ids``, ``tokens`` and ``offsets`` (character
    offsets into its text: ``text[start:end]`` is the token's text); ``ids_only`` writes
    ``"1 2 3"`` lines instead. ``special`` says what special-token strings *in the text*
    become: ``allow`` their special ids, ``deny`` plain text, ``error`` a DataError naming
    FILE:LINE. ``add_special`` runs the tokenizer's template ([CLS] ... [SEP]). Records are
    never padded (a tokenizer.json's padding is for model batches); ``max_length`` truncates,
    and otherwise nothing is cut, whatever truncation the tokenizer.json asks for.

    Speed (the CLI must keep >= 0.8x the library's bare ``encode_batch``): ``encode_batch``
    runs in Rust on its own threads (``RAYON_NUM_THREADS``) without the GIL, so a worker
    thread encodes batch k+1 while this one serializes batch k; and the cyclic garbage
    collector is paused meanwhile: the millions of short-lived lists and tuples per run
    (none in a cycle) otherwise cost a third as much as the encoding itself.
    """
    import gc
    from concurrent.futures import Future, ThreadPoolExecutor

    if special not in SPECIAL_POLICIES:
        raise UsageError(f"--special {special!r} is not one of {', '.join(SPECIAL_POLICIES)}")
    tok.encode_special_tokens = special == "deny"
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    check = _Checks(tok, special == "error", check_roundtrip, add_special)
    serialize = _Serializer(tok, ids_only)
    pending: tuple[RecordBatch, Future[Any]] | None = None
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="nlpkit-encode") as pool:
            for batch in batches:
                job = pool.submit(tok.encode_batch, batch.texts, add_special_tokens=add_special)
                if pending is not None:
                    yield _finish(*pending, check, serialize)
                pending = (batch, job)
            if pending is not None:
                yield _finish(*pending, check, serialize)
    finally:
        if gc_was_on:
            gc.enable()


def _finish(batch: RecordBatch, job: Any, check: _Checks, serialize: _Serializer) -> tuple[bytes, int]:
    encodings = job.result()
    check(batch, encodings)
    return serialize(batch, encodings), len(encodings)


class _Serializer:
    """Records (or id lines) for a batch of encodings, as bytes.

    Token strings come from a list of the vocabulary (``itemgetter`` picks them in C and
    reuses the same ``str`` objects) instead of ``Encoding.tokens``, which builds a new string
    per token: that halves the Python-side cost of ids + tokens. A token is always its id's
    vocabulary entry (``id_to_token``), added tokens included.
    """

    def __init__(self, tok: Tokenizer, ids_only: bool):
        import orjson

        self.ids_only = ids_only
        self.vocab = [tok.id_to_token(i) for i in range(tok.get_vocab_size(with_added_tokens=True))]
        self.dumps, self.newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE

    def __call__(self, batch: RecordBatch, encodings: list[Any]) -> bytes:
        from operator import itemgetter

        if self.ids_only:
            return "".join([" ".join(map(str, enc.ids)) + "\n" for enc in encodings]).encode()
        dumps, newline, vocab, parts = self.dumps, self.newline, self.vocab, []
        for record, enc in zip(batch.records, encodings, strict=True):
            ids = enc.ids
            tokens = itemgetter(*ids)(vocab) if len(ids) > 1 else [vocab[i] for i in ids]
            record["ids"], record["tokens"], record["offsets"] = ids, tokens, enc.offsets
            parts.append(dumps(record, option=newline))
        return b"".join(parts)


class _Checks:
    """``--special error`` and ``--check-roundtrip``, each naming the first failing line."""

    def __init__(self, tok: Tokenizer, specials: bool, roundtrip: bool, add_special: bool):
        self.tok, self.roundtrip = tok, roundtrip
        self.special_ids = special_ids(tok) if specials else set()
        # Tokens the template added ([CLS], [SEP]) are not part of the text.
        self.template = add_special and tok.num_special_tokens_to_add(is_pair=False) > 0

    def __call__(self, batch: RecordBatch, encodings: list[Any]) -> None:
        if self.special_ids:
            for i, (text, enc) in enumerate(zip(batch.texts, encodings, strict=True)):
                self._no_specials(batch, i, text, enc)
        if self.roundtrip:
            ids = [self._text_ids(enc) for enc in encodings]
            decoded = self.tok.decode_batch(ids, skip_special_tokens=False)
            for i, (text, back) in enumerate(zip(batch.texts, decoded, strict=True)):
                if back != text:
                    raise DataError(
                        f"round trip fails: {_first_difference(text, back)}",
                        where=batch.where(i),
                        hint="this tokenizer is lossy on this text (normalizer, [UNK], spacing)",
                    )

    def _no_specials(self, batch: RecordBatch, i: int, text: str, enc: Any) -> None:
        if self.special_ids.isdisjoint(enc.ids):
            return
        for t, (s, e) in zip(enc.ids, enc.offsets, strict=True):
            if t in self.special_ids and e > s:
                raise DataError(
                    f"special token {text[s:e]!r} in the text at character {s}",
                    where=batch.where(i),
                    hint="use --special deny to encode it as plain text, or --special allow",
                )

    def _text_ids(self, enc: Any) -> list[int]:
        if not self.template:
            return list(enc.ids)
        return [t for t, m in zip(enc.ids, enc.special_tokens_mask, strict=True) if not m]


def _first_difference(want: str, got: str) -> str:
    i = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
    return f"at character {i}: expected {want[i : i + 20]!r}, decoded {got[i : i + 20]!r}"


# --------------------------------------------------------------------------- decoding


def read_ids(paths: Iterable[str], field: str = "ids") -> Iterator[tuple[str, dict[str, Any]]]:
    """Records with a list of token ids in ``field``: JSONL, or plain lines ``1 2 3``."""
    from nlpkit.io.records import iter_lines, parse_record

    count = 0
    for path in paths:
        for where, line in iter_lines(path):
            if line.lstrip().startswith("{"):
                record = parse_record(line, where)
                ids = record.get(field)
                if not isinstance(ids, list) or not all(type(i) is int for i in ids):
                    raise DataError(f"field {field!r} must be a list of integers", where=where)
            else:
                try:
                    record = {field: [int(x) for x in line.split()]}
                except ValueError:
                    raise DataError(
                        "expected token ids separated by spaces, or a JSON record", where=where
                    ) from None
            count += 1
            yield where, record
    if count == 0:
        raise DataError("empty input: no records", hint="give token ids, one sequence per line")


def decode_records(
    tok: Tokenizer,
    records: Iterable[tuple[str, dict[str, Any]]],
    *,
    field: str = "ids",
    out_field: str = "text",
    skip_special: bool = False,
    batch_size: int = 1000,
) -> Iterator[list[dict[str, Any]]]:
    """Decode ``record[field]`` into ``record[out_field]``, a batch of records at a time."""
    size = tok.get_vocab_size(with_added_tokens=True)
    batch: list[dict[str, Any]] = []
    for where, record in records:
        ids = record[field]
        if ids and (min(ids) < 0 or max(ids) >= size):
            bad = next(i for i in ids if not 0 <= i < size)
            raise DataError(f"token id {bad} is outside the vocabulary (0..{size - 1})", where=where)
        batch.append(record)
        if len(batch) >= batch_size:
            yield _decoded(tok, batch, field, out_field, skip_special)
            batch = []
    if batch:
        yield _decoded(tok, batch, field, out_field, skip_special)


def _decoded(
    tok: Tokenizer, batch: list[dict[str, Any]], field: str, out_field: str, skip_special: bool
) -> list[dict[str, Any]]:
    texts = tok.decode_batch([r[field] for r in batch], skip_special_tokens=skip_special)
    for record, text in zip(batch, texts, strict=True):
        record[out_field] = text
    return batch
