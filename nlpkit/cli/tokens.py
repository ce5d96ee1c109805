"""Tokenizer commands: nlpkit tokenize train | encode | decode."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import (
    Field,
    InputFormat,
    Inputs,
    Output,
    OutputFormat,
    Quiet,
    TokenizerSpec,
    Wait,
    inputs_or_stdin,
    wants_text,
)
from nlpkit.io.limits import LIMITS

tokenize_app = typer.Typer(
    help="Train tokenizers (BPE, WordPiece, Unigram, WordLevel, char) and encode or decode records.",
    no_args_is_help=True,
)
app.add_typer(tokenize_app, name="tokenize", rich_help_panel="Tokenizers")

BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Records per encode_batch / decode_batch call.")
]


@tokenize_app.command("train")
def train_cmd(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Files or folders (all regular files inside, sorted).")
    ] = None,
    inputs: Inputs = None,
    output: Output = "tokenizer.json",
    model: Annotated[
        str, typer.Option("--model", help="bpe, wordpiece, unigram, wordlevel or char.")
    ] = "bpe",
    vocab_size: Annotated[
        int,
        typer.Option(
            "--vocab-size", min=1, max=LIMITS["vocab_size"], help="Tokens in the vocabulary, all included."
        ),
    ] = 8000,
    min_frequency: Annotated[
        int | None,
        typer.Option(
            "--min-frequency",
            min=0,
            max=2**32 - 1,
            help="Learn no pair/word/char seen fewer times (default 2; not for unigram).",
        ),
    ] = None,
    special_tokens: Annotated[
        list[str] | None,
        typer.Option(
            "--special-token", "-s", help="A special token (repeatable; replaces the model's defaults)."
        ),
    ] = None,
    unk_token: Annotated[
        str | None,
        typer.Option("--unk-token", help="The unknown token (default: [UNK] or <unk>, per model)."),
    ] = None,
    normalizer: Annotated[
        str, typer.Option("--normalizer", help="none, or comma-separated nfc, nfd, nfkc, nfkd, lowercase.")
    ] = "none",
    pre_tokenizer: Annotated[
        str | None,
        typer.Option(
            "--pre-tokenizer",
            help="byte-level (default, lossless), metaspace (SentencePiece-style) or whitespace (lossy).",
        ),
    ] = None,
    field: Field = "text",
    input_format: InputFormat = "auto",
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Train a tokenizer on text and write its tokenizer.json (byte-level BPE by default).

    Input: plain lines or JSONL records with "text", from files, folders or
    stdin (.txt files are always plain text). Training streams: memory grows
    with the number of distinct words (about 1 KB each), not with the size of
    the corpus. The same corpus and options always give a byte-identical
    tokenizer.json.
    -o FOLDER writes FOLDER/tokenizer.json.

    Example: nlpkit tokenize train corpus/ --vocab-size 8000 -o tokenizer.json
    """
    import contextlib
    import os
    import sys
    import time

    from nlpkit.io.files import lock_for, open_output_binary
    from nlpkit.io.talk import is_quiet as quiet_now
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.text.tokenizer import to_json
    from nlpkit.text.tokenizer_train import TrainConfig, train_from_paths

    set_quiet(quiet)
    config = TrainConfig(
        model=model,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        unk_token=unk_token,
        normalizer=normalizer,
        pre_tokenizer=pre_tokenizer,
        # The library's bars also print blank lines on stdout: only when both are terminals.
        show_progress=not quiet_now() and sys.stderr.isatty() and sys.stdout.isatty(),
    )
    sources = [*(paths or []), *(inputs or [])] or ["-"]
    if output != "-" and os.path.isdir(output):
        output = os.path.join(output, "tokenizer.json")
    start = time.monotonic()
    with lock_for(output, wait) if output != "-" else contextlib.nullcontext():
        tok, stats = train_from_paths(sources, config, field=field, fmt=input_format)
        with open_output_binary(output) as f:
            f.write(to_json(tok))
    say(
        f"trained {model}: {tok.get_vocab_size()} tokens from {stats.records} records "
        f"({stats.chars / 1e6:.1f}M characters) in {time.monotonic() - start:.1f}s -> {output}"
    )


