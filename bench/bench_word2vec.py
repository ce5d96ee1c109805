"""`nlpkit train-word2vec` vs gensim's Word2Vec, side by side (../shared/data/shakespeare by default).

Both sides get the same sentences (every line of the corpus files, in name order, tokenized by
``nlpkit.vectors.word2vec_corpus.tokenize``: gensim receives those token lists; lines longer
than 1,000 tokens, as in text8, are cut into sentences of 1,000 for both), the same
hyperparameters (vector_size 100, window 5, negative 5, min_count 5, sample 1e-3, alpha 0.025
falling to 0.0001, 5 epochs, fp32) and 2 threads (gensim ``workers=2``; nlpkit ``--threads
2``). Each repetition runs every side in a fresh process, the order of the sides rotating;
repetition r uses seed r on every side. Before each run the script waits (up to
``--idle-wait`` seconds) for the two cores to be idle, because other jobs share this machine.

Sides:
* nlpkit per-pair: ``train-word2vec --noise per-pair``: ``negative`` noise words for every
  (centre, context) pair, gensim's sampling: the same work per pair. The headline ratio.
* nlpkit pooled: the default ``--noise pooled``, a pool of noise words per 8 centres: less
  work per pair (its own labelled row).
* gensim: a worker process (this script with ``--worker``): ``build_vocab`` then ``train``; its
  training words/s is measured around ``train()``.
nlpkit's training words/s comes from its summary line (the training loop: subsampling, workers,
all epochs); every wall time is the whole process (start-up, reading, writing).

words/s = corpus tokens (out-of-vocabulary ones included) x epochs / training seconds, on every
side. gensim's speed is bimodal on this machine (the same work takes about 1.6x the CPU seconds
in its slow runs): its runs are split at the largest gap when the fastest is over 1.25x the
slowest, and the ratio is reported against each mode, never against a median across them.
Quality is measured by nlpkit's evaluators on every side's vectors (the same code):
questions-words accuracy on the covered questions (``evaluate_analogies``, gensim's rules) and
wordsim353 Spearman (``evaluate_word_pairs``), with the spread over the seeds.

    .venv/bin/python bench/bench_word2vec.py                 # --reps 7 on Shakespeare
    .venv/bin/python bench/bench_word2vec.py --corpus text8/ --reps 3 --archs skipgram
    .venv/bin/python bench/bench_word2vec.py --reps 1 --idle-wait 0   # a smoke run

The last line is ``bench_word2vec: skipgram_ratio=... ...`` (ratio: nlpkit per-pair's median
training words/s over gensim's, per gensim mode; qw and ws353: medians per side);
bench/results/word2vec.json (word2vec-CORPUS.json for another corpus) gets every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
HYPER = dict(vector_size=100, window=5, negative=5, min_count=5, sample=1e-3, alpha=0.025, min_alpha=0.0001,
             epochs=5)  # fmt: skip
THREADS = 2
ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "NLPKIT_QUIET": ""}


# --------------------------------------------------------------------------- the gensim side (a process)


MAX_SENTENCE = 1000  # tokens; longer lines (text8 is one line) are cut, for both sides


def sentences_of(corpus: Path) -> list[list[str]]:
    """The corpus's sentences as token lists: every line of its .txt files in name order (or of
    the file itself), tokenized by nlpkit, lines over MAX_SENTENCE tokens cut."""
    from nlpkit.vectors.word2vec_corpus import tokenize

    files = sorted(corpus.glob("*.txt")) if corpus.is_dir() else [corpus]
    out = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                tokens = tokenize(line)
                out += [tokens[i : i + MAX_SENTENCE] for i in range(0, len(tokens), MAX_SENTENCE)]
    return out


def gensim_worker(corpus: Path, arch: str, seed: int, out: str) -> None:
    """Train gensim on nlpkit's tokens; write nlpkit vectors; print the timings as JSON."""
    sys.path.insert(0, str(REPO))
    from gensim.models import Word2Vec

    from nlpkit.vectors.wordvectors import WordVectors

    sentences = sentences_of(corpus)
    words = sum(map(len, sentences))
    hp = {k: v for k, v in HYPER.items() if k != "epochs"}
    model = Word2Vec(sg=int(arch == "skipgram"), workers=THREADS, seed=seed, **hp)
    model.build_vocab(sentences)
    start = time.perf_counter()
    model.train(sentences, total_examples=model.corpus_count, epochs=HYPER["epochs"])
    seconds = time.perf_counter() - start
    WordVectors(list(model.wv.index_to_key), model.wv.vectors).save(out)
    print(
        json.dumps(
            {"train_s": seconds, "words_per_s": words * HYPER["epochs"] / seconds, "vocab": len(model.wv)}
        )
    )


