"""Word-vector commands: embed (words), analogy, similar, convert."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nlpkit.cli import app
from nlpkit.cli.options import (
    InputFormat,
    Inputs,
    Output,
    OutputFormat,
    Quiet,
    TopK,
    Vectors,
    inputs_or_stdin,
    wants_text,
)

DEFAULT_VECTORS = "glove-6b-50d"
Oov = Annotated[
    str, typer.Option("--oov", help="Unknown words: error (exit 65), skip, or zero (embed only).")
]
Restrict = Annotated[
    int, typer.Option("--restrict-vocab", min=0, help="Search only the N most frequent words (0: all).")
]
FoldCase = Annotated[
    bool, typer.Option("--fold-case/--no-fold-case", help="Try the lower-case form of unknown words.")
]
Method = Annotated[str, typer.Option("--method", help="add (3CosAdd) or mul (3CosMul).")]
Field = Annotated[str, typer.Option("--field", help="Record field holding the word(s).")]


def _records(words: list[str] | None, inputs: list[str] | None, fmt: str, field: str = "text") -> Any:
    """Words given as arguments, else records from -i FILE or stdin."""
    from nlpkit.formats import read_records

    if words:
        return ((f"<argument {i + 1}>", {field: w}) for i, w in enumerate(words))
    return read_records(inputs_or_stdin(inputs), field=field, fmt=fmt, string=False)


@app.command("embed")
def embed_cmd(
    words: Annotated[
        list[str] | None, typer.Argument(help="Words (default: lines or JSONL from -i / stdin).")
    ] = None,
    inputs: Inputs = None,
    output: Output = "-",
    vectors: Vectors = DEFAULT_VECTORS,
    oov: Oov = "error",
    field: Field = "text",
    fold_case: FoldCase = True,
    input_format: InputFormat = "auto",
    quiet: Quiet = False,
) -> None:
    """Word vectors for words: JSONL records (input fields + "vector"), or one matrix.

    A record whose FIELD is a list of words (tokenizer output) gets "vectors". With
    -o FILE.safetensors the vectors are written as one nlpkit vectors file instead.

    Example: echo king | nlpkit embed | jq '.vector[:3]'
    """
    from nlpkit.formats import RecordWriter, set_quiet, with_progress
    from nlpkit.vectors import WordVectors, embed_records, load_vectors

    set_quiet(quiet)
    wv = load_vectors(vectors)
    records = with_progress(_records(words, inputs, input_format, field), "embedding", output=output)
    stream = embed_records(wv, records, field, oov, fold_case)
    if output.endswith(".safetensors"):
        import numpy as np

        kept, rows = [], []
        for _, ws, matrix in stream:
            kept += ws
            rows.append(matrix)
        WordVectors(kept, np.concatenate(rows) if rows else np.zeros((0, wv.dim), np.float32)).save(output)
        return
    with RecordWriter(output) as out:
        for record, _, _ in stream:
            out.write(record)


@app.command("analogy")
def analogy_cmd(
    terms: Annotated[
        list[str] | None,
        typer.Argument(help="An analogy such as: king - man + woman (spaces around + and -)."),
    ] = None,
    k: TopK = 10,
    method: Method = "add",
    restrict_vocab: Restrict = 0,
    fold_case: FoldCase = True,
    vectors: Vectors = DEFAULT_VECTORS,
    eval_file: Annotated[
        str | None,
        typer.Option("--eval", help="Evaluate on a questions-words file; JSON accuracy report on stdout."),
    ] = None,
    inputs: Inputs = None,
    input_format: InputFormat = "auto",
    oov: Oov = "error",
    fmt: OutputFormat = "auto",
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    """Solve word analogies: nlpkit analogy king - man + woman  ->  queen.

    Any number of + and - terms; three bare words "a b c" mean a is to b as c is to ?.
    Without TERMS, questions come from -i / stdin, one per line (text or JSONL with "text",
    or "positive"/"negative" lists), one result record each. --eval reports per-section
    and total accuracy as gensim's evaluate_word_analogies computes it (use
    --restrict-vocab 300000 to match its default).
    """
    from nlpkit.formats import set_quiet
    from nlpkit.vectors import load_vectors

    set_quiet(quiet)
    wv = load_vectors(vectors)
    if eval_file:
        from nlpkit.vectors import evaluate_analogies

        _write_report(evaluate_analogies(wv, eval_file, restrict_vocab, fold_case, method), output)
        return
    _answer(
        wv,
        terms,
        inputs,
        input_format,
        fmt,
        output,
        k=k,
        method=method,
        restrict=restrict_vocab,
        fold_case=fold_case,
        oov=oov,
    )


@app.command("similar")
def similar_cmd(
    words: Annotated[
        list[str] | None, typer.Argument(help="Words (default: lines or JSONL from -i / stdin).")
    ] = None,
    k: TopK = 10,
    restrict_vocab: Restrict = 0,
    fold_case: FoldCase = True,
    vectors: Vectors = DEFAULT_VECTORS,
    eval_file: Annotated[
        str | None,
        typer.Option(
            "--eval", help="Evaluate on word pairs with human scores (wordsim353 / simlex999 format)."
        ),
    ] = None,
    inputs: Inputs = None,
    input_format: InputFormat = "auto",
    oov: Oov = "error",
    fmt: OutputFormat = "auto",
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    """Nearest neighbours by cosine: nlpkit similar frog -k 5.

    --eval FILE reports Spearman (and Pearson) correlation with human similarity scores,
    computed as gensim's evaluate_word_pairs does (tab-separated, '#' lines skipped).
    """
    from nlpkit.formats import set_quiet
    from nlpkit.vectors import load_vectors

    set_quiet(quiet)
    wv = load_vectors(vectors)
    if eval_file:
        from nlpkit.vectors import evaluate_word_pairs

        _write_report(evaluate_word_pairs(wv, eval_file, restrict_vocab, fold_case), output)
        return
    _answer(
        wv,
        words,
        inputs,
        input_format,
        fmt,
        output,
        k=k,
        restrict=restrict_vocab,
        fold_case=fold_case,
        oov=oov,
        neighbours=True,
    )


def _answer(
    wv: Any,
    terms: list[str] | None,
    inputs: list[str] | None,
    input_format: str,
    fmt: str,
    output: str,
    **options: Any,
) -> None:
    from nlpkit.formats import RecordWriter, read_records, with_progress
    from nlpkit.vectors import answer_records, parse_expression

    if terms and not options.get("neighbours"):
        parse_expression(terms)  # a malformed expression on the command line is a usage error
        records = iter([("<arguments>", {"text": " ".join(terms)})])
    elif terms:
        records = ((f"<argument {i + 1}>", {"text": w}) for i, w in enumerate(terms))
    else:
        records = read_records(
            inputs_or_stdin(inputs), fmt=input_format, required=bool(options.get("neighbours"))
        )
    results = answer_records(wv, with_progress(records, "querying", output=output), **options)
    if wants_text(fmt) and output == "-":
        single = terms and not options.get("neighbours")
        for rec in results:
            for r in rec["results"]:
                print(
                    f"{r['word']}\t{r['score']:.4f}"
                    if single
                    else f"{rec['text']}\t{r['word']}\t{r['score']:.4f}"
                )
        return
    with RecordWriter(output) as out:
        out.write_all(results)


def _write_report(report: dict[str, Any], output: str) -> None:
    import json

    from nlpkit.formats import STDIO, write_bytes_atomic

    text = json.dumps(report, indent=2) + "\n"
    if output == STDIO:
        print(text, end="")
    else:
        write_bytes_atomic(output, text.encode())


@app.command("convert")
def convert_cmd(
    source: Annotated[
        str, typer.Argument(help="Vectors: a named asset, .safetensors, GloVe or word2vec file.")
    ],
    output: Annotated[str, typer.Option("-o", "--output", help="Output FILE (written atomically).")],
    to: Annotated[
        str, typer.Option("--to", help="auto (by extension), nlpkit, glove, word2vec, word2vec-bin.")
    ] = "auto",
    source_format: Annotated[
        str, typer.Option("--from", help="auto, nlpkit, glove, word2vec or word2vec-bin.")
    ] = "auto",
    quiet: Quiet = False,
) -> None:
    """Convert word vectors between nlpkit safetensors, GloVe text and word2vec text/binary.

    Every row is validated on the way in. Example: nlpkit convert glove.txt -o glove.safetensors
    """
    from nlpkit.formats import say, set_quiet
    from nlpkit.vectors import load_vectors, save_as

    set_quiet(quiet)
    wv = load_vectors(source, source_format)
    save_as(wv, output, to)
    say(f"wrote {len(wv)} vectors of {wv.dim} dims to {output}")
