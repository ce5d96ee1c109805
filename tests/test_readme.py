"""The README's commands stay true.

1. Every ``nlpkit`` command in the README's shell blocks names a real (sub)command, and every
   option it passes is one that command takes (parsed by the CLI's own parser, not run).
2. The tour's commands that need no downloaded model run for real, as written, on tiny
   fixtures (the hand-built word table as the default vectors, a small corpus): exit 0 and
   the output the README's comment promises, where it promises one. Long budgets
   (``--max-time 300``) are the one thing changed, to a few steps.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def shell_lines(text: str) -> list[str]:
    """Every command of every ```sh block: continuation lines and open quotes joined."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:
                continue  # a quote still open: the command goes on
            lines.append(pending)
            pending = ""
        assert not pending, f"unbalanced quotes in the README: {pending}"
    return lines


def nlpkit_calls(line: str) -> list[list[str]]:
    """The argument lists of the nlpkit commands in one shell line (pipes, &&, redirections)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    tokens = list(lex)
    calls, current = [], []
    for tok in [*tokens, ";"]:
        if tok in ("|", "||", "&&", ";", "&", "(", ")"):
            if current:
                calls.append(current)
            current = []
        else:
            current.append(tok)
    out = []
    for call in calls:
        words: list[str] = []
        skip = False
        for tok in call:
            if skip:
                skip = False
            elif tok in ("<", ">", ">>", "&>"):
                skip = True  # the redirection's file
                if words and words[-1] in ("1", "2"):
                    words.pop()  # 2>file
            elif not words and "=" in tok and not tok.startswith("-"):
                continue  # VAR=value before the command
            else:
                words.append(tok)
        if words and (words[0] == "nlpkit" or words[0].endswith("/nlpkit")):
            out.append(words[1:])
    return out


def readme_calls() -> list[list[str]]:
    return [call for line in shell_lines(README.read_text(encoding="utf-8")) for call in nlpkit_calls(line)]


def test_the_readme_has_many_commands() -> None:
    calls = readme_calls()
    assert len(calls) > 60, len(calls)
    assert ["analogy", "king", "-", "man", "+", "woman"] in calls


def test_every_readme_command_and_option_exists() -> None:
    """Each call resolves to a command; its options and argument count parse with the CLI's own
    parser (values that name files the README assumes, absent here, are let through)."""
    import typer

    from nlpkit.cli.main import app

    try:  # typer >= 0.26 carries its own copy of click
        from typer._click import core as click_core
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - older typer on the real click
        import click.core as click_core
        import click.exceptions as click_errors

    root = typer.main.get_command(app)
    failures = []
    for args in readme_calls():
        cmd, rest, name = root, list(args), "nlpkit"
        while hasattr(cmd, "list_commands") and rest and not rest[0].startswith("-"):
            sub = cmd.get_command(click_core.Context(cmd), rest[0])
            if sub is None:
                failures.append(f"{shlex.join(args)}: no command {rest[0]!r} under {name}")
                break
            cmd, name = sub, f"{name} {rest.pop(0)}"
        else:
            if hasattr(cmd, "list_commands") and not rest:
                continue
            try:
                cmd.make_context(name, [a for a in rest if a != "--help"])
            except (click_errors.BadParameter, click_errors.MissingParameter):
                pass  # a value: a file the README names that does not exist here (options parse first)
            except click_errors.UsageError as e:  # no such option or command, too many arguments
                failures.append(f"{shlex.join(args)}: {e.format_message()}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- run for real

# README lines that run here as they are, and what each must print (a regex over stdout; None:
# exit 0 is the promise). The test first checks each line is still in the README, word for word.
RUN = {
    "nlpkit analogy king - man + woman -k 3": r"queen",
    "nlpkit analogy --eval questions-words.txt --restrict-vocab 300000": r'"accuracy": ?1(\.0)?\b',
    "nlpkit similar --eval wordsim353.tsv": r'"spearman"',
    "nlpkit analogy king - man + woman | jq .results": r'"word": "queen"',
    "printf 'man king woman\\nparis france rome\\n' | nlpkit analogy -k 1": r'"queen".*\n.*"italy"',
    "printf 'frog\\nparis\\n' | nlpkit similar -k 5 -f text": r"frog\ttoad",
    'echo \'{"id": 7, "text": "king"}\' | nlpkit embed | jq \'.vector[:3]\'': r"^\[\n\s+1(\.0)?,",
    "nlpkit embed -i words.txt -o words.safetensors": None,
    "nlpkit convert glove.6B.50d.txt -o glove.safetensors": None,
    "nlpkit tokenize train corpus/ --vocab-size 8000 -o tokenizer.json": None,
    'echo "Shall I compare thee" | nlpkit tokenize encode -t tokenizer.json': r'"ids": ?\[',
    "nlpkit tokenize encode -t tokenizer.json -i text.jsonl | nlpkit tokenize decode -t tokenizer.json": (
        r"Shall I compare thee to a summer's day"
    ),
    "nlpkit train-word2vec -i corpus/ --arch skipgram -o my.safetensors --seed 1": None,
    "nlpkit similar --vectors my.safetensors romeo -k 3 -f text": None,
    'nlpkit word2vec-pairs --arch cbow --window 2 "the quick brown fox jumps"': r'"target": ?"quick"',
    "nlpkit word2vec-pairs -i corpus/ --seed 1 | head": None,
    "nlpkit train-transformer shakespeare/ -o shakespeare-lm --preset small --max-time 300": None,
    "nlpkit train-lstm shakespeare/ -o shakespeare-lstm --max-time 300": None,
    'nlpkit generate shakespeare-lm "ROMEO:" --max-new-tokens 200 --temperature 0.8 --seed 1': r"ROMEO:",
    "nlpkit eval shakespeare-lm held-out.txt": r'"perplexity": ?[0-9]',
    "nlpkit plot shakespeare-lm/train.jsonl -o curves.svg": None,
    "nlpkit train-transformer --arch encoder-decoder pairs.jsonl -o rev": None,
}
# what a line runs with here beyond its own words: a few steps instead of the README's budget
BUDGET = {
    "--max-time 300": "--max-steps 3 --eval-interval 3",
    "-o rev": "-o rev --max-steps 3 --eval-interval 3",
}
# the tour's order matters: later lines read what earlier ones wrote


def _readme_line(command: str, text: str) -> str:
    for line in shell_lines(text):
        if line.split(" #")[0].strip() == command:
            return command
    raise AssertionError(f"the README no longer shows: {command}")


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq (the README's JSON tool) is not installed")
def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import numpy as np

    from nlpkit.vectors.wordvectors import WordVectors

    text = README.read_text(encoding="utf-8")
    # a hand-built table with the tour's words: dims royal, male, female, plural, capital,
    # French, Italian, amphibian
    table = {
        "king": [1, 1, 0, 0, 0, 0, 0, 0], "man": [0, 1, 0, 0, 0, 0, 0, 0], "woman": [0, 0, 1, 0, 0, 0, 0, 0],
        "queen": [1, 0, 1, 0, 0, 0, 0, 0], "prince": [0.8, 0.9, 0, 0.1, 0, 0, 0, 0],
        "paris": [0, 0, 0, 0, 1, 1, 0, 0], "france": [0, 0, 0, 0, 0, 1, 0, 0],
        "rome": [0, 0, 0, 0, 1, 0, 1, 0], "italy": [0, 0, 0, 0, 0, 0, 1, 0],
        "frog": [0, 0, 0, 0, 0, 0, 0, 1], "toad": [0, 0.1, 0, 0, 0, 0, 0, 0.9],
    }  # fmt: skip
    table_path = str(tmp_path / "table.safetensors")
    WordVectors(list(table), np.array(list(table.values()), dtype=np.float32)).save(table_path)
    corpus = (
        "From fairest creatures we desire increase , that thereby beauty's rose might never die .\n"
        "Shall I compare thee to a summer's day ? Thou art more lovely and more temperate .\n"
        "Romeo and Juliet , Romeo and Tybalt , Juliet and the nurse , Romeo and Mercutio .\n"
    ) * 40
    for folder in ("corpus", "shakespeare"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text(corpus, encoding="utf-8")
    (tmp_path / "words.txt").write_text("king\nqueen\nman\n", encoding="utf-8")
    (tmp_path / "held-out.txt").write_text("Shall I compare thee to a summer's day ?\n", encoding="utf-8")
    (tmp_path / "questions-words.txt").write_text(
        ": royal\nman king woman queen\n: capitals\nfrance paris italy rome\n"
    )
    (tmp_path / "wordsim353.tsv").write_text(
        "king\tqueen\t8.5\nking\tman\t6.0\nfrog\ttoad\t9.0\nfrog\tparis\t0.5\n"
    )
    pairs = [
        {"input": w, "output": w[::-1]} for w in ("abc", "hello", "world", "stone", "river", "light") * 5
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (tmp_path / "text.jsonl").write_text(
        json.dumps({"text": "Shall I compare thee to a summer's day?"}) + "\n"
    )
    (tmp_path / "glove.6B.50d.txt").write_text("king 0.1 0.2 0.3\nqueen 0.3 0.2 0.1\n", encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "nlpkit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nlpkit "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "NLPKIT_VECTORS": table_path,
           "PYTHONPATH": str(README.parent)}  # fmt: skip
    for command, expect in RUN.items():
        line = _readme_line(command, text)
        for budget, quick in BUDGET.items():
            line = line.replace(budget, quick)
        line = line.replace("--vocab-size 8000", "--vocab-size 300")  # the fixture corpus is small
        r = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        # exit 1, silently, is the contract when a reader such as head stops reading early
        closed = r.returncode == 1 and "| head" in line and "error" not in r.stderr
        assert r.returncode == 0 or closed, (line, r.returncode, r.stderr[-2000:])
        if expect is not None:
            assert re.search(expect, r.stdout, flags=re.M), (line, r.stdout[:2000])
    assert "<svg" in (tmp_path / "curves.svg").read_text()
