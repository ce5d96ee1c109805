"""train.py and corpus.py: data, schedule, the loop, checkpoints, resume, SIGTERM, DDP, eval, plot."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.errors import DataError, InputMissing, UsageError  # noqa: E402
from nlpkit.io.tensors import load_tensors  # noqa: E402
from nlpkit.lm.train.checkpoint import load_checkpoint  # noqa: E402
from nlpkit.lm.train.config import TrainConfig, resolve_configs  # noqa: E402
from nlpkit.lm.train.data import TokenStream, char_tokenizer, encode_stream, read_texts  # noqa: E402
from nlpkit.lm.train.evaluate import eval_model  # noqa: E402
from nlpkit.lm.train.loop import train  # noqa: E402
from tests.conftest import sigterm_after_logging  # noqa: E402

DATA = Path(__file__).parent / "data"
SONNETS = str(DATA / "sonnets-tiny.txt")
FAST = {"threads": 1, "device": "cpu", "log_interval": 5, "eval_interval": 10, "eval_iters": 2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NLPKIT_DEBUG": ""}


def fit(out: Path, arch: str = "llama", data: str = SONNETS, **overrides: Any) -> dict[str, Any]:
    return train([data], out, arch=arch, preset="tiny", overrides=FAST | overrides)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- data


def test_char_tokenizer_round_trips_and_maps_unseen_characters_to_unk() -> None:
    tok = char_tokenizer(["to be, or not", "that is\tthe question"])
    assert tok.decode(tok.encode("or not to be").ids) == "or not to be"
    assert tok.encode("z!").ids == [tok.token_to_id("<unk>")] * 2
    assert [tok.token_to_id(t) for t in ("<pad>", "<unk>", "<bos>", "<eos>")] == [0, 1, 2, 3]
    assert tok.get_vocab_size() == 4 + len(set("to be, or notthat is\tthe question\n"))


def test_stream_joins_records_with_newlines_and_windows_cover_every_target() -> None:
    tok = char_tokenizer(["abc", "de"])
    stream = encode_stream(tok, ["abc", "de"] * 20)
    assert tok.decode(stream[:7].tolist()) == "abc\nde\n"
    val = TokenStream(stream, 8, train=False)
    targets = sum(b[1].numel() for b in val.eval_batches(3))
    assert targets == len(stream) - 1
    train_set = TokenStream(stream, 8, seed=1)
    x, y = train_set.batch(0, np.arange(len(train_set)))
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (len(train_set), 8)
    again = TokenStream(stream, 8, seed=1).batch(0, np.arange(4))[0]
    assert torch.equal(again, x[:4]) and not torch.equal(train_set.batch(1, np.arange(4))[0], x[:4])


def test_read_texts_pairs_need_input_and_output(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"input": "ab", "output": "ba"}\n{"input": "cd"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:2: expected JSONL records"):
        read_texts([str(path)], pairs=True)
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty input"):
        read_texts([str(tmp_path / "blank.txt")])


# --------------------------------------------------------------------------- configuration


def test_presets_and_explicit_flags() -> None:
    model, cfg = resolve_configs("llama", "tiny", {"lr": 0.5, "n_layer": 3})
    assert model["n_layer"] == 3 and model["n_embd"] == 32 and cfg.lr == 0.5 and cfg.max_steps == 200
    with pytest.raises(UsageError, match="unknown --preset 'huge'"):
        resolve_configs("llama", "huge", {})
    with pytest.raises(UsageError, match="--batch-size must be at least 1"):
        TrainConfig(batch_size=0, max_steps=1)
    with pytest.raises(UsageError, match="--max-steps or --max-time"):
        TrainConfig()


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert cfg.lr_at(0, 0) == pytest.approx(1 / 11) and cfg.lr_at(10, 0) == pytest.approx(1.0)
    assert cfg.lr_at(60, 0) == pytest.approx(0.55) and cfg.lr_at(110, 0) == pytest.approx(0.1)
    timed = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, max_time=100)
    assert timed.lr_at(5, 50.0) == pytest.approx(0.5) and timed.lr_at(5, 100.0) == pytest.approx(0.0)


# --------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("arch", ["llama", "lstm"])
def test_loss_decreases_and_the_folder_is_complete(tmp_path: Path, arch: str) -> None:
    summary = fit(tmp_path / "m", arch, max_steps=40, lr=1e-2)
    log = records(tmp_path / "m" / "train.jsonl")
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] - 0.5 and summary["step"] == 40 and summary["val_loss"] < 3.5
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors", "train.jsonl", "checkpoints"} <= names
    assert (tmp_path / "m" / "checkpoints" / "latest").read_text() == "step-00000040.pt\n"


def test_resume_continues_bitwise_identically(tmp_path: Path) -> None:
    common = {"max_steps": 50, "lr_decay_steps": 50, "dropout": 0.1, "checkpoint_interval": 0}
    fit(tmp_path / "a", **common)
    fit(tmp_path / "b", **(common | {"max_steps": 25}))  # crosses an epoch (41 steps) after the stop
    train([SONNETS], tmp_path / "b", resume=True, overrides={"max_steps": 50, "threads": 1})
    a, _ = load_tensors(str(tmp_path / "a" / "model.safetensors"))
    b, _ = load_tensors(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in records(tmp_path / "b" / "train.jsonl") if "loss" in r]
    assert steps == [r["step"] for r in records(tmp_path / "a" / "train.jsonl") if "loss" in r]


def test_resume_refusals(tmp_path: Path) -> None:
    with pytest.raises(InputMissing, match="no checkpoint"):
        train([SONNETS], tmp_path / "m", resume=True)
    fit(tmp_path / "m", max_steps=2)
    with pytest.raises(UsageError, match="already holds a model"):
        fit(tmp_path / "m", max_steps=2)
    with pytest.raises(UsageError, match="--lr cannot change"):
        train([SONNETS], tmp_path / "m", resume=True, overrides={"lr": 0.1})
    log = (tmp_path / "m" / "train.jsonl").read_text()
    same = train(
        [SONNETS], tmp_path / "m", resume=True, overrides={"max_steps": 2, "seed": 1337, "threads": 1}
    )
    assert (
        same.get("already_finished") and (tmp_path / "m" / "train.jsonl").read_text() == log
    )  # nothing appended
    other = tmp_path / "other.txt"
    other.write_text(Path(SONNETS).read_text()[:-100])
    with pytest.raises(DataError, match="differ from the checkpoint"):
        train([str(other)], tmp_path / "m", resume=True, overrides={"max_steps": 4})


def test_encoder_decoder_learns_to_reverse_short_sequences(tmp_path: Path) -> None:
    from nlpkit.llm.generate import Generator, Sampling

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefg") for _ in range(rng.randint(2, 5))) for _ in range(3000)]
    path = tmp_path / "reverse.jsonl"
    path.write_text("".join(json.dumps({"input": w, "output": w[::-1]}) + "\n" for w in words))
    fit(tmp_path / "rev", "seq2seq", str(path), max_steps=250, batch_size=32, lr=5e-3, n_embd=32, n_head=4,
        warmup_steps=20, eval_interval=250)  # fmt: skip
    gen = Generator.load(tmp_path / "rev", "cpu")
    tests = ["abc", "gfed", "bbca", "eag", "dcbag", "fa", "cgeb", "adfg"]
    greedy = Sampling(temperature=0, max_new_tokens=10)
    right = sum(gen.complete(w, greedy) == w[::-1] for w in tests)
    assert right >= 7, [gen.complete(w, greedy) for w in tests]


def test_eval_model_counts_every_target(tmp_path: Path) -> None:
    fit(tmp_path / "m", max_steps=5)
    held = tmp_path / "held.txt"
    held.write_text("Shall I compare thee\nto a summer's day?\n")
    result = eval_model(str(tmp_path / "m"), [str(held)], device="cpu")
    assert result["tokens"] == len(held.read_text()) - 1
    assert result["perplexity"] == pytest.approx(np.exp(result["loss"]))


# --------------------------------------------------------------------------- processes and signals


def test_sigterm_checkpoints_and_exits_143_then_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "m"
    base = [sys.executable, "-m", "nlpkit", "train-transformer", SONNETS, "-o", str(out), "--threads", "1"]
    args = [*base, "--preset", "tiny", "--max-steps", "100000", "--log-interval", "1", "--device", "cpu"]
    returncode, stdout, stderr = sigterm_after_logging(args, out / "train.jsonl", 3, env=ENV, poll=0.05)
    assert returncode == 143, stderr
    line = stderr.decode().strip().splitlines()[-1]
    assert line.startswith(f"nlpkit: error: {out}: stopped by SIGTERM at step ")
    assert line.endswith("; checkpoint saved; continue with --resume") and stdout == b""
    step = load_checkpoint(out)["state"]["step"]
    assert step >= 3
    from nlpkit.lm.model import load_model

    load_model(out)  # model.safetensors matches the checkpoint
    done = subprocess.run(
        [*base, "--resume", "--max-steps", str(step + 2)], capture_output=True, env=ENV, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["step"] == step + 2


def test_two_process_ddp_equals_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    settings = ["--preset", "tiny", "--max-steps", "3", "--threads", "1", "--device", "cpu", "--seed", "7"]
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nlpkit",
            "train-transformer", SONNETS, "-o", str(tmp_path / "ddp"), "--batch-size", "4", *settings]  # fmt: skip
    ddp = subprocess.run([sys.executable, *args], capture_output=True, env=ENV, timeout=180)
    assert ddp.returncode == 0, ddp.stderr.decode()[-2000:]
    assert len(ddp.stdout.splitlines()) == 1  # only rank 0 reports
    train([SONNETS], tmp_path / "one", arch="llama", preset="tiny",
          overrides={"max_steps": 3, "threads": 1, "device": "cpu", "seed": 7, "batch_size": 8})  # fmt: skip
    a, _ = load_tensors(str(tmp_path / "ddp" / "model.safetensors"))
    b, _ = load_tensors(str(tmp_path / "one" / "model.safetensors"))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)  # equal up to the all-reduce's rounding


# --------------------------------------------------------------------------- the CLI


def test_cli_train_prints_one_summary_record(runner: Any, tmp_path: Path) -> None:
    r = runner.invoke(app, ["train-lstm", SONNETS, "-o", str(tmp_path / "m"), "--preset", "tiny",
                            "--max-steps", "3", "--threads", "1", "--device", "cpu", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["step"] == 3 and summary["arch"] == "lstm" and r.stderr == ""


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--preset", "huge"], 2, "unknown --preset 'huge'"),
        (["--max-time", "soon"], 2, "--max-time 'soon' is not a duration"),
        (["--arch", "rnn"], 2, "unknown --arch 'rnn'"),
        (["--arch", "encoder-decoder"], 65, "expected JSONL records"),
        (["--device", "cuda"], 69, "CUDA is not available"),
    ],
)
def test_cli_train_errors(runner: Any, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = runner.invoke(
        app, ["train-transformer", SONNETS, "-o", str(tmp_path / "m"), "--max-steps", "1", *args]
    )
    assert r.exit_code == code, r.output
    assert r.stderr.startswith("nlpkit: error: ") and message in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_without_torch_exits_69(runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    r = runner.invoke(app, ["train-lstm", SONNETS, "-o", str(tmp_path / "m")])
    assert r.exit_code == 69 and "pip install 'nlpkit[torch]'" in r.stderr


def test_cli_eval_and_plot(runner: Any, tmp_path: Path) -> None:
    fit(tmp_path / "m", max_steps=10)
    r = runner.invoke(app, ["eval", str(tmp_path / "m"), SONNETS, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == {"model", "loss", "perplexity", "tokens"}
    r = runner.invoke(app, ["plot", str(tmp_path / "m"), "-o", str(tmp_path / "c.svg")])
    assert r.exit_code == 0, r.output
    import xml.etree.ElementTree as ET

    root = ET.parse(tmp_path / "c.svg").getroot()
    assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    r = runner.invoke(app, ["plot", str(tmp_path / "m"), "-o", str(tmp_path / "c.gif")])
    assert r.exit_code == 2
    (tmp_path / "empty.jsonl").write_text('{"step": 1}\n')
    r = runner.invoke(app, ["plot", str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "e.svg")])
    assert r.exit_code == 65


def test_cli_plot_png(runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "train.jsonl"
    log.write_text('{"step": 10, "loss": 3.0}\n{"step": 20, "loss": 2.5}\n{"step": 20, "val_loss": 2.7}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = runner.invoke(app, ["plot", str(log), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 69 and "nlpkit[plot]" in r.stderr
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    r = runner.invoke(app, ["plot", str(log), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 0 and (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "nan"), ("--beta2", "2"), ("--grad-clip", "-1")],
)
def test_non_finite_and_out_of_range_training_numbers_are_usage_errors(runner, tmp_path, flag, value) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text to train on\n" * 10)
    r = runner.invoke(app, ["train-transformer", str(text), "-o", str(tmp_path / "m"), "--max-steps", "1",
                            flag, value])  # fmt: skip
    assert r.exit_code == 2, r.stderr
    assert flag in r.stderr and not (tmp_path / "m").exists()


def test_a_loss_that_becomes_nan_stops_the_run_without_writing_nan(runner, tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text to train on\n" * 50)
    out = tmp_path / "m"
    r = runner.invoke(app, ["train-transformer", str(text), "-o", str(out), "--max-steps", "6", "--lr", "1e30",
                            "--batch-size", "2", "--block-size", "16",
                            "--log-interval", "1", "--warmup-steps", "0", "--grad-clip", "0"])  # fmt: skip
    assert r.exit_code == 65, r.stderr
    assert "training loss became" in r.stderr and "Traceback" not in r.stderr
    for line in (out / "train.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} written to train.jsonl"))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_recurrent_cells_train_save_load_and_generate(tmp_path: Path, cell: str) -> None:
    from nlpkit.llm.generate import Generator, Sampling
    from nlpkit.lm.config import read_config

    summary = fit(tmp_path / cell, "lstm", max_steps=20, lr=1e-2, cell=cell)
    cfg = read_config(tmp_path / cell)
    assert cfg.cell == cell and summary["step"] == 20
    gen = Generator.load(tmp_path / cell, "cpu")
    assert type(gen.model.lstm).__name__ == cell.upper()
    assert len(gen.complete("From", Sampling(max_new_tokens=5, seed=1))) > 0


def test_lstm_forget_gates_start_open() -> None:
    """The LSTM's forget-gate biases start at 1 (the input-hidden half; PyTorch adds both), the
    other gates keep PyTorch's initialisation: a gap of 20 steps was learned half the time
    without it (bench_rnn.py)."""
    import torch

    from nlpkit.lm.config import ModelConfig
    from nlpkit.lm.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="lstm", n_embd=8, n_layer=2, vocab_size=20))
    for layer in range(2):
        b_ih, b_hh = getattr(model.lstm, f"bias_ih_l{layer}"), getattr(model.lstm, f"bias_hh_l{layer}")
        assert torch.equal(b_ih[8:16] + b_hh[8:16], torch.ones(8))
        assert (
            b_ih[:8].abs().max() < 1 / 8**0.5 + 1e-6 and b_ih[:8].abs().max() > 0
        )  # PyTorch's U(-1/sqrt(H), ..)
    gru = build_model(ModelConfig(arch="lstm", cell="gru", n_embd=8, vocab_size=20))
    assert not torch.equal(gru.lstm.bias_ih_l0[8:16] + gru.lstm.bias_hh_l0[8:16], torch.ones(8))
