"""Talking on stderr: quiet mode, one-line messages, progress (a bar on a terminal,
rate-limited lines otherwise)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

STDIO = "-"


# --------------------------------------------------------------------------- talk (stderr)


def _env_quiet() -> bool:
    return os.environ.get("NLPKIT_QUIET", "") not in ("", "0")


_quiet = _env_quiet()


def set_quiet(quiet: bool) -> None:
    """``-q`` (or ``NLPKIT_QUIET=1``): silence everything on stderr but errors."""
    global _quiet
    _quiet = quiet or _env_quiet()


def is_quiet() -> bool:
    return _quiet


def say(message: str) -> None:
    """A summary or warning for people: stderr only, never stdout, silent under ``-q``."""
    if not _quiet:
        print(f"nlpkit: {message}", file=sys.stderr, flush=True)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class Progress:
    """Progress on stderr: a rich bar on a terminal, a plain line every ``every`` s otherwise.

    ``with Progress("embedding", total=n) as p: p.advance(k)``. Rich is told not to
    redirect stdout, so data written to stdout never mixes with the bar.
    """

    def __init__(
        self,
        description: str,
        total: float | None = None,
        unit: str = "",
        every: float = 10.0,
        output: str | None = None,
    ):
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.output = output  # where the command's data goes: "-" on a terminal hides the bar
        self.done = 0.0
        self._rich: Any = None
        self._task: Any = None
        self._start = self._last = time.monotonic()

    def __enter__(self) -> Progress:
        # No bar while data streams to the same terminal: the lines would tear it apart.
        if not _quiet and _stderr_is_terminal() and not (self.output == STDIO and sys.stdout.isatty()):
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            console = Console(stderr=True, no_color="NO_COLOR" in os.environ)
            self._rich = RichProgress(
                *RichProgress.get_default_columns(),
                console=console,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total)
        return self

    def advance(self, n: float = 1.0, **fields: Any) -> None:
        self.done += n
        if self._rich is not None:
            desc = self.description + "".join(f" {k}={v}" for k, v in fields.items())
            self._rich.update(self._task, advance=n, description=desc)
        elif not _quiet and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            self._plain_line(fields)

    def _plain_line(self, fields: dict[str, Any]) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        of = f"/{self.total:g}" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        rate = f"{self.done / elapsed:.1f}{self.unit}/s"
        say(f"{self.description}: {self.done:g}{of}{self.unit} ({rate}){extra}")

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()


def with_progress(
    items: Iterable[Any], description: str, total: float | None = None, output: str | None = None
) -> Iterator[Any]:
    """Pass ``items`` through, counting them on a progress display (stderr, terminal only)."""
    with Progress(description, total=total, output=output) as progress:
        for item in items:
            yield item
            progress.advance(1)