@tokenize_app.command("encode")
def encode_cmd(
    tokenizer: TokenizerSpec,
    inputs: Inputs = None,
    output: Output = "-",
    special: Annotated[
        str,
        typer.Option(
            "--special",
            help="Special-token strings in the text: allow (their ids), deny (plain text), error (exit 65).",
        ),
    ] = "allow",
    add_special: Annotated[
        bool,
        typer.Option(
            "--add-special/--no-add-special", help="Add the tokenizer's template ([CLS] ... [SEP])."
        ),
    ] = True,
    check_roundtrip: Annotated[
        bool,
        typer.Option(
            "--check-roundtrip", help="Check decode(encode(x)) == x; exit 65 at the first failing line."
        ),
    ] = False,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", min=1, help="Truncate to N tokens (default: never truncate)."),
    ] = None,
    field: Field = "text",
    batch_size: BatchSize = 128,
    input_format: InputFormat = "auto",
    fmt: OutputFormat = "auto",
    quiet: Quiet = False,
) -> None:
    """Encode records: each gains "ids", "tokens" and "offsets" (character spans).

    text[start:end] is each token's text. Records are never padded, and only
    truncated with --max-length. -f text writes only the ids,
    space-separated, one line per record (what decode reads back). .txt files
    are always plain text. Batches run on the tokenizers library's threads
    (RAYON_NUM_THREADS).

    Example: echo 'Hello world' | nlpkit tokenize encode -t minilm-l6-v2
    """
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import Progress, set_quiet
    from nlpkit.text.tokenizer import encode_records, load, read_batches

    set_quiet(quiet)
    tok = load(tokenizer)
    batches = read_batches(inputs_or_stdin(inputs), field=field, fmt=input_format, size=batch_size)
    stream = encode_records(
        tok,
        batches,
        special=special,
        add_special=add_special,
        check_roundtrip=check_roundtrip,
        ids_only=wants_text(fmt),
        max_length=max_length,
    )
    with RecordWriter(output) as out, Progress("encoding", unit=" records", output=output) as progress:
        for data, n in stream:
            out.write_lines(data, n)
            progress.advance(n)


@tokenize_app.command("decode")
def decode_cmd(
    tokenizer: TokenizerSpec,
    inputs: Inputs = None,
    output: Output = "-",
    field: Annotated[str, typer.Option("--field", help="Record field holding the ids.")] = "ids",
    into: Annotated[str, typer.Option("--into", help="Record field the decoded text goes into.")] = "text",
    skip_special: Annotated[
        bool, typer.Option("--skip-special", help="Leave special tokens ([CLS], <|im_end|>) out of the text.")
    ] = False,
    batch_size: BatchSize = 128,
    fmt: OutputFormat = "auto",
    quiet: Quiet = False,
) -> None:
    """Decode token ids back to text: JSONL records with "ids", or lines of ids.

    Records keep their fields and gain (or replace) "text". -f text writes
    only the text.

    Example: nlpkit tokenize encode -t tok.json < a.txt |
    nlpkit tokenize decode -t tok.json -f text
    """
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import set_quiet
    from nlpkit.text.tokenizer import decode_records, load, read_ids

    set_quiet(quiet)
    tok = load(tokenizer)
    batches = decode_records(
        tok,
        read_ids(inputs_or_stdin(inputs), field),
        field=field,
        out_field=into,
        skip_special=skip_special,
        batch_size=batch_size,
    )
    text = wants_text(fmt)
    with RecordWriter(output) as out:
        for batch in batches:
            if text:
                out.write_lines("".join(r[into] + "\n" for r in batch).encode(), len(batch))
            else:
                out.write_all(batch)
