"""Shared fixtures: tiny hand-built word vectors, an isolated model store, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

DATA = Path(__file__).parent / "data"

# A hand-built table where the analogy has one right answer: dims are (royal, male, female, plural).
TABLE = {
    "king": [1.0, 1.0, 0.0, 0.0],
    "man": [0.0, 1.0, 0.0, 0.0],
    "woman": [0.0, 0.0, 1.0, 0.0],
    "queen": [1.0, 0.0, 1.0, 0.0],
    "kings": [1.0, 1.0, 0.0, 1.0],
    "prince": [0.8, 0.9, 0.0, 0.1],
}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty model store; nothing reads the user's cache."""
    home = tmp_path_factory.mktemp("nlpkit-home")
    monkeypatch.setenv("NLPKIT_HOME", str(home))
    for var in ("NLPKIT_AUTO_PULL", "NLPKIT_VECTORS", "NLPKIT_QUIET", "NLPKIT_DEBUG", "NLPKIT_OUTPUT"):
        monkeypatch.delenv(var, raising=False)
    from nlpkit.io.talk import set_quiet

    set_quiet(False)  # a CliRunner test with -q must not silence the tests after it
    return home


@pytest.fixture
def table_path(tmp_path: Path) -> str:
    """The hand-built table as an nlpkit vectors file."""
    from nlpkit.vectors.wordvectors import WordVectors

    wv = WordVectors(list(TABLE), np.array(list(TABLE.values()), dtype=np.float32))
    path = str(tmp_path / "table.safetensors")
    wv.save(path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_cli(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run nlpkit as a real process (as a user's shell would)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nlpkit", *args],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def sigterm_after_logging(
    args: list[str], log: Path, lines: int, env: dict[str, str] | None = None, poll: float = 0.02
) -> tuple[int, bytes, bytes]:
    """Start a training process, send it SIGTERM once its ``log`` (train.jsonl) has ``lines``
    lines, and wait for it: its exit status, stdout and stderr."""
    import signal
    import time

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().count("\n") >= lines):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(poll)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT folder (config.json, model.safetensors, tokenizer.json): tests/bert_fixture.py."""
    from tests.bert_fixture import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