def prepared(corpus: Path, tmp: str) -> Path:
    """The corpus as nlpkit reads it: the same sentences gensim gets (long lines cut)."""
    sentences = sentences_of(corpus)
    if all(len(t) < MAX_SENTENCE for t in sentences):
        return corpus  # nothing to cut: the files as they are
    path = Path(tmp) / "corpus.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(" ".join(t) + "\n" for t in sentences)
    return path


# --------------------------------------------------------------------------- running both sides


def idle_fraction(seconds: float = 1.0) -> float:
    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    a = snap()
    time.sleep(seconds)
    b = snap()
    return (b[0] - a[0]) / max(b[1] - a[1], 1)


def wait_idle(limit: float) -> float:
    """Wait until the cores are 90% idle over a second (at most ``limit`` s); the last idle figure."""
    deadline = time.monotonic() + limit
    while True:
        idle = idle_fraction() if limit > 0 else float("nan")
        if not idle < 0.9 or time.monotonic() >= deadline:
            return idle


def run_nlpkit(corpus: Path, arch: str, seed: int, out: str, noise: str = "per-pair") -> dict[str, Any]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in HYPER.items()]
    cmd = [sys.executable, "-m", "nlpkit", "train-word2vec", "-i", str(corpus), "-o", out, f"--arch={arch}",
           f"--seed={seed}", f"--threads={THREADS}", f"--noise={noise}", *flags]  # fmt: skip
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"nlpkit failed: {r.stderr}")
    summary = re.search(r"trained \w+ in ([0-9.]+) s \(([0-9,]+) words/s\)", r.stderr)
    if not summary:
        raise SystemExit(f"no summary line in nlpkit's stderr: {r.stderr}")
    rate = float(summary.group(2).replace(",", ""))
    return {"words_per_s": rate, "wall_s": wall}


def run_gensim(corpus: Path, arch: str, seed: int, out: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--corpus", str(corpus), "--arch", arch,
           "--seed", str(seed), "--out", out]  # fmt: skip
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"gensim failed: {r.stderr}")
    return {**json.loads(r.stdout.splitlines()[-1]), "wall_s": wall}


def quality(path: str, data: Path) -> dict[str, Any]:
    from nlpkit.vectors.evaluate import evaluate_analogies, evaluate_word_pairs
    from nlpkit.vectors.wordvectors import load_vectors

    wv = load_vectors(path)
    qw = evaluate_analogies(wv, str(data / "word-benchmarks" / "questions-words.txt"), 300000, True, "add")
    ws = evaluate_word_pairs(wv, str(data / "word-benchmarks" / "wordsim353.tsv"))
    total = qw["total"]
    return {"qw_accuracy": total["accuracy"], "qw_correct": total["correct"],
            "qw_covered": total["correct"] + total["incorrect"], "ws353_spearman": ws["spearman"],
            "ws353_pairs": ws["pairs"], "vocab": len(wv)}  # fmt: skip


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def modes(values: list[float]) -> dict[str, dict[str, float]]:
    """Bimodal speeds split at the largest gap (when the fastest is over 1.25x the slowest):
    {"fast": spread, "slow": spread}; else {"all": spread}."""
    v = sorted(values)
    if len(v) < 2 or v[-1] < 1.25 * v[0]:
        return {"all": spread(v)}
    cut = max(range(1, len(v)), key=lambda i: v[i] / v[i - 1])
    return {"slow": spread(v[:cut]), "fast": spread(v[cut:])}


