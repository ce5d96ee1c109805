"""`nlpkit train-word2vec` vs gensim's Word2Vec, side by side on ../shared/data/shakespeare.

Both sides get the same sentences (every line of the 42 files, in name order, tokenized by
``nlpkit.vectors.word2vec_corpus.tokenize``: gensim receives those token lists), the same hyperparameters
(vector_size 100, window 5, negative 5, min_count 5, sample 1e-3, alpha 0.025 falling to 0.0001,
5 epochs, fp32) and 2 threads (gensim ``workers=2``; nlpkit ``--threads 2``). Each repetition runs
both architectures on both sides, each in a fresh process, the order of the sides alternating;
repetition r uses seed r on both sides. Before each run the script waits (up to ``--idle-wait``
seconds) for the two cores to be idle, because other jobs share this machine.

* nlpkit: the CLI as a user runs it, ``nlpkit train-word2vec -i shakespeare/ -o v.safetensors``;
  its training words/s is taken from its summary line (the training loop: subsampling, workers,
  all epochs), its wall time is the whole process (Python and torch start-up, reading, writing).
* gensim: a worker process (this script with ``--worker``): ``build_vocab`` then ``train``; its
  training words/s is measured around ``train()``, its wall time is the whole process too.

words/s = corpus tokens (out-of-vocabulary ones included) x epochs / training seconds, on both
sides. Quality is measured by nlpkit's evaluators on both sides' vectors (the same code):
questions-words accuracy on the covered questions (``evaluate_analogies``, gensim's rules) and
wordsim353 Spearman (``evaluate_word_pairs``). Shakespeare covers few questions (about 2,400 of
19,544) and few wordsim pairs (about 110 of 353), so quality is noisy from seed to seed: compare
medians.

    .venv/bin/python bench/bench_word2vec.py                 # --reps 7: about 7 minutes
    .venv/bin/python bench/bench_word2vec.py --reps 1 --idle-wait 0   # a smoke run

The last line is ``bench_word2vec: skipgram_ratio=... cbow_ratio=... ...`` (ratio: nlpkit's
median training words/s over gensim's; qw and ws353: nlpkit/gensim medians);
bench/results/word2vec.json gets every run.
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


def gensim_worker(corpus: Path, arch: str, seed: int, out: str) -> None:
    """Train gensim on nlpkit's tokens; write nlpkit vectors; print the timings as JSON."""
    sys.path.insert(0, str(REPO))
    from gensim.models import Word2Vec

    from nlpkit.vectors.word2vec_corpus import tokenize
    from nlpkit.vectors.wordvectors import WordVectors

    sentences = []
    for path in sorted(corpus.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and (tokens := tokenize(line)):
                sentences.append(tokens)
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


def run_nlpkit(corpus: Path, arch: str, seed: int, out: str) -> dict[str, Any]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in HYPER.items()]
    cmd = [sys.executable, "-m", "nlpkit", "train-word2vec", "-i", str(corpus), "-o", out, f"--arch={arch}",
           f"--seed={seed}", f"--threads={THREADS}", *flags]  # fmt: skip
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
    cmd = [sys.executable, __file__, "--worker", "--data", str(corpus.parent), "--arch", arch,
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
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", type=Path, default=DATA, help="folder holding shakespeare/ and word-benchmarks/"
    )
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--archs", default="skipgram,cbow")
    ap.add_argument(
        "--idle-wait", type=float, default=60.0, help="wait up to S seconds for idle cores per run"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="skipgram", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    corpus = args.data / "shakespeare"
    if args.worker:
        gensim_worker(corpus, args.arch, args.seed, args.out)
        return
    sys.path.insert(0, str(REPO))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for arch in args.archs.split(","):
                sides = [("nlpkit", run_nlpkit), ("gensim", run_gensim)]
                for side, run in sides if (rep + len(runs)) % 2 == 0 else sides[::-1]:
                    out = f"{tmp}/{side}-{arch}-{rep}.safetensors"
                    idle = wait_idle(args.idle_wait)
                    result = {"side": side, "arch": arch, "rep": rep, "seed": rep + 1, "idle_before": idle,
                              "load_avg": os.getloadavg()[0], **run(corpus, arch, rep + 1, out)}  # fmt: skip
                    result.update(quality(out, args.data))
                    runs.append(result)
                    print(f"{side:6} {arch:8} rep {rep}: {result['words_per_s'] / 1e6:.2f}M words/s, wall "
                          f"{result['wall_s']:.1f} s, qw {result['qw_accuracy']:.4f} ({result['qw_correct']}/"
                          f"{result['qw_covered']}), ws353 {result['ws353_spearman']:.3f}, idle {idle:.2f}",
                          file=sys.stderr, flush=True)  # fmt: skip
    summary: dict[str, Any] = {}
    last = []
    for arch in args.archs.split(","):
        per = {
            side: [r for r in runs if r["arch"] == arch and r["side"] == side]
            for side in ("nlpkit", "gensim")
        }
        keys = ("words_per_s", "wall_s", "qw_accuracy", "ws353_spearman")
        figures = {side: {key: spread([r[key] for r in rs]) for key in keys} for side, rs in per.items()}
        med = {side: {k: v["median"] for k, v in f.items()} for side, f in figures.items()}
        ratio = med["nlpkit"]["words_per_s"] / med["gensim"]["words_per_s"]
        qw = med["nlpkit"]["qw_accuracy"] / med["gensim"]["qw_accuracy"]
        ws = med["nlpkit"]["ws353_spearman"] / med["gensim"]["ws353_spearman"]
        summary[arch] = {"figures": figures, "ratio": ratio, "qw_ratio": qw, "ws353_ratio": ws}
        n, g = figures["nlpkit"]["words_per_s"], figures["gensim"]["words_per_s"]
        print(f"{arch}: nlpkit {n['median'] / 1e6:.2f}M words/s (min {n['min'] / 1e6:.2f} "
              f"max {n['max'] / 1e6:.2f}) vs gensim {g['median'] / 1e6:.2f}M (min {g['min'] / 1e6:.2f} "
              f"max {g['max'] / 1e6:.2f}): {ratio:.2f}x; "
              f"qw {med['nlpkit']['qw_accuracy']:.4f} vs {med['gensim']['qw_accuracy']:.4f}, ws353 "
              f"{med['nlpkit']['ws353_spearman']:.3f} vs {med['gensim']['ws353_spearman']:.3f}; wall "
              f"{med['nlpkit']['wall_s']:.1f} s vs {med['gensim']['wall_s']:.1f} s")  # fmt: skip
        last += [f"{arch}_ratio={ratio:.2f}", f"{arch}_qw={med['nlpkit']['qw_accuracy']:.4f}/"
                 f"{med['gensim']['qw_accuracy']:.4f}", f"{arch}_ws353={med['nlpkit']['ws353_spearman']:.3f}/"
                 f"{med['gensim']['ws353_spearman']:.3f}", f"{arch}_quality_within_10pct="
                 f"{qw >= 0.9 and ws >= 0.9}"]  # fmt: skip
    import gensim
    import torch

    results = {"date": datetime.date.today().isoformat(), "hyperparameters": HYPER, "threads": THREADS,
               "reps": args.reps, "gensim": gensim.__version__, "torch": torch.__version__,
               "summary": summary, "runs": runs}  # fmt: skip
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "word2vec.json").write_text(json.dumps(results, indent=1) + "\n")
    print("bench_word2vec: " + " ".join([*last, f"threads={THREADS}", f"reps={args.reps}"]))


if __name__ == "__main__":
    main()
