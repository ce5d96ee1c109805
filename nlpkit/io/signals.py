"""Stop signals for long runs: SIGTERM or a first Ctrl-C ask a training loop to checkpoint and
stop at its next step (the language-model loop, PPO, word2vec); a second Ctrl-C interrupts."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """SIGTERM or a first Ctrl-C set ``signum``; the loop checkpoints and stops at the next step.
    A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