SIDES = ("nlpkit per-pair", "nlpkit pooled", "gensim")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", type=Path, default=DATA, help="folder holding word-benchmarks/ (and shakespeare/)"
    )
    ap.add_argument("--corpus", type=Path, help="a .txt file or a folder of them (default: DATA/shakespeare)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--archs", default="skipgram,cbow")
    ap.add_argument("--sides", default=",".join(SIDES), help="which of: " + ", ".join(SIDES))
    ap.add_argument(
        "--idle-wait", type=float, default=60.0, help="wait up to S seconds for idle cores per run"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="skipgram", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    corpus = args.corpus or args.data / "shakespeare"
    if args.worker:
        gensim_worker(corpus, args.arch, args.seed, args.out)
        return
    sys.path.insert(0, str(REPO))
    sides = [x for x in args.sides.split(",") if x]
    runners = {
        "nlpkit per-pair": lambda c, a, s, o: run_nlpkit(c, a, s, o, "per-pair"),
        "nlpkit pooled": lambda c, a, s, o: run_nlpkit(c, a, s, o, "pooled"),
        "gensim": run_gensim,
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        text = prepared(corpus, tmp)
        for rep in range(args.reps):
            for arch in args.archs.split(","):
                turn = (rep + len(runs)) % len(sides)
                for side in sides[turn:] + sides[:turn]:
                    out = f"{tmp}/{side.replace(' ', '-')}-{arch}-{rep}.safetensors"
                    idle = wait_idle(args.idle_wait)
                    timing = runners[side](text, arch, rep + 1, out)
                    result = {"side": side, "arch": arch, "rep": rep, "seed": rep + 1, "idle_before": idle,
                              "load_avg": os.getloadavg()[0], **timing}  # fmt: skip
                    result.update(quality(out, args.data))
                    runs.append(result)
                    print(f"{side:15} {arch:8} rep {rep}: {result['words_per_s'] / 1e6:.2f}M words/s, wall "
                          f"{result['wall_s']:.1f} s, qw {result['qw_accuracy']:.4f} ({result['qw_correct']}/"
                          f"{result['qw_covered']}), ws353 {result['ws353_spearman']:.3f}, idle {idle:.2f}",
                          file=sys.stderr, flush=True)  # fmt: skip
    summary: dict[str, Any] = {}
    last = []
    for arch in args.archs.split(","):
        per = {side: [r for r in runs if r["arch"] == arch and r["side"] == side] for side in sides}
        keys = ("words_per_s", "wall_s", "qw_accuracy", "ws353_spearman")
        figures = {side: {key: spread([r[key] for r in rs]) for key in keys} for side, rs in per.items()}
        speed_modes = {side: modes([r["words_per_s"] for r in rs]) for side, rs in per.items()}
        summary[arch] = {"figures": figures, "speed_modes": speed_modes}
        for side in sides:
            f, m = figures[side], speed_modes[side]
            speeds = ", ".join(f"{k} {v['median'] / 1e6:.2f}M ({v['min'] / 1e6:.2f}-{v['max'] / 1e6:.2f}, "
                               f"{v['n']} runs)" for k, v in m.items())  # fmt: skip
            print(f"{arch} {side:15}: {speeds}; qw {f['qw_accuracy']['median']:.4f} "
                  f"({f['qw_accuracy']['min']:.4f}-{f['qw_accuracy']['max']:.4f}), ws353 "
                  f"{f['ws353_spearman']['median']:.3f} ({f['ws353_spearman']['min']:.3f}-"
                  f"{f['ws353_spearman']['max']:.3f}); wall {f['wall_s']['median']:.1f} s")  # fmt: skip
        if "gensim" in per:
            for side in (x for x in sides if x != "gensim"):
                mine = figures[side]["words_per_s"]["median"]
                ratios = {k: mine / v["median"] for k, v in speed_modes["gensim"].items()}
                summary[arch][f"ratio {side}"] = ratios
                tag = "" if side == "nlpkit per-pair" else "_pooled"
                last += [f"{arch}{tag}_ratio_vs_gensim_{k}={r:.2f}" for k, r in ratios.items()]
        last += [f"{arch}_qw[{side}]={figures[side]['qw_accuracy']['median']:.4f}" for side in sides]
    import gensim
    import torch

    results = {"date": datetime.date.today().isoformat(), "corpus": str(corpus), "hyperparameters": HYPER,
               "threads": THREADS, "reps": args.reps, "gensim": gensim.__version__,
               "torch": torch.__version__, "summary": summary, "runs": runs}  # fmt: skip
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    name = "word2vec.json" if args.corpus is None else f"word2vec-{corpus.stem}.json"
    (REPO / "bench" / "results" / name).write_text(json.dumps(results, indent=1) + "\n")
    print("bench_word2vec: " + " ".join([*last, f"threads={THREADS}", f"reps={args.reps}"]))


if __name__ == "__main__":
    main()
