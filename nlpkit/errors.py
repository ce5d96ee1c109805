"""The one exception family of nlpkit.

Library code raises these and never exits the process; ``nlpkit.cli`` turns them into
one stderr line (``nlpkit: error: WHERE: what is wrong; what to do``) and the exit code
below. ``NLPKIT_DEBUG=1`` re-raises them with the traceback instead.

Exit codes (sysexits.h where one fits):

====  ==========================================================
0     ok
1     runtime failure
2     usage: a bad flag or argument
65    bad input data (malformed JSON, NaN, wrong dimension, ...)
66    input missing (a file, a model, a named asset not pulled)
69    optional dependency or device unavailable
74    I/O error (disk full, permission denied while writing)
75    locked by another run (try again later)
130   interrupted (Ctrl-C)
143   stopped by SIGTERM after a clean checkpoint
====  ==========================================================
"""

from __future__ import annotations

EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "runtime failure",
    2: "usage error: a bad flag or argument",
    65: "bad input data",
    66: "input missing (file, model, or named asset not pulled)",
    69: "optional dependency or device unavailable",
    74: "I/O error",
    75: "locked by another run",
    130: "interrupted",
    143: "stopped by SIGTERM after a clean checkpoint",
}


class NlpkitError(Exception):
    """An error meant for the person at the terminal (or the cron log).

    ``where`` is a place such as ``FILE:LINE``; ``hint`` says what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}; {self.hint}" if self.hint else text


class UsageError(NlpkitError):
    exit_code = 2


class DataError(NlpkitError):
    exit_code = 65


class InputMissing(NlpkitError):
    exit_code = 66


class Unavailable(NlpkitError):
    exit_code = 69


class IOFailure(NlpkitError):
    exit_code = 74


class Locked(NlpkitError):
    exit_code = 75


class Interrupted(NlpkitError):
    exit_code = 130


class Stopped(NlpkitError):
    exit_code = 143
