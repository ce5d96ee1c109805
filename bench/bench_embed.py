"""Sentence embeddings: nlpkit (ONNX Runtime, and PyTorch) vs sentence-transformers, side by side.

Same model (all-MiniLM-L6-v2 from nlpkit's store: ``nlpkit models pull minilm-l6-v2``), same
2,000 sentences, same batch size (32), same truncation (256 tokens), same precision (fp32), same
threads (``--threads``, default 2: ``torch.set_num_threads``, ONNX Runtime intra-op threads
through the process's CPU affinity, and ``RAYON_NUM_THREADS=2`` for both tokenizers), in one
process, warmed up, alternating the sides in every repetition (``--reps``, default 3), median
with min and max. Steady-state sentences per second:

* nlpkit-onnx: ``load_encoder("minilm-l6-v2", backend="onnx").encode(texts, 32)`` (the default);
* nlpkit-torch: the same with ``backend="torch"`` (nlpkit's own BERT in PyTorch eager);
* sentence-transformers: ``SentenceTransformer([Transformer(256), Pooling(mean), Normalize()])``
  built over the same folder (the wheel's own sentence_bert_config says max_seq_length 256),
  ``.encode(texts, batch_size=32)``.

Also: the whole ``nlpkit embed -m minilm-l6-v2 -i sentences.txt -o out.safetensors`` process,
cold (imports, model load from the cached ONNX graph, reading, writing), once per repetition.
Quality: the cosine of every nlpkit embedding with sentence-transformers' (min and mean); exit
1 below 0.999. The sentences are spread evenly over the prose of Python's library reference
(/usr/share/doc/python3.11/html/_sources/library/*.rst.txt), or ``--corpus FILE`` (one a line).

    .venv/bin/python bench/bench_embed.py          # --reps 3 --batch-size 32 -n 2000

Last line: ``bench_embed: ratio=... onnx_sps=... st_sps=...``; bench/results/embed.json gets all.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # both sides tokenize with HF tokenizers (Rust)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")
MODEL = "minilm-l6-v2"


def doc_sentences(n: int) -> list[str]:
    """``n`` prose sentences (40-300 characters) spread evenly over the library reference."""
    found: list[str] = []
    for path in sorted(DOCS.glob("*.rst.txt")):
        para: list[str] = []
        for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
            s = line.strip()
            if not s or s.startswith((">>>", "...")):
                text, para = " ".join(para), []
                for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    if 40 <= len(sent) <= 300 and not re.search(r"^[.:=*#-]|::|\.\. ", sent):
                        found.append(sent)
            elif not re.match(r"^([=\-~^*#]{3,}|\.\. |:[a-z]+:)", s):
                para.append(s)
    if len(found) < n:
        raise SystemExit(f"only {len(found)} sentences in {DOCS}; pass --corpus FILE")
    step = len(found) / n
    return [found[int(i * step)] for i in range(n)]


def st_modules(folder: str) -> list[Any]:
    """all-MiniLM-L6-v2 as its modules.json builds it: Transformer (256 tokens), mean, normalise."""
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return [Transformer(folder, max_seq_length=256), Pooling(384, "mean"), Normalize()]


def rates(times: list[float], n: int) -> dict[str, float]:
    sps = [n / t for t in times]
    return {"median_sps": statistics.median(sps), "min_sps": min(sps), "max_sps": max(sps), "times_s": times}


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cli_run(corpus: Path, out: Path, batch: int) -> float:
    args = ["embed", "-m", MODEL, "-i", str(corpus), "-o", str(out), "--batch-size", str(batch), "-q"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nlpkit", *args], cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"nlpkit {' '.join(args)} exited {proc.returncode}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("-n", type=int, default=2000, help="sentences")
    ap.add_argument("--corpus", type=Path, help="one sentence a line (default: Python's library docs)")
    ap.add_argument("--threads", type=int, default=2, help="threads on every side")
    ap.add_argument("--no-torch", action="store_true", help="skip the nlpkit-torch side")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "bench" / "results" / "embed.json")
    args = ap.parse_args()

    import numpy as np
    import sentence_transformers as st
    import torch
    from sentence_transformers import SentenceTransformer

    from nlpkit.embed.encoder import load_encoder
    from nlpkit.store.assets import asset_dir

    threads = args.threads
    cores = sorted(os.sched_getaffinity(0))
    if threads < len(cores):  # nlpkit gives ONNX Runtime one thread per allowed core
        os.sched_setaffinity(0, cores[:threads])
    torch.set_num_threads(threads)
    texts = (
        [ln for ln in args.corpus.read_text(encoding="utf-8").splitlines() if ln.strip()][: args.n]
        if args.corpus
        else doc_sentences(args.n)
    )
    n, bs = len(texts), args.batch_size
    folder = str(asset_dir(MODEL))
    onnx = load_encoder(MODEL, backend="onnx")  # exports once into the store if not cached yet
    ref = SentenceTransformer(modules=st_modules(folder), device="cpu")
    sides: dict[str, Any] = {
        "nlpkit-onnx": lambda: onnx.encode(texts, bs),
        "sentence-transformers": lambda: ref.encode(texts, batch_size=bs, convert_to_numpy=True),
    }
    if not args.no_torch:
        tch = load_encoder(MODEL, backend="torch")
        sides["nlpkit-torch"] = lambda: tch.encode(texts, bs)
    warm = texts[:: max(1, n // 64)]  # warm-up: first-call allocations, thread pools, lazy inits
    onnx.encode(warm, bs), ref.encode(warm, batch_size=bs)
    if not args.no_torch:
        tch.encode(warm, bs)

    times: dict[str, list[float]] = {k: [] for k in [*sides, "nlpkit-cli"]}
    outputs: dict[str, Any] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "sentences.txt"
        corpus.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
        for rep in range(args.reps):
            names = list(sides)
            names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate who goes first
            for name in names:
                dt, outputs[name] = timed(sides[name])
                times[name].append(dt)
                print(f"rep {rep + 1} {name}: {n / dt:.1f} sentences/s", file=sys.stderr)
            times["nlpkit-cli"].append(cli_run(corpus, Path(tmp) / "out.safetensors", bs))
            loads.append(os.getloadavg()[0])

    want = outputs["sentence-transformers"]
    quality = {
        name: {
            "min_cos": float((outputs[name] * want).sum(1).min()),
            "mean_cos": float((outputs[name] * want).sum(1).mean()),
        }
        for name in sides
        if name != "sentence-transformers"
    }
    lengths = [len(e.ids) for e in onnx.tokenizer.encode_batch(texts)]
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus_allowed": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "versions": {
            "torch": torch.__version__,
            "sentence_transformers": st.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "same": {
            "sentences": n,
            "batch_size": bs,
            "max_length": onnx.max_length,
            "threads": threads,
            "dtype": "fp32",
        },
        "tokens": {"mean": float(np.mean(lengths)), "max": int(max(lengths))},
        "sides": {name: rates(t, n) for name, t in times.items()},
        "quality_vs_sentence_transformers": quality,
        "load_avg": {"min": min(loads), "max": max(loads), "mean": statistics.mean(loads)},
    }
    med = {name: r["median_sps"] for name, r in result["sides"].items()}
    paired = [s / o for o, s in zip(times["nlpkit-onnx"], times["sentence-transformers"], strict=True)]
    result["ratio"] = med["nlpkit-onnx"] / med["sentence-transformers"]
    result["paired_ratio"] = {"median": statistics.median(paired), "min": min(paired), "max": max(paired)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    q = quality["nlpkit-onnx"]

    def fmt(name: str) -> str:
        r = result["sides"][name]
        return f"{med[name]:.1f} (min {r['min_sps']:.1f} max {r['max_sps']:.1f})"

    torch_part = "" if args.no_torch else f" torch_sps={fmt('nlpkit-torch')}"
    torch_cos = "" if args.no_torch else f" torch_min_cos={quality['nlpkit-torch']['min_cos']:.6f}"
    print(
        f"bench_embed: ratio={result['ratio']:.2f} paired_ratio={result['paired_ratio']['median']:.2f} "
        f"onnx_sps={fmt('nlpkit-onnx')} st_sps={fmt('sentence-transformers')}{torch_part} "
        f"cli_sps={fmt('nlpkit-cli')} min_cos={q['min_cos']:.6f} mean_cos={q['mean_cos']:.6f}{torch_cos} "
        f"n={n} batch={bs} threads={threads} tokens_mean={result['tokens']['mean']:.1f} "
        f"load_avg={result['load_avg']['mean']:.1f}"
    )
    if min(v["min_cos"] for v in quality.values()) < 0.999:
        sys.exit(1)


if __name__ == "__main__":
    main()
