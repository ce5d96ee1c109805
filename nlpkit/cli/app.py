"""The nlpkit command line: a Typer app whose commands are thin glue over the library.

Only typer and nlpkit.errors are imported at module level (``nlpkit --help`` and TAB
completion stay fast); every command imports the library module it needs inside its body.
Each command family lives in its own module here and registers itself on ``app``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from nlpkit import __version__
from nlpkit.errors import NlpkitError


class _Root(TyperGroup):
    """Turns every NlpkitError into one stderr line and its exit code (the one place)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NlpkitError as e:
            if os.environ.get("NLPKIT_DEBUG", "") not in ("", "0"):
                raise
            sys.stdout.flush()
            print(f"nlpkit: error: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(e.exit_code) from None
        except (MemoryError, RuntimeError) as e:  # an allocation the machine cannot give: 1, one line
            if not _out_of_memory(e) or os.environ.get("NLPKIT_DEBUG", "") not in ("", "0"):
                raise
            sys.stdout.flush()
            what = "out of memory; lower the sizes (--batch-size, --block-size, the model's width or layers)"
            print(f"nlpkit: error: {what} or use a machine with more memory", file=sys.stderr, flush=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # Ctrl-C: what was written is whole; say so in one line
            if os.environ.get("NLPKIT_DEBUG", "") not in ("", "0"):
                raise
            print("\nnlpkit: interrupted", file=sys.stderr, flush=True)
            raise typer.Exit(130) from None
        except OSError as e:  # the operating system refused a file operation: 74, one line
            import errno

            if isinstance(e, BrokenPipeError) or os.environ.get("NLPKIT_DEBUG", "") not in ("", "0"):
                raise  # a reader that went away (| head) is handled quietly by main()
            where = e.filename or "<stdout>"
            if e.errno in (
                errno.ENOSPC,
                errno.EIO,
                errno.EDQUOT,
                errno.EFBIG,
            ):  # a full disk, a failing device
                what = f"cannot write ({e.strerror})"
            else:  # a read-only place, a missing parent folder, a permission: nothing half-written is left
                what = f"{e.strerror or e}; check that the place exists and is writable (NLPKIT_HOME, -o)"
            print(f"nlpkit: error: {where}: {what}", file=sys.stderr, flush=True)
            raise typer.Exit(74) from None


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, or torch's failed CPU / CUDA allocation (a RuntimeError)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)[:500]
    return "can't allocate memory" in text or "out of memory" in text.lower()


app = typer.Typer(
    name="nlpkit",
    cls=_Root,
    help="Unix-style NLP toolbox: word vectors, tokenizers, language models, RAG. "
    "Commands read text or JSONL on stdin (or FILE) and write JSONL on stdout.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"nlpkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """nlpkit: small commands over word vectors, tokenizers and language models.

    Exit status: 0 ok, 1 failure, 2 usage, 65 bad input data, 66 input missing,
    69 dependency or device unavailable, 74 I/O error, 75 locked, 130 interrupted,
    143 stopped after a checkpoint. Set NLPKIT_DEBUG=1 for tracebacks.
    """
