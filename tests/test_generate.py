"""generate.py and `nlpkit generate`: sampling, determinism, stop strings, streaming, all three models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.errors import UsageError  # noqa: E402
from nlpkit.llm.generate import Generator, Sampling, _held_back, sample_token  # noqa: E402
from nlpkit.lm.config import ModelConfig  # noqa: E402
from nlpkit.lm.model import build_model, save_model  # noqa: E402
from nlpkit.lm.train.data import char_tokenizer, special_ids  # noqa: E402

TEXT = ["From fairest creatures we desire increase,", "That thereby beauty's rose might never die,"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def make_folder(folder: Path, arch: str = "llama", block_size: int = 16) -> Path:
    """An untrained model folder (random weights: enough to test the machinery)."""
    tok = char_tokenizer(TEXT)
    ids = special_ids(tok, add=False)
    eos = ids["eos"] if arch == "seq2seq" else None  # random weights: no early end for the decoders
    cfg = ModelConfig(arch=arch, vocab_size=tok.get_vocab_size(), block_size=block_size, n_layer=1, n_embd=16,
                      n_head=2, bos_id=ids["bos"], eos_id=eos, pad_id=ids["pad"])  # fmt: skip
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(build_model(cfg), cfg, folder)
    (folder / "tokenizer.json").write_text(tok.to_str())
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("gen") / "m")


def test_sampling_rules() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
    g = torch.Generator().manual_seed(0)
    assert sample_token(logits, Sampling(temperature=0), g) == 1
    assert sample_token(logits, Sampling(top_k=1), g) == 1
    assert sample_token(logits, Sampling(top_p=0.01), g) == 1
    drawn = {sample_token(logits, Sampling(top_k=2, temperature=5.0), g) for _ in range(200)}
    assert drawn == {1, 2}
    drawn = {sample_token(logits, Sampling(top_p=0.9, temperature=1.0), g) for _ in range(300)}
    assert drawn == {0, 1, 2}  # p(1)+p(2) = 0.87 < 0.9: the next token (0) is in; 3 is out
    with pytest.raises(UsageError):
        Sampling(top_p=0.0)
    with pytest.raises(UsageError):
        Sampling(stop=[""])


def test_held_back_is_the_longest_start_of_a_stop_string() -> None:
    assert _held_back("the end", ["ending"]) == 3
    assert _held_back("the en", ["END", "n"]) == 0
    assert _held_back("abc", []) == 0


def test_seeded_generation_is_deterministic(folder: Path) -> None:
    gen = Generator.load(folder, "cpu")
    s = Sampling(max_new_tokens=30, temperature=1.0, seed=3)
    first = gen.complete("From", s)
    assert first == gen.complete("From", s) and len(list(gen.tokens("From", s))) == 30
    assert first != gen.complete("From", Sampling(max_new_tokens=30, temperature=1.0, seed=4))


def test_stream_pieces_join_to_the_completion_and_stop_strings_cut(folder: Path) -> None:
    gen = Generator.load(folder, "cpu")
    s = Sampling(max_new_tokens=40, temperature=1.0, seed=1)
    full = gen.complete("Th", s)
    assert "".join(gen.stream("Th", s)) == full
    stop = full[10:12]
    cut = gen.complete("Th", Sampling(max_new_tokens=40, temperature=1.0, seed=1, stop=[stop]))
    assert cut == full[: full.find(stop)]


def test_generation_runs_past_the_block_size(folder: Path) -> None:
    gen = Generator.load(folder, "cpu")  # block_size 16: the KV cache restarts on the last half
    assert len(list(gen.tokens("From fairest creatures", Sampling(max_new_tokens=50, seed=0)))) == 50


@pytest.mark.parametrize("arch", ["lstm", "seq2seq"])
def test_other_architectures_generate(tmp_path: Path, arch: str) -> None:
    gen = Generator.load(make_folder(tmp_path / arch, arch), "cpu")
    text = gen.complete("fair", Sampling(max_new_tokens=12, seed=0))
    assert text == gen.complete("fair", Sampling(max_new_tokens=12, seed=0)) and len(text) <= 12


def test_cli_records_in_a_pipe_keep_their_fields(runner: Any, folder: Path) -> None:
    stdin = '{"text": "From", "id": 7}\nThat thereby\n'
    r = runner.invoke(
        app, ["generate", str(folder), "-n", "5", "--seed", "1", "--device", "cpu"], input=stdin
    )
    assert r.exit_code == 0, r.output
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert out[0]["id"] == 7 and out[0]["text"] == "From" and isinstance(out[0]["completion"], str)
    assert out[1]["text"] == "That thereby"
    # prompts as arguments, text for people: prompt + completion per line, the same draws
    r2 = runner.invoke(app, ["generate", str(folder), "From", "-n", "5", "--seed", "1", "-f", "text"])
    assert r2.stdout == "From" + out[0]["completion"] + "\n"


def test_cli_generate_errors(runner: Any, tmp_path: Path) -> None:
    r = runner.invoke(app, ["generate", str(tmp_path / "missing"), "hi"])
    assert r.exit_code == 66 and r.stderr.startswith("nlpkit: error: ")
    r = runner.invoke(app, ["generate", str(tmp_path), "hi", "--top-p", "2"])
    assert r.exit_code == 2


def test_real_pipe_matches_the_in_process_draws(runner: Any, folder: Path) -> None:
    args = ["generate", str(folder), "-n", "20", "--seed", "5", "--device", "cpu"]
    done = subprocess.run([sys.executable, "-m", "nlpkit", *args], input=b"From\nThat\n", capture_output=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.decode() == runner.invoke(app, args, input="From\nThat\n").stdout
    assert len(done.stdout.splitlines()) == 2 and done.stderr == b""
