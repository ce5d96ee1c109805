"""nlpkit tokenize encode (the whole CLI) vs the tokenizers library's own encode_batch, side by side.

Same input, same tokenizer, same threads (2: ``RAYON_NUM_THREADS=2``, ``TOKENIZERS_PARALLELISM=true``
on both sides), alternating A B A B, median of ``--reps`` (default 5) with min and max:

* cli: the whole process the user runs, cold, imports included:
  ``nlpkit tokenize encode -t tokenizer.json -i shakespeare.jsonl > out.jsonl``
  (JSONL in, JSONL records with ids, tokens and character offsets out);
* raw: in this process, ``Tokenizer.encode_batch(texts)`` over the same texts, already in memory,
  one call (the library's best case: no I/O, no JSON, no Python objects per token).

Throughput is MB of UTF-8 text per second. Both sides must produce the same ids for every
record (checked once). Also reported, not part of the ratio: the CLI's fixed start-up cost (a
one-line input); training the same tokenizer (byte-level BPE, vocab 8000) with ``nlpkit
tokenize train`` vs ``train_from_iterator``; the peak RSS of ``nlpkit tokenize train`` streaming
1x and ``--train-scale``x (default 4) copies of the corpus from stdin (flat: streaming); and the
load average, since these machines are shared.

The corpus is every non-blank line of ../shared/data/shakespeare/*.txt as JSONL ``{"text": ...}``
(or ``--corpus FOLDER``). Run from anywhere:

    .venv/bin/python bench/bench_tokenize.py

The last line is ``bench_tokenize: ratio=... cli_mb_s=... raw_mb_s=...``; bench/results/tokenize.json
(or ``-o FILE``) gets every figure. Exit 1 when the two sides disagree.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "2"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "true"

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "data" / "shakespeare"
VOCAB = 8000


def build_jsonl(corpus: Path, out: Path) -> list[str]:
    import orjson

    texts = []
    with open(out, "wb") as f:
        for path in sorted(corpus.glob("*.txt")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    texts.append(line)
                    f.write(orjson.dumps({"text": line}) + b"\n")
    return texts


def run_cli(args: list[str], stdout: Any = subprocess.DEVNULL) -> float:
    return run_cli_cpu(args, stdout)[0]


def run_cli_cpu(args: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and all its threads)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nlpkit", *args], stdout=stdout, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"nlpkit {' '.join(args)} failed with exit {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def cpu_now() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summary(times: list[float], mb: float) -> dict[str, float]:
    rates = [mb / t for t in times]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "median_mb_s": statistics.median(rates),
        "min_mb_s": min(rates),
        "max_mb_s": max(rates),
    }


def bench_train(texts: list[str], tmp: Path, reps: int) -> dict[str, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    cli_t, raw_t = [], []
    for _ in range(reps):
        cli_t.append(
            run_cli(
                [
                    "tokenize",
                    "train",
                    str(corpus),
                    "--vocab-size",
                    str(VOCAB),
                    "-q",
                    "-o",
                    str(tmp / "trained.json"),
                ]
            )
        )
        start = time.perf_counter()
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            min_frequency=2,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer)
        raw_t.append(time.perf_counter() - start)
    return {
        "cli_median_s": statistics.median(cli_t),
        "cli_times_s": cli_t,
        "raw_median_s": statistics.median(raw_t),
        "raw_times_s": raw_t,
    }


# Runs in a small process of its own: a child forked from this big benchmark process would
# count this process's pages in its peak RSS until it execs.
RSS_PROBE = """
import os, subprocess, sys
corpus, times, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cmd = [sys.executable, "-m", "nlpkit", "tokenize", "train", "--input-format", "text", "-q", "-o", out]
proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
data = open(corpus, "rb").read()
for _ in range(times):
    proc.stdin.write(data)
