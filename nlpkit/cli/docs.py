"""Generate completions/ and man/nlpkit.1 from the Typer app: ``python -m nlpkit.cli.docs``.

``make docs`` runs this; ``tests/test_docs.py`` fails when the committed files are stale.
The completion scripts call back into ``nlpkit`` (Typer's dynamic completion), which stays
fast because ``import nlpkit.cli`` imports nothing heavy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from nlpkit import __version__

SHELLS = {"bash": "nlpkit.bash", "zsh": "_nlpkit", "fish": "nlpkit.fish"}

ENVIRONMENT = [
    ("NLPKIT_HOME", "The model store (default: the user cache folder, e.g. ~/.cache/nlpkit)."),
    ("NLPKIT_AUTO_PULL", "Set to 1 to pull a missing named asset on first use instead of exiting 66."),
    ("NLPKIT_VECTORS", "Default word vectors for embed, analogy and similar (default glove-6b-50d)."),
    ("NLPKIT_QUIET", "Set to 1 to silence progress and summaries, as -q does."),
    ("NLPKIT_DEBUG", "Set to 1 to get a traceback instead of the one-line error."),
    ("NLPKIT_MAX_LINE_BYTES", "Longest input line accepted (default 8 MiB); longer lines exit 65."),
    ("NLPKIT_SEED", "Default --seed."),
    ("NLPKIT_DEVICE", "Default --device (cpu, cuda, auto)."),
    ("NO_COLOR", "Disable colour on stderr."),
]

EXAMPLES = [
    ("Solve an analogy (prints queen first):", "nlpkit analogy king - man + woman"),
    ("Nearest neighbours of words from a pipe, as JSONL:", "printf 'frog\\nparis\\n' | nlpkit similar -k 3"),
    (
        "Evaluate vectors on the Google analogy set:",
        "nlpkit analogy --eval questions-words.txt --restrict-vocab 300000",
    ),
    ("Word vectors into one safetensors matrix:", "nlpkit embed -i words.txt -o words.safetensors"),
    (
        "A nightly cron line (quiet, exit status mailed by cron on failure):",
        "0 3 * * * nlpkit similar -q -i /srv/words.txt -o /srv/neighbours.jsonl",
    ),
]


def completion_script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="nlpkit", complete_var="_NLPKIT_COMPLETE", shell=shell) + "\n"


def _esc(text: str) -> str:
    lines = text.replace("\\", "\\e").replace("-", "\\-").splitlines()
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in lines)


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    out: list[tuple[list[str], Any]] = []
    commands = getattr(cmd, "commands", None)
    if commands:
        for name in sorted(commands):
            out += _walk(commands[name], [*path, name])
    else:
        out.append((path, cmd))
    return out


def _option_lines(cmd: Any) -> list[str]:
    lines = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        if p.param_type_name == "argument":
            names = (p.name or "").upper()
        else:
            names = ", ".join(p.opts + list(p.secondary_opts))
        lines += [".TP", f"\\fB{_esc(names)}\\fR", _esc(" ".join((getattr(p, "help", None) or "").split()))]
    return lines


def man_page() -> str:
    import typer

    from nlpkit.cli.main import app
    from nlpkit.errors import EXIT_CODES

    root = typer.main.get_command(app)
    out = [
        f'.TH NLPKIT 1 "" "nlpkit {__version__}" "User Commands"',
        ".SH NAME",
        "nlpkit \\- Unix\\-style toolbox for NLP: word vectors, tokenizers, language models, RAG",
        ".SH SYNOPSIS",
        "\\fBnlpkit\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _esc(
            "Each command reads plain text lines or JSONL records (from FILE or -, stdin) and writes "
            "JSONL records on stdout (text for people on a terminal), copying the fields it received "
            "and adding its own, so commands chain in shell pipes. Tensors are safetensors files. "
            "Progress and summaries go to stderr only; errors are one line on stderr and an exit status."
        ),
        ".SH COMMANDS",
    ]
    for path, cmd in _walk(root, []):
        out += [".SS " + _esc("nlpkit " + " ".join(path)), _esc(" ".join((cmd.help or "").split()))]
        out += _option_lines(cmd)
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES.items():
        out += [".TP", f"\\fB{code}\\fR", _esc(meaning)]
    out.append(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT:
        out += [".TP", f"\\fB{name}\\fR", _esc(meaning)]
    out += [
        ".SH FILES",
        ".TP",
        "\\fI$NLPKIT_HOME/models/NAME/\\fR",
        _esc("A pulled asset: its files and asset.json (source wheel and SHA-256 of every file)."),
        ".TP",
        "\\fIOUTPUT.lock\\fR",
        _esc("Advisory lock held while a run writes OUTPUT; a second run exits 75."),
        ".SH EXAMPLES",
    ]
    for what, command in EXAMPLES:
        out += [_esc(what), ".PP", ".nf", ".RS", _esc(command), ".RE", ".fi", ".PP"]
    out += [".SH SEE ALSO", "The README of nlpkit."]
    return "\n".join(out) + "\n"


def expected_files(root: Path) -> dict[Path, str]:
    files = {root / "completions" / name: completion_script(shell) for shell, name in SHELLS.items()}
    files[root / "man" / "nlpkit.1"] = man_page()
    return files


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path, text in expected_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
