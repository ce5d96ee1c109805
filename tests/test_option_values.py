"""Hostile option values for the training commands (issue 18, the property-based half of "every
option validated"): every numeric option of ``train-transformer``, ``train-lstm``,
``train-word2vec`` and ``tokenize train`` is fed random values (huge, negative, NaN, infinity,
not a number at all) under a memory limit. Each run either trains (exit 0, finite numbers in
its records) or stops with a usage, data or out-of-memory error in one line: never a traceback,
never NaN in the output, never memory until the kernel steps in."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nlpkit.cli.main import app
from tests.test_gguf_bounds import GiB, memory_headroom

CORPUS = "the quick brown fox jumps over the lazy dog and the cat sat on the mat\n" * 60

# each command, the arguments of a quick run, and options kept out of the draw: the run's own
# budget (drawn huge, a valid budget is a long run, not an error: steps, time, epochs, and
# --grad-accum, micro-batches per step) and --threads (set to 1: the test shares the machine)
COMMANDS: dict[str, tuple[list[str], set[str]]] = {
    "train-lstm": (["--max-steps", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                    "--eval-iters", "1", "--threads", "1"], {"--max-steps", "--max-time", "--grad-accum", "--threads"}),
    "train-transformer": (["--preset", "tiny", "--max-steps", "1", "--n-embd", "16", "--n-head", "2",
                           "--block-size", "16", "--batch-size", "4", "--eval-iters", "1", "--threads", "1"],
                          {"--max-steps", "--max-time", "--grad-accum", "--threads"}),
    "train-word2vec": (["--epochs", "1", "--vector-size", "8", "--threads", "1"], {"--epochs", "--threads"}),
    "tokenize train": (["--vocab-size", "300"], {"--threads"}),
}  # fmt: skip
HOSTILE_TEXT = ["nan", "-nan", "inf", "-inf", "1e308", "-1e308", "1e-320", "-0", "0", "1", "2", "-1", "",
                " ", "abc", "0x10", "1_000", "٣", "9" * 40, "-" + "9" * 40, "1.5", "0.999999"]  # fmt: skip


def numeric_options(command: str) -> list[tuple[str, str]]:
    """(flag, "int" | "float") of every option of ``command`` that takes a number."""
    import typer

    root = typer.main.get_command(app)
    cmd: Any = root
    for word in command.split():
        cmd = cmd.get_command(None, word)
    found = []
    for p in cmd.params:
        kind = getattr(p.type, "name", "")
        flags = [o for o in getattr(p, "opts", []) if o.startswith("--")]
        if (
            flags
            and not getattr(p, "is_flag", False)
            and kind in ("int", "integer", "int range", "float", "float range")
        ):
            found.append((flags[0], "int" if kind.startswith("int") else "float"))
    return found


def values() -> Any:
    return st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(HOSTILE_TEXT),
    )


def _run(tmp: Path, command: str, flag: str, value: str) -> Any:
    base, _ = COMMANDS[command]
    out = tmp / f"out{abs(hash((flag, value))) % 10**9}"
    out_arg = str(out) + (
        ".json" if command == "tokenize train" else ".safetensors" if "word2vec" in command else ""
    )
    args = [
        *command.split(),
        str(tmp / "corpus.txt") if command != "train-word2vec" else "-i",
    ]
    if command == "train-word2vec":
        args.append(str(tmp / "corpus.txt"))
    args += ["-o", out_arg, *base, flag, value, "-q"]
    runner = CliRunner()
    with memory_headroom(3 * GiB):
        return runner.invoke(app, args, catch_exceptions=True), args


def _check(result: Any, args: list[str]) -> None:
    where = " ".join(args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"{where}: {type(result.exception).__name__}: {result.exception}"
        ) from result.exception
    text = result.output
    assert "Traceback" not in text, (where, text)
    assert result.exit_code in (0, 1, 2, 65), (where, result.exit_code, text)
    if result.exit_code == 0:
        for line in result.stdout.splitlines():
            record = json.loads(line)  # JSON: bare NaN / Infinity would parse, so check the numbers
            for v in record.values():
                assert not (isinstance(v, float) and not math.isfinite(v)), (where, line)
            assert not re.search(r"\bNaN\b|\bInfinity\b", line), (where, line)
    elif result.exit_code == 1:
        assert "out of memory" in text, (where, text)  # the one runtime failure a value may cause
    else:
        assert "nlpkit: error: " in text or "Invalid value" in text or "Error" in text, (where, text)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("options")
    (tmp / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    return tmp


@pytest.mark.parametrize("command", list(COMMANDS))
def test_numeric_options_are_found(command: str) -> None:
    flags = [f for f, _ in numeric_options(command)]
    assert len(flags) >= 2, flags  # the draw below covers real options, not none


@pytest.mark.parametrize("command", list(COMMANDS))
def test_hostile_option_values_give_a_clean_exit(command: str, corpus_dir: Path) -> None:
    options = [f for f, _ in numeric_options(command) if f not in COMMANDS[command][1]]

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(flag=st.sampled_from(options), value=values())
    @example(flag=options[0], value="nan")
    @example(flag=options[-1], value="-1")
    def check(flag: str, value: str) -> None:
        result, args = _run(corpus_dir, command, flag, value)
        _check(result, args)

    check()
