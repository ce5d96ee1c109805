"""word2vec.py and `nlpkit train-word2vec`: tokens, vocabulary, gradients, tiny runs, the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nlpkit.cli.main import app
from nlpkit.errors import DataError, UsageError
from nlpkit.vectors import word2vec as w2v
from nlpkit.vectors import word2vec_corpus as w2v_corpus
from nlpkit.vectors.word2vec_trainer import GROUP, Trainer

from .conftest import run_cli

# Tiny runs: small vectors, no subsampling (a tiny corpus has no frequent words to drop), enough
# epochs for a few hundred sentences, small batches so that there are many steps.
TINY = {"vector_size": 16, "window": 2, "min_count": 1, "sample": 0.0, "epochs": 12, "alpha": 0.05,
        "batch_words": 128, "threads": 1}  # fmt: skip
SKY = ["sky", "sun", "moon", "star", "cloud", "rain", "light", "night"]
PETS = ["cat", "dog", "fur", "paws", "bark", "purr", "tail", "bone"]
FILLER = ["the", "a", "of", "and", "to", "in", "is", "it"]


def planted_corpus(sentences: int = 300, seed: int = 0) -> list[str]:
    """Sentences about the sky or about pets: six words of one topic and three fillers, shuffled.
    Words of a topic co-occur, words of different topics never do."""
    rng = random.Random(seed)
    lines = []
    for i in range(sentences):
        words = rng.choices(SKY if i % 2 else PETS, k=6) + rng.choices(FILLER, k=3)
        rng.shuffle(words)
        lines.append(" ".join(words))
    return lines


def cos(v: np.ndarray, words: list[str], a: str, b: str) -> float:
    x, y = v[words.index(a)], v[words.index(b)]
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


# --------------------------------------------------------------------------- tokens and vocabulary


def test_tokenize_lowercases_and_keeps_inner_apostrophes() -> None:
    assert w2v_corpus.tokenize("O'er the King’s 2 ships! -- 'Tis dawn_light") == [
        "o'er", "the", "king's", "2", "ships", "tis", "dawn", "light",
    ]  # fmt: skip
    assert w2v_corpus.tokenize("Ça va, Žižek? 東京") == ["ça", "va", "žižek", "東京"]
    assert w2v_corpus.tokenize("  ...  ") == []


def test_vocabulary_is_sorted_by_count_then_word() -> None:
    corpus = w2v.build_corpus(["b a c a", "", "b d a", "c b e"], min_count=2)
    assert corpus.words == ["a", "b", "c"]  # a:3 b:3 (tie: by word), c:2; d and e too rare
    assert corpus.counts.tolist() == [3, 3, 2]
    assert corpus.ids.tolist() == [1, 0, 2, 0, 1, 0, 2, 1]  # d and e left out of the windows
    assert corpus.sentence.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]  # the empty record has no sentence
    assert (corpus.raw_words, corpus.records) == (10, 4)
    assert w2v.build_corpus(["b a c a", "b d a", "c b e"], min_count=1, max_vocab=2).words == ["a", "b"]
    with pytest.raises(DataError, match="no word occurs --min-count=9 times"):
        w2v.build_corpus(["a b"], min_count=9)


def test_vocabulary_does_not_depend_on_hash_order() -> None:
    code = (
        "from nlpkit.vectors.word2vec_corpus import build_corpus; c = build_corpus([' '.join('zyxwvutsrqponm') * 2], 1);"
        "print(c.words, c.ids.tolist())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(outs) == 1


def test_subsampling_and_noise_follow_word2vec() -> None:
    counts = np.array([1000, 100, 10, 1])
    keep = w2v_corpus.keep_probability(counts, 0.01)  # threshold t = 0.01 * 1111
    expected = np.minimum((np.sqrt(counts / 11.11) + 1) * 11.11 / counts, 1)
    assert keep == pytest.approx(expected, rel=1e-6)
    assert keep[2:].tolist() == [1.0, 1.0]
    assert (w2v_corpus.keep_probability(counts, 0) == 1).all()
    table = w2v_corpus.noise_table(counts, size=1 << 16)
    share = np.bincount(table, minlength=4) / len(table)
    assert share == pytest.approx(counts**0.75 / (counts**0.75).sum(), abs=1e-4)


def test_config_names_the_flag_in_errors() -> None:
    with pytest.raises(UsageError, match="--arch must be cbow or skipgram"):
        w2v.Word2VecConfig(arch="glove")
    with pytest.raises(UsageError, match="--min-alpha"):
        w2v.Word2VecConfig(alpha=0.01, min_alpha=0.1)


# --------------------------------------------------------------------------- the maths

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("noise_mode", ["pooled", "per-pair"])
@pytest.mark.parametrize("arch", ["skipgram", "cbow"])
def test_batch_updates_equal_autograd_gradients(arch: str, noise_mode: str) -> None:
    """One batch's hand-written updates (lr=1) equal minus autograd's gradient of the loss the
    docstrings state: banded pairs, a noise pool per group of centres (or, per-pair, word2vec's
    own: `negative` noise words for each pair, one equal to the pair's output word skipped),
    exact sigmoid."""
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    V, d, n = 30, 8, 200
    ids = rng.integers(0, V, n).astype(np.int32)
    corpus = w2v.Corpus([f"w{i}" for i in range(V)], np.bincount(ids, minlength=V) + 1, ids,
                        np.repeat(np.arange(20), 10).astype(np.int32), n)  # fmt: skip
    cfg = w2v.Word2VecConfig(arch=arch, vector_size=d, window=3, negative=4, min_count=1, sample=0,
                             batch_words=64, threads=1, noise=noise_mode)  # fmt: skip
    tr = Trainer(torch, corpus, cfg, "cpu")
    tr.syn0, tr.syn1 = torch.randn(V, d, dtype=torch.float64), torch.randn(V, d, dtype=torch.float64)
    syn0, syn1 = tr.syn0.clone().requires_grad_(), tr.syn1.clone().requires_grad_()
    tr.syn0s, tr.syn1s = [tr.syn0], [tr.syn1]
    padded_ids, padded_sentence, reach, _ = tr._epoch_arrays()
    state = tr.gen.get_state()
    span = tr._span(padded_ids, padded_sentence, reach, 0, 1)
    tr._apply(tr._compute(span, 0, 1.0, True))
    # the same noise draws, then the loss of batch 0 written the slow, obvious way
    tr.gen.set_state(state)
    B, W, G, P = tr.B, cfg.window, tr.G, tr.pool
    assert (1 if noise_mode == "per-pair" else GROUP) == G
    noise = tr._noise(B // G).long()
    sent = corpus.sentence
    ctx = torch.zeros(B, 2 * W + 1, dtype=torch.long)  # context word ids (0 where none)
    m = torch.zeros(B, 2 * W + 1, dtype=torch.float64)  # 1 where (centre c, offset k - W) is a pair
    for c in range(B):
        for k in range(2 * W + 1):
            j = c + k - W
            if j != c and 0 <= j < n and sent[j] == sent[c] and abs(k - W) <= reach[c]:
                ctx[c, k], m[c, k] = int(ids[j]), 1.0
    ids_c = torch.from_numpy(ids[:B]).long()
    n_ctx = m.sum(1)
    if arch == "skipgram":
        x = syn0[ids_c]
        pos_scores = (x[:, None, :] * syn1[ctx]).sum(-1)
        noise_weight = n_ctx * cfg.negative / P
        loss = -(F.logsigmoid(pos_scores) * m).sum()
    else:
        x = (syn0[ctx] * (m / n_ctx.clamp(min=1)[:, None])[:, :, None]).sum(1)  # mean of the context
        has = (n_ctx > 0).double()
        noise_weight = has * cfg.negative / P
        loss = -(F.logsigmoid((x * syn1[ids_c]).sum(-1)) * has).sum()
    if noise_mode == "per-pair":  # term by term: pair (c, k) [skip-gram] or centre c [CBOW]
        neg = cfg.negative
        for c in range(B):
            for k in range(2 * W + 1) if arch == "skipgram" else [None]:
                if (m[c, k] if k is not None else has[c]) == 0:
                    continue
                out = int(ctx[c, k]) if k is not None else int(ids_c[c])
                for j in range(neg):
                    u = int(noise[c, (k or 0) * neg + j])
                    if u != out:
                        loss = loss - F.logsigmoid(-(x[c] * syn1[u]).sum())
    else:
        noise_scores = torch.einsum("gcd,gpd->gcp", x.view(B // G, G, d), syn1[noise])
        weight = noise_weight.view(B // G, G, 1)
        if arch == "cbow":
            weight = weight * (noise.view(B // G, 1, P) != ids_c.view(B // G, G, 1))
        loss = loss - (F.logsigmoid(-noise_scores) * weight).sum()
    loss.backward()
    assert (tr.syn1 - syn1.detach()).numpy() == pytest.approx(-syn1.grad.numpy(), abs=1e-12)
    if arch == "skipgram":  # (CBOW, like gensim, adds the whole error to each context word)
        assert (tr.syn0 - syn0.detach()).numpy() == pytest.approx(-syn0.grad.numpy(), abs=1e-12)


@pytest.mark.parametrize("noise_mode", ["pooled", "per-pair"])
@pytest.mark.parametrize("arch", ["skipgram", "cbow"])
def test_tiny_run_lowers_the_loss_and_pulls_planted_words_together(arch: str, noise_mode: str) -> None:
    corpus = w2v.build_corpus(planted_corpus(), min_count=1)
    stats, calls = w2v.TrainStats(), []
    cfg = w2v.Word2VecConfig(arch=arch, noise=noise_mode, **TINY)
    v = w2v.train(corpus, cfg, stats=stats, progress=lambda *a: calls.append(a))
    assert sum(words for words, _ in calls) == 12 * corpus.raw_words and calls[-1][1] == stats.loss
    assert v.shape == (24, 16) and v.dtype == np.float32
    assert stats.history[-1] < 0.8 * stats.history[0]
    assert stats.words == 12 * corpus.raw_words and stats.words_per_second > 0
    for a, b, other_topic in (("sun", "moon", PETS), ("cat", "dog", SKY)):
        assert cos(v, corpus.words, a, b) > max(cos(v, corpus.words, a, w) for w in other_topic), (a, b)


def test_two_worker_processes_train_and_repeat_themselves() -> None:
    """threads=2 forks a worker; the rounds make the result the same on every run."""
    torch.set_num_threads(2)  # a parent whose thread pool already ran must still fork cleanly
    torch.ones(256, 256) @ torch.ones(256, 256)
    corpus = w2v.build_corpus(planted_corpus(), min_count=1)
    cfg = w2v.Word2VecConfig(arch="skipgram", **{**TINY, "threads": 2})
    first, again = w2v.train(corpus, cfg), w2v.train(corpus, cfg)
    assert first.tobytes() == again.tobytes()
    per_pair = w2v.Word2VecConfig(arch="skipgram", noise="per-pair", **{**TINY, "threads": 2})
    assert w2v.train(corpus, per_pair).tobytes() == w2v.train(corpus, per_pair).tobytes()
    assert cos(first, corpus.words, "sun", "moon") > max(cos(first, corpus.words, "sun", w) for w in PETS)
    assert torch.get_num_threads() == 2  # restored


def test_missing_torch_and_missing_cuda_exit_69(
    monkeypatch: pytest.MonkeyPatch, runner, tmp_path: Path
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a b c\n")
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["train-word2vec", "-i", str(text), "-o", str(tmp_path / "v.safetensors"),
                                     "--device", "cuda"])  # fmt: skip
        assert result.exit_code == 69 and "CUDA is not available" in result.stderr
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    result = runner.invoke(app, ["train-word2vec", "-i", str(text), "-o", str(tmp_path / "v.safetensors")])
    assert result.exit_code == 69
    assert "pip install 'nlpkit[torch]'" in result.stderr
    assert not (tmp_path / "v.safetensors").exists()


# --------------------------------------------------------------------------- the command


def write_corpus(folder: Path) -> Path:
    (folder / "plays" / "more").mkdir(parents=True)
    lines = planted_corpus()
    (folder / "plays" / "a.txt").write_text("\n".join(lines[:150]) + "\n{not json, just a line}\n")
    (folder / "plays" / "more" / "b.txt").write_text("\n".join(lines[150:]) + "\n")
    (folder / "plays" / "notes.md").write_text("ignored: not a .txt file\n")
    return folder / "plays"


def test_train_then_analogy_through_files_and_pipes(tmp_path: Path) -> None:
    plays = write_corpus(tmp_path)
    out = tmp_path / "v.safetensors"
    flags = ["--vector-size", "16", "--window", "2", "--min-count", "1", "--sample", "0", "--epochs", "12",
             "--alpha", "0.05", "--batch-words", "128", "--threads", "1"]  # fmt: skip
    r = run_cli("train-word2vec", "-i", str(plays), "-o", str(out), *flags)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    assert b"301 records" in r.stderr and b"wrote 28 vectors" in r.stderr  # 24 + "{not json, just a line}"
    similar = run_cli("similar", "--vectors", str(out), "sun", "-k", "3", "-f", "jsonl")
    assert {r["word"] for r in json.loads(similar.stdout)["results"]} <= set(SKY), similar.stderr
    # a real shell pipe: text on stdin, safetensors on stdout, then analogy reads the file
    script = (
        f"cat {plays}/a.txt {plays}/more/b.txt | {sys.executable} -m nlpkit train-word2vec -o - -q --input-format text "
        f"{' '.join(flags)} > {tmp_path}/piped.safetensors && "
        f"echo 'sun - moon + dog' | {sys.executable} -m nlpkit analogy --vectors {tmp_path}/piped.safetensors -k 3"
    )
    piped = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    answer = json.loads(piped.stdout)
    assert answer["text"] == "sun - moon + dog" and {r["word"] for r in answer["results"]} <= set(PETS)


def test_same_seed_same_bytes_across_hash_seeds(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(f'{{"id": {i}, "text": "{line}"}}\n' for i, line in enumerate(planted_corpus()))
    )
    outs, out = [], tmp_path / "v.safetensors"  # the same command line (it is in the metadata)
    for hash_seed in ("1", "2"):
        r = run_cli("train-word2vec", "-i", str(corpus), "-o", str(out), "--seed", "7", "--min-count", "1",
                    "--epochs", "2", "--threads", "2", "-q", env={"PYTHONHASHSEED": hash_seed})  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    from nlpkit.vectors.wordvectors import load_vectors

    wv = load_vectors(str(out))
    info = json.loads(wv.metadata["nlpkit.word2vec"])
    assert info["seed"] == 7 and info["arch"] == "skipgram" and info["vector_size"] == 100
    assert info["records"] == 300 and len(info["corpus_sha256"]) == 64 and info["vocab"] == len(wv)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["--arch", "glove"], "a b\n", 2, "--arch must be cbow or skipgram"),
        ([], "", 65, "empty input"),
        (["--min-count", "5"], "a b c\n", 65, "no word occurs --min-count=5 times"),
        (["-i", "no-such-file.txt"], "", 66, "no such file"),
        (["--input-format", "jsonl"], "a b\n", 65, "invalid JSON"),
    ],
)
def test_errors_exit_with_their_code(runner, tmp_path: Path, args: list[str], stdin: str, code: int,
                                     message: str) -> None:  # fmt: skip
    out = tmp_path / "v.safetensors"
    result = runner.invoke(app, ["train-word2vec", "-o", str(out), *args], input=stdin)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_a_locked_output_exits_75(runner, tmp_path: Path) -> None:
    from nlpkit.io.files import lock_for

    text = tmp_path / "t.txt"
    text.write_text("a b c\n")
    out = tmp_path / "v.safetensors"
    with lock_for(out):
        result = runner.invoke(app, ["train-word2vec", "-i", str(text), "-o", str(out), "--min-count", "1"])
    assert result.exit_code == 75 and "locked" in result.stderr


@pytest.mark.parametrize("arch", ["skipgram", "cbow"])
def test_word2vec_pairs_are_exactly_the_pairs_the_trainer_consumes(arch: str) -> None:
    """training_pairs(..., as_trained=True) against the pair mask of the trainer's own batches."""
    torch = pytest.importorskip("torch")
    from nlpkit.vectors.word2vec_trainer import Trainer

    texts = [" ".join(f"w{(i * 7 + j * 3) % 23}" for j in range(12)) for i in range(40)]
    cfg = w2v.Word2VecConfig(arch=arch, window=3, min_count=1, sample=0.01, vector_size=8, seed=11,
                             batch_words=32, threads=1)  # fmt: skip
    got = list(w2v.training_pairs(texts, cfg, as_trained=True))
    corpus = w2v.build_corpus(texts, 1)
    trainer = Trainer(torch, corpus, cfg, "cpu")
    ids, sentence, reach, n = trainer._epoch_arrays()
    W, B = cfg.window, trainer.B
    want = []
    for first in range(-(-n // B)):
        span = trainer._span(ids, sentence, reach, first, first + 1)
        for c in range(min(B, n - first * B)):
            row = span["m"][c]
            centre = corpus.words[int(span["ids"][c + W])]
            context = [corpus.words[int(span["ids"][c + k])] for k in range(2 * W + 1) if row[k] > 0]
            if arch == "cbow" and context:
                want.append((tuple(context), centre))
            want += [(centre, x) for x in context] if arch == "skipgram" else []
    pairs = [(tuple(r["input"]), r["target"]) if arch == "cbow" else (r["input"], r["target"]) for r in got]
    assert pairs == want and len(pairs) > 100
    assert max(r["position"] for r in got) + 1 < len(corpus.ids)  # subsampling dropped some words
    plain = list(w2v.training_pairs(texts, cfg))  # no subsampling, the full window

    def size(rows: list[dict]) -> int:
        return sum(len(r["input"]) if arch == "cbow" else 1 for r in rows)

    assert size(plain) > size(got)


def test_word2vec_pairs_cli_shows_the_window(runner) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["word2vec-pairs", "--arch", "cbow", "--window", "1", "by a red bus"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["input"], x["target"]) for x in rows] == [
        (["a"], "by"), (["by", "red"], "a"), (["a", "bus"], "red"), (["red"], "bus"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- stop and resume


def _paused_then_resumed(tmp_path: Path, cfg: w2v.Word2VecConfig, stop_at: int, threads: int) -> np.ndarray:
    """Train until the stop flag's ``stop_at``-th question, checkpoint, resume in a new trainer."""
    import torch

    corpus = w2v_corpus.build_corpus(planted_corpus(600), cfg.min_count)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= stop_at

    first = Trainer(torch, corpus, cfg, "cpu")
    first.stop = stop
    stats = w2v_corpus.TrainStats()
    assert first.run(None, stats) is None and first.paused is not None
    ckpt = str(tmp_path / "run.ckpt")
    w2v._save_checkpoint(first, corpus, cfg, ckpt, stats)
    again = Trainer(torch, corpus, w2v.Word2VecConfig(**{**cfg.__dict__, "threads": threads}), "cpu")
    w2v._resume(again, corpus, w2v.Word2VecConfig(**{**cfg.__dict__, "threads": threads}), ckpt, stats)
    vectors = again.run(None, stats)
    assert vectors is not None and len(stats.history) == cfg.epochs
    return vectors


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """As ``w2v.train`` runs the Trainer: one torch thread (an OpenMP pool does not survive the
    fork of the worker processes)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.usefixtures("one_torch_thread")
def test_a_stopped_run_resumes_bitwise(tmp_path: Path, threads: int) -> None:
    """Stopped between two spans of batches (here in its second epoch, mid-epoch) and resumed
    from the checkpoint, a run gives the very bytes of a run never stopped, with one worker
    process and with a team of two."""
    import torch

    cfg = w2v.Word2VecConfig(**{**TINY, "epochs": 3, "batch_words": 16, "threads": threads, "sample": 1e-2})
    corpus = w2v_corpus.build_corpus(planted_corpus(600), cfg.min_count)
    whole = Trainer(torch, corpus, cfg, "cpu").run(None, w2v_corpus.TrainStats())
    spans_per_epoch = -(-len(corpus.ids) // 16) // 32 + 1
    resumed = _paused_then_resumed(tmp_path, cfg, spans_per_epoch + 3, threads)
    assert whole is not None and resumed.tobytes() == whole.tobytes()


@pytest.mark.usefixtures("one_torch_thread")
def test_resume_refuses_other_text_or_flags(tmp_path: Path) -> None:
    import torch

    from nlpkit.errors import InputMissing

    cfg = w2v.Word2VecConfig(**{**TINY, "epochs": 2})
    corpus = w2v_corpus.build_corpus(planted_corpus(300), cfg.min_count)
    t = Trainer(torch, corpus, cfg, "cpu")
    t.stop = lambda: True
    stats = w2v_corpus.TrainStats()
    assert t.run(None, stats) is None
    ckpt = str(tmp_path / "x.ckpt")
    w2v._save_checkpoint(t, corpus, cfg, ckpt, stats)
    other = w2v_corpus.build_corpus(planted_corpus(300, seed=1), cfg.min_count)
    with pytest.raises(UsageError, match="the input text differs"):
        w2v._resume(Trainer(torch, other, cfg, "cpu"), other, cfg, ckpt, stats)
    faster = w2v.Word2VecConfig(**{**TINY, "epochs": 2, "alpha": 0.1})
    with pytest.raises(UsageError, match="--alpha differs"):
        w2v._resume(Trainer(torch, corpus, faster, "cpu"), corpus, faster, ckpt, stats)
    with pytest.raises(InputMissing, match="no checkpoint"):
        w2v._resume(Trainer(torch, corpus, cfg, "cpu"), corpus, cfg, str(tmp_path / "none.ckpt"), stats)


def test_sigterm_checkpoints_exits_143_and_resume_finishes(tmp_path: Path) -> None:
    """`train-word2vec` on SIGTERM: exit 143 with OUTPUT.ckpt and no output; the same command
    with --resume writes the vectors (the same bytes as a run never stopped) and removes it. The
    stop flag is in place before the corpus is read, so the signal is never lost to a race."""
    import signal

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(planted_corpus(3000)) + "\n")
    out = tmp_path / "v.safetensors"
    args = [sys.executable, "-m", "nlpkit", "train-word2vec", "-i", str(corpus), "-o", str(out), "--min-count", "1",
            "--vector-size", "16", "--epochs", "200", "--batch-words", "256", "--threads", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    ckpt = Path(f"{out}.ckpt")
    assert proc.stderr is not None
    while "vocabulary" not in proc.stderr.readline():  # the corpus is read (its handler is in place)
        assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # the run stops at its first span of batches, whatever the speed
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, rest
    assert "checkpoint saved" in rest and "--resume" in rest and rest.count("nlpkit: error") == 1
    assert ckpt.is_file() and not out.exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not ckpt.exists()
    never_stopped = [*args[:7], str(tmp_path / "w.safetensors"), *args[8:]]
    again = subprocess.run(never_stopped, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0
    from nlpkit.vectors.wordvectors import load_vectors

    resumed, whole = load_vectors(str(out)), load_vectors(str(tmp_path / "w.safetensors"))
    assert resumed.words == whole.words and resumed.vectors.tobytes() == whole.vectors.tobytes()


def test_the_default_minibatch_depends_on_the_architecture() -> None:
    """Skip-gram defaults to 512 centres a batch (2048 failed on an 8.3M-word corpus), CBOW to
    2048; an explicit --batch-words is kept; the resolved size is what the metadata records."""
    assert w2v.Word2VecConfig(arch="skipgram").batch_words == 512
    assert w2v.Word2VecConfig(arch="cbow").batch_words == 2048
    assert w2v.Word2VecConfig(arch="skipgram", batch_words=2048).batch_words == 2048