proc.stdin.close()
_, status, usage = os.wait4(proc.pid, 0)
sys.exit(os.waitstatus_to_exitcode(status) or print(usage.ru_maxrss))
"""


def train_peak_rss_mb(corpus: Path, times: int, out: Path) -> float:
    """Peak RSS of ``nlpkit tokenize train`` reading ``times`` copies of the corpus from stdin:
    streaming training keeps it flat however long the input."""
    probe = [sys.executable, "-c", RSS_PROBE, str(corpus), str(times), str(out)]
    return int(subprocess.run(probe, check=True, capture_output=True, cwd=REPO).stdout) / 1024


def startup_s(tokenizer: Path, reps: int = 3) -> float:
    """The whole CLI process on a one-line input: the fixed cost in every cli figure."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "nlpkit", "tokenize", "encode", "-t", str(tokenizer)],
            input=b"hello\n",
            stdout=subprocess.DEVNULL,
            check=True,
            cwd=REPO,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--train-scale", type=int, default=4, help="copies of the corpus for the memory figure")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "bench" / "results" / "tokenize.json")
    args = ap.parse_args()

    import orjson
    from tokenizers import Tokenizer

    from nlpkit import __version__
    from nlpkit.text.tokenizer import to_json
    from nlpkit.text.tokenizer_train import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp_name:
        tmp = Path(tmp_name)
        jsonl = tmp / "shakespeare.jsonl"
        load_before = os.getloadavg()
        texts = build_jsonl(args.corpus, jsonl)
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        (tmp / "tokenizer.json").write_bytes(to_json(train(texts, TrainConfig(vocab_size=VOCAB))))
        tok = Tokenizer.from_file(str(tmp / "tokenizer.json"))
        cli_args = ["tokenize", "encode", "-t", str(tmp / "tokenizer.json"), "-i", str(jsonl)]
        print(
            f"corpus: {len(texts)} lines, {mb:.2f} MB of text; tokenizer: byte-level BPE {VOCAB}; "
            f"threads: 2 both sides",
            file=sys.stderr,
        )

        # Same answer: every record's ids from the CLI equal encode_batch's.
        with open(tmp / "out.jsonl", "wb") as out:
            run_cli(cli_args, stdout=out)
        expected = [e.ids for e in tok.encode_batch(texts)]
        got = [orjson.loads(line)["ids"] for line in (tmp / "out.jsonl").read_bytes().splitlines()]
        same = got == expected
        n_tokens = sum(map(len, expected))

        cli_t, raw_t, cli_cpu, raw_cpu = [], [], [], []
        for rep in range(args.reps):  # A B A B: cli, raw, cli, raw...
            with open(tmp / "out.jsonl", "wb") as out:
                wall, cpu = run_cli_cpu(cli_args, stdout=out)
            cli_t.append(wall)
            cli_cpu.append(cpu)
            start, cpu0 = time.perf_counter(), cpu_now()
            tok.encode_batch(texts)
            raw_t.append(time.perf_counter() - start)
            raw_cpu.append(cpu_now() - cpu0)
            print(
                f"rep {rep + 1}: cli {mb / cli_t[-1]:.2f} MB/s, raw {mb / raw_t[-1]:.2f} MB/s",
                file=sys.stderr,
            )
        train_fig = bench_train(texts, tmp, max(3, args.reps // 2))
        corpus = tmp / "corpus.txt"
        train_fig["peak_rss_mb"] = {
            f"{n}x": train_peak_rss_mb(corpus, n, tmp / "rss.json") for n in (1, args.train_scale)
        }
        start_s = startup_s(tmp / "tokenizer.json")
        load_after = os.getloadavg()

    cli, raw = summary(cli_t, mb), summary(raw_t, mb)
    rss = train_fig["peak_rss_mb"]
    # Paired (rep by rep) ratios are less sensitive to load drifting during the run; CPU
    # seconds tell what the CLI costs beyond the encoding when no core is idle.
    paired = statistics.median(r / c for c, r in zip(cli_t, raw_t, strict=True))
    cpu_ratio = statistics.median(raw_cpu) / statistics.median(cli_cpu)
    ratio = cli["median_mb_s"] / raw["median_mb_s"]
    result = {
        "date": datetime.date.today().isoformat(),
        "nlpkit": __version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": 2,
        "corpus": str(args.corpus),
        "lines": len(texts),
        "mb": mb,
        "tokens": n_tokens,
        "reps": args.reps,
        "same_ids": same,
        "cli": cli,
        "raw": raw,
        "ratio": ratio,
        "cli_times_s": cli_t,
        "raw_times_s": raw_t,
        "paired_ratio_median": paired,
        "cli_cpu_s": cli_cpu,
        "raw_cpu_s": raw_cpu,
        "cpu_ratio": cpu_ratio,
        "cli_startup_s": start_s,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "train": train_fig,
        "cli_command": "nlpkit " + " ".join(cli_args),
        "raw_call": "Tokenizer.encode_batch(texts)",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"bench_tokenize: ratio={ratio:.2f} cli_mb_s={cli['median_mb_s']:.2f} "
        f"(min {cli['min_mb_s']:.2f} max {cli['max_mb_s']:.2f}) raw_mb_s={raw['median_mb_s']:.2f} "
        f"(min {raw['min_mb_s']:.2f} max {raw['max_mb_s']:.2f}) paired_ratio={paired:.2f} "
        f"cpu_ratio={cpu_ratio:.2f} same_ids={same} threads=2 "
        f"startup_s={start_s:.2f} train_cli_s={train_fig['cli_median_s']:.2f} "
        f"train_raw_s={train_fig['raw_median_s']:.2f} train_rss_mb_1x={rss['1x']:.0f} "
        f"train_rss_mb_{args.train_scale}x={rss[f'{args.train_scale}x']:.0f} load_avg={load_before[0]:.1f}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
