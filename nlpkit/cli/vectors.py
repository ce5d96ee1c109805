"""Vector commands: embed (word vectors, or sentence embeddings with -m), analogy, similar, convert."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import (
    Device,
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
    from nlpkit.io.records import read_records

    if words:
        return ((f"<argument {i + 1}>", {field: w}) for i, w in enumerate(words))
    return read_records(inputs_or_stdin(inputs), field=field, fmt=fmt, string=False)


@app.command("embed", rich_help_panel="Word vectors")
def embed_cmd(
    ctx: typer.Context,
    words: Annotated[
        list[str] | None,
        typer.Argument(help="Words, or texts with -m (default: lines or JSONL from -i / stdin)."),
    ] = None,
    inputs: Inputs = None,
    output: Output = "-",
    model: Annotated[
        str | None,
        typer.Option(
            "-m",
            "--model",
            help="Sentence embeddings from this encoder: minilm-l6-v2 or a BERT folder "
            "(config.json, model.safetensors, tokenizer.json). Without it: word vectors.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per batch (-m).")] = 32,
    backend: Annotated[
        str, typer.Option("--backend", help="-m runtime: auto (onnx if installed), onnx or torch.")
    ] = "auto",
    device: Device = "cpu",
    vectors: Vectors = DEFAULT_VECTORS,
    oov: Oov = "error",
    field: Field = "text",
    fold_case: FoldCase = True,
    input_format: InputFormat = "auto",
    quiet: Quiet = False,
) -> None:
    """Word vectors for words, or sentence embeddings for texts with -m: JSONL records or one matrix.

    Word vectors: each record gets "vector" (a list of words, as from the tokenizer, gets
    "vectors"). With -m MODEL each text gets "embedding": mean-pooled, L2-normalised, as
    sentence-transformers computes it (ONNX Runtime by default; the graph is exported once
    and cached in the store). Blank lines are skipped; an empty "text" field is embedded.
    With -o FILE.safetensors the vectors (or the (n, dim) embedding matrix) go to one file.

    Examples: echo king | nlpkit embed | jq '.vector[:3]'
    nlpkit embed -m minilm-l6-v2 -i docs.txt -o docs.safetensors
    """
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    if model is not None:
        _reject_word_options(ctx, ["vectors", "oov", "fold_case"])
        _embed_sentences(model, words, inputs, output, field, input_format, batch_size, backend, device)
        return
    _reject_word_options(ctx, ["batch_size", "backend", "device"], sentence=True)
    _embed_words(words, inputs, output, vectors, oov, field, fold_case, input_format)


def _reject_word_options(ctx: typer.Context, names: list[str], sentence: bool = False) -> None:
    """Flags of the other mode given on the command line are a usage error, not silently ignored."""
    from nlpkit.errors import UsageError

    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            flag = "--" + name.replace("_", "-")
            if sentence:
                raise UsageError(f"{flag} applies to sentence embeddings only", hint="add -m MODEL")
            raise UsageError(f"{flag} applies to word vectors only, not to -m", hint=f"drop {flag}")


def _embed_words(
    words: list[str] | None,
    inputs: list[str] | None,
    output: str,
    vectors: str,
    oov: str,
    field: str,
    fold_case: bool,
    input_format: str,
) -> None:
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import with_progress
    from nlpkit.vectors.wordvectors import WordVectors, embed_records, load_vectors

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


def _embed_sentences(
    model: str,
    texts: list[str] | None,
    inputs: list[str] | None,
    output: str,
    field: str,
    input_format: str,
    batch_size: int,
    backend: str,
    device: str,
) -> None:
    import json

    from nlpkit.embed.encoder import embed_records, load_encoder
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import say, with_progress
    from nlpkit.io.tensors import provenance, save_tensors

    encoder = load_encoder(model, backend=backend, device=device)
    records = with_progress(_records(texts, inputs, input_format, field), "embedding", output=output)
    stream = embed_records(encoder, records, field, batch_size)
    if output.endswith(".safetensors"):
        import numpy as np

        rows = [row for _, row in stream]
        matrix = np.stack(rows) if rows else np.zeros((0, encoder.dim), np.float32)
        config = {"model": encoder.name, "dim": encoder.dim, "max_length": encoder.max_length}
        meta = provenance(
            **{
                "nlpkit.model": encoder.name,
                "nlpkit.dim": str(encoder.dim),
                "nlpkit.config": json.dumps(config),
            }
        )
        save_tensors(output, {"embeddings": matrix}, meta, kind="sentence-embeddings")
        say(f"wrote {len(rows)} embeddings of {encoder.dim} dims to {output}")
        return
    with RecordWriter(output) as out:
        for record, _ in stream:
            out.write(record)


@app.command("analogy", rich_help_panel="Word vectors")
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
    from nlpkit.io.talk import set_quiet
    from nlpkit.vectors.wordvectors import load_vectors

    set_quiet(quiet)
    wv = load_vectors(vectors)
    if eval_file:
        from nlpkit.vectors.evaluate import evaluate_analogies

        _write_report(evaluate_analogies(wv, eval_file, restrict_vocab, fold_case, method), output, fmt)
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


@app.command("similar", rich_help_panel="Word vectors")
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
    from nlpkit.io.talk import set_quiet
    from nlpkit.vectors.wordvectors import load_vectors

    set_quiet(quiet)
    wv = load_vectors(vectors)
    if eval_file:
        from nlpkit.vectors.evaluate import evaluate_word_pairs

        _write_report(evaluate_word_pairs(wv, eval_file, restrict_vocab, fold_case), output, fmt)
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
    from nlpkit.io.records import RecordWriter, read_records
    from nlpkit.io.talk import with_progress
    from nlpkit.vectors.wordvectors import answer_records, parse_expression

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


def _write_report(report: dict[str, Any], output: str, fmt: str = "auto") -> None:
    """One JSON object: indented for a person at a terminal (--format text), else one line."""
    import json

    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.talk import STDIO

    indent = 2 if output == STDIO and wants_text(fmt) else None
    text = json.dumps(report, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    if output == STDIO:
        print(text, end="")
    else:
        write_bytes_atomic(output, text.encode())
