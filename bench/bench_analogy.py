"""nlpkit vs gensim on word analogies, side by side in one run.

Measures, alternating nlpkit / gensim (A B A B), with the same threads (2) and the same vectors:

* cold: the whole process of one analogy ``king - man + woman`` (top 5), imports included:
  ``nlpkit analogy king - man + woman -k 5 --format jsonl`` against a ``python -c`` that loads
  gensim's own best format (``KeyedVectors.save()``: a pickle plus ``.npy`` read with
  ``mmap='r'``, norms precomputed) and calls ``most_similar``. Run twice: with the OS page cache
  dropped before each process (when this user may drop it) and with a warm page cache.
* eval: the whole questions-words evaluation, ``nlpkit analogy --eval FILE --restrict-vocab
  300000`` against ``evaluate_word_analogies(FILE, restrict_vocab=300000, case_insensitive=True)``,
  plus the accuracy of both, total and per section (they must agree within 0.1 point).
* pairs: Spearman on wordsim353 and simlex999 from both sides (``evaluate_word_pairs``).

gensim's file is built once from nlpkit's own ``vectors.safetensors`` (identical words and
vectors) and cached in ``bench/.cache/``. Run from anywhere:

    .venv/bin/python bench/bench_analogy.py
    .venv/bin/python bench/bench_analogy.py --openblas-env unset   # without OPENBLAS_CORETYPE/L2_SIZE

The last line is ``bench_analogy: cold_ratio=... eval_ratio=...``; bench/results/analogy.json
(or ``-o FILE``) gets every figure. Exit 1 when the two sides disagree (answer or accuracy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
# the user's command: nlpkit analogy king - man + woman -k 5 --format jsonl
COLD_ARGS = ["analogy", "king", "-", "man", "+", "woman", "-k", "5", "--format", "jsonl", "--vectors"]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ACC_TOLERANCE_POINTS = 0.1  # the "within 0.1 point" (percentage points)
SPEARMAN_TOLERANCE = 1e-3

GENSIM_COLD = (
    "import json, sys\n"
    "from gensim.models import KeyedVectors\n"
    "kv = KeyedVectors.load(sys.argv[1], mmap='r')\n"
    "print(json.dumps(kv.most_similar(positive=['king', 'woman'], negative=['man'], topn=5)))\n"
)

GENSIM_EVAL = """
import json, sys, time
t0 = time.perf_counter()
from gensim.models import KeyedVectors
t1 = time.perf_counter()
kv = KeyedVectors.load(sys.argv[1], mmap='r')
t2 = time.perf_counter()
score, sections = kv.evaluate_word_analogies(sys.argv[2], restrict_vocab=300000, case_insensitive=True)
t3 = time.perf_counter()
print(json.dumps({
    "import_s": t1 - t0, "load_s": t2 - t1, "eval_s": t3 - t2, "score": score,
    "sections": [{"section": s["section"], "correct": len(s["correct"]), "incorrect": len(s["incorrect"])}
                 for s in sections],
}))
"""

NLPKIT_EVAL = """
import json, sys, time
t0 = time.perf_counter()
from nlpkit.vectors.evaluate import evaluate_analogies
from nlpkit.vectors.wordvectors import load_vectors
t1 = time.perf_counter()
wv = load_vectors(sys.argv[1])
t2 = time.perf_counter()
report = evaluate_analogies(wv, sys.argv[2], restrict=300000, fold_case=True)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "eval_s": t3 - t2,
                  "accuracy": report["total"]["accuracy"]}))
"""

GENSIM_PAIRS = """
import json, sys, time
from gensim.models import KeyedVectors
kv = KeyedVectors.load(sys.argv[1], mmap='r')
out = {}
for path in sys.argv[2:]:
    t0 = time.perf_counter()
    pearson, spearman, oov = kv.evaluate_word_pairs(path, restrict_vocab=300000, case_insensitive=True)
    out[path] = {"spearman": float(spearman[0]), "pearson": float(pearson[0]), "oov_ratio": oov / 100,
                 "seconds": time.perf_counter() - t0}
print(json.dumps(out))
"""

GENSIM_BUILD = """
import json, sys
import numpy as np
from gensim.models import KeyedVectors
words = open(sys.argv[1], encoding="utf-8").read().split("\\n")
vectors = np.load(sys.argv[2])
kv = KeyedVectors(vector_size=vectors.shape[1], count=0, dtype=np.float32)
kv.add_vectors(words, vectors)
kv.fill_norms()  # saved with the file, so the timed side does not pay for them: gensim's best case
kv.save(sys.argv[3])
print(json.dumps({"count": len(kv), "unique": len(kv.key_to_index)}))
"""

PROBE = """
import json, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
import numpy
info["numpy"] = numpy.__version__
for name in sys.argv[1:]:
    try:
        info[name] = __import__(name).__version__
    except ImportError:
        info[name] = None
try:
    from threadpoolctl import threadpool_info
    info["threadpool"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                           "filepath")} for p in threadpool_info()]
except ImportError:
    info["threadpool"] = None
print(json.dumps(info))
"""


# --------------------------------------------------------------------------- processes


def child_env(threads: int, openblas: str) -> dict[str, str]:
    """The environment both sides run in: same threads; OpenBLAS core variables inherited or unset."""
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
    if openblas == "unset":
        for v in OPENBLAS_VARS:
            env.pop(v, None)
    return env


def run_timed(cmd: list[str], env: dict[str, str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds, peak RSS (MB), stdout; a failure ends the benchmark.

    ``os.wait4`` (not ``communicate``) so the child's own rusage, its peak RSS, comes back.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        killer = threading.Timer(timeout, os.kill, (proc.pid, signal.SIGKILL))
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        sys.exit(f"bench_analogy: {' '.join(cmd[:3])} ... exited {proc.returncode}:\n{stderr[-2000:]}")
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def drop_page_cache() -> bool:
    """Empty the OS page cache (root only; the whole machine's cache, so others slow down a little)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- gensim's file


def prepare_gensim(vectors: str, python: str, env: dict[str, str]) -> Path:
    """gensim's native KeyedVectors file built from nlpkit's vectors, cached until the source changes."""
    from nlpkit import store
    from nlpkit.vectors.wordvectors import load_vectors

    source = (
        store.asset_dir(vectors) / "vectors.safetensors" if store.is_asset_name(vectors) else Path(vectors)
    )
    st = source.stat()
    stamp = {"source": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    kv_path = CACHE / f"{source.parent.name if store.is_asset_name(vectors) else source.stem}.kv"
    stamp_path = kv_path.with_suffix(".stamp.json")
    if kv_path.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return kv_path
    import numpy as np

    CACHE.mkdir(parents=True, exist_ok=True)
    wv = load_vectors(vectors)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        words, array = Path(tmp) / "words.txt", Path(tmp) / "vectors.npy"
        words.write_text("\n".join(wv.words), encoding="utf-8")
        np.save(array, np.ascontiguousarray(wv.vectors, dtype=np.float32))
        built = json.loads(
            run_timed([python, "-c", GENSIM_BUILD, str(words), str(array), str(kv_path)], env)["stdout"]
        )
    if built["unique"] != len(wv):
        sys.exit(f"bench_analogy: gensim kept {built['unique']} of {len(wv)} words (repeated words?)")
    stamp_path.write_text(json.dumps(stamp))
    print(f"prepared gensim KeyedVectors: {kv_path} ({built['count']} words)", file=sys.stderr)
    return kv_path


# --------------------------------------------------------------------------- measurements


def measure_cold(
    nlpkit: list[str], python: str, kv: Path, env: dict[str, str], reps: int, vectors: str, drop: bool
) -> dict[str, Any]:
    """Whole-process single analogy, alternating; ``drop`` empties the page cache before each run."""
    a = [*nlpkit, *COLD_ARGS, vectors]
    b = [python, "-c", GENSIM_COLD, str(kv)]
    if not drop:  # warm the page cache (and let nothing else be "first")
        run_timed(a, env)
        run_timed(b, env)
    times: dict[str, list[float]] = {"nlpkit": [], "gensim": []}
    rss: dict[str, list[float]] = {"nlpkit": [], "gensim": []}
    answers: dict[str, list[tuple[str, float]]] = {}
    for _ in range(reps):
        for side, cmd in (("nlpkit", a), ("gensim", b)):
            if drop:
                drop_page_cache()
            r = run_timed(cmd, env)
            times[side].append(r["wall_s"])
            rss[side].append(r["rss_mb"])
            answers[side] = parse_answer(side, r["stdout"])
    n, g = summary(times["nlpkit"]), summary(times["gensim"])
    return {
        "page_cache": "dropped before each process" if drop else "warm (cold process)",
        "nlpkit_s": n,
        "gensim_s": g,
        "ratio": g["median"] / n["median"],
        "rss_mb": {side: statistics.median(v) for side, v in rss.items()},
        "answers": answers,
        "same_top5": [w for w, _ in answers["nlpkit"]] == [w for w, _ in answers["gensim"]],
        "queen_first": all(ans[0][0] == "queen" for ans in answers.values()),
        "max_score_diff": max(
            abs(x[1] - y[1]) for x, y in zip(answers["nlpkit"], answers["gensim"], strict=True)
        ),
        "commands": {
            "nlpkit": " ".join(a),
            "gensim": f"{python} -c <KeyedVectors.load(mmap='r').most_similar>",
        },
    }


def parse_answer(side: str, stdout: str) -> list[tuple[str, float]]:
    if side == "nlpkit":
        return [(r["word"], r["score"]) for r in json.loads(stdout.splitlines()[0])["results"]]
    return [(w, s) for w, s in json.loads(stdout)]


def measure_eval(
    nlpkit: list[str], python: str, kv: Path, env: dict[str, str], reps: int, vectors: str, questions: Path
) -> dict[str, Any]:
    """Whole questions-words evaluation, alternating; the in-call time of each side too."""
    a = [
        *nlpkit,
        "analogy",
        "--eval",
        str(questions),
        "--restrict-vocab",
        "300000",
        "-q",
        "--vectors",
        vectors,
    ]
    b = [python, "-c", GENSIM_EVAL, str(kv), str(questions)]
    a_inproc = [sys.executable, "-c", NLPKIT_EVAL, vectors, str(questions)]
    walls: dict[str, list[float]] = {"nlpkit": [], "gensim": []}
    calls: dict[str, list[float]] = {"nlpkit": [], "gensim": []}
    reports: dict[str, Any] = {}
    for rep in range(reps):
        r = run_timed(a, env)
        walls["nlpkit"].append(r["wall_s"])
        reports["nlpkit"] = json.loads(r["stdout"])
        r = run_timed(b, env)
        walls["gensim"].append(r["wall_s"])
        reports["gensim"] = json.loads(r["stdout"])
        calls["gensim"].append(reports["gensim"]["eval_s"])
        calls["nlpkit"].append(json.loads(run_timed(a_inproc, env)["stdout"])["eval_s"])
        print(
            f"  eval rep {rep + 1}/{reps}: nlpkit {walls['nlpkit'][-1]:.2f} s, "
            f"gensim {walls['gensim'][-1]:.2f} s (load {loadavg()[0]})",
            file=sys.stderr,
        )
    n, g = summary(walls["nlpkit"]), summary(walls["gensim"])
    nc, gc = summary(calls["nlpkit"]), summary(calls["gensim"])
    return {
        "nlpkit_process_s": n,
        "gensim_process_s": g,
        "ratio": g["median"] / n["median"],
        "nlpkit_call_s": nc,
        "gensim_call_s": gc,
        "call_ratio": gc["median"] / nc["median"],
        "accuracy": compare_accuracy(reports["nlpkit"], reports["gensim"]),
        "nlpkit_report": {k: v for k, v in reports["nlpkit"].items() if k != "sections"},
        "commands": {"nlpkit": " ".join(a), "gensim": f"{python} -c <load + evaluate_word_analogies>"},
    }


def compare_accuracy(nlpkit: dict[str, Any], gensim: dict[str, Any]) -> dict[str, Any]:
    """Total and per-section accuracy of both sides (percent), and whether all agree within tolerance."""
    ours = [*nlpkit["sections"], nlpkit["total"]]
    theirs = gensim["sections"]
    rows = []
    for n, g in zip(ours, theirs, strict=True):
        done = g["correct"] + g["incorrect"]
        g_acc = 100 * g["correct"] / done if done else 0.0
        rows.append(
            {
                "section": g["section"],
                "nlpkit_pct": 100 * n["accuracy"],
                "gensim_pct": g_acc,
                "diff_points": 100 * n["accuracy"] - g_acc,
                "nlpkit_counts": [n["correct"], n["incorrect"]],
                "gensim_counts": [g["correct"], g["incorrect"]],
                "names_match": n["section"] == g["section"],
            }
        )
    worst = max(abs(r["diff_points"]) for r in rows)
    return {
        "total_nlpkit_pct": rows[-1]["nlpkit_pct"],
        "total_gensim_pct": rows[-1]["gensim_pct"],
        "max_abs_diff_points": worst,
        "within_tolerance": worst <= ACC_TOLERANCE_POINTS and all(r["names_match"] for r in rows),
        "identical_counts": all(r["nlpkit_counts"] == r["gensim_counts"] for r in rows),
        "sections": rows,
    }


def measure_pairs(
    nlpkit: list[str], python: str, kv: Path, env: dict[str, str], vectors: str, files: list[Path]
) -> dict[str, Any]:
    """Spearman / Pearson on word-pair sets from both sides (restrict 300000, case-insensitive)."""
    theirs = json.loads(run_timed([python, "-c", GENSIM_PAIRS, str(kv), *map(str, files)], env)["stdout"])
    out = {}
    for path in files:
        cmd = [*nlpkit, "similar", "--eval", str(path), "--restrict-vocab", "300000", "--vectors", vectors]
        r = run_timed(cmd, env)
        ours, g = json.loads(r["stdout"]), theirs[str(path)]
        out[path.name] = {
            "nlpkit": {
                "spearman": ours["spearman"],
                "pearson": ours["pearson"],
                "pairs": ours["pairs"],
                "oov_ratio": ours["oov_ratio"],
                "process_s": r["wall_s"],
            },
            "gensim": g,
            "spearman_diff": ours["spearman"] - g["spearman"],
            "match": abs(ours["spearman"] - g["spearman"]) <= SPEARMAN_TOLERANCE,
        }
    return out


# --------------------------------------------------------------------------- report


def machine_info(env: dict[str, str], nlpkit_python: str, gensim_python: str) -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    probe = {
        "nlpkit": json.loads(run_timed([nlpkit_python, "-c", PROBE, "nlpkit"], env)["stdout"]),
        "gensim": json.loads(run_timed([gensim_python, "-c", PROBE, "gensim", "scipy"], env)["stdout"]),
    }
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "threads": {v: env[v] for v in THREAD_VARS},
        "openblas_env": {v: env.get(v) for v in OPENBLAS_VARS},
        "sides": probe,
    }


def spread(s: dict[str, Any], digits: int) -> str:
    """``median s (min .., max ..)``"""
    return f"{s['median']:.{digits}f} s (min {s['min']:.{digits}f}, max {s['max']:.{digits}f})"


def print_report(res: dict[str, Any]) -> None:
    for cold in res["cold"]:
        rss = cold["rss_mb"]
        print(f"cold single analogy, page cache {cold['page_cache']}:")
        print(
            f"  nlpkit {spread(cold['nlpkit_s'], 3)}, gensim {spread(cold['gensim_s'], 3)}: "
            f"ratio {cold['ratio']:.1f}x"
        )
        print(
            f"  peak RSS nlpkit {rss['nlpkit']:.0f} MB, gensim {rss['gensim']:.0f} MB; "
            f"same top 5: {cold['same_top5']}, queen first: {cold['queen_first']}"
        )
    ev = res["eval"]
    print("questions-words eval, whole process:")
    print(
        f"  nlpkit {spread(ev['nlpkit_process_s'], 2)}, gensim {spread(ev['gensim_process_s'], 2)}: "
        f"ratio {ev['ratio']:.1f}x"
    )
    print("questions-words eval, the evaluation call alone:")
    print(
        f"  nlpkit {spread(ev['nlpkit_call_s'], 2)}, gensim {spread(ev['gensim_call_s'], 2)}: "
        f"ratio {ev['call_ratio']:.1f}x"
    )
    acc = ev["accuracy"]
    print(
        f"accuracy: nlpkit {acc['total_nlpkit_pct']:.2f} %, gensim {acc['total_gensim_pct']:.2f} %; worst "
        f"section diff {acc['max_abs_diff_points']:.3f} points; identical counts: {acc['identical_counts']}"
    )
    for name, p in res["pairs"].items():
        print(f"{name}: Spearman nlpkit {p['nlpkit']['spearman']:.4f}, gensim {p['gensim']['spearman']:.4f}")
    print(
        f"load average: start {res['load']['start']}, end {res['load']['end']}; "
        f"OPENBLAS env: {res['machine']['openblas_env']}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "word-benchmarks",
        help="folder with questions-words.txt, wordsim353.tsv, simlex999.txt",
    )
    p.add_argument("--vectors", default="glove-6b-50d", help="named asset or nlpkit .safetensors file")
    p.add_argument("--gensim-python", default=sys.executable, help="interpreter that has gensim")
    p.add_argument("--cold-reps", type=int, default=5)
    p.add_argument("--eval-reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--openblas-env",
        choices=("inherit", "unset"),
        default="inherit",
        help="unset: run both sides without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE",
    )
    p.add_argument("--no-drop-cache", action="store_true", help="skip the dropped-page-cache cold runs")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="results JSON (default bench/results/analogy.json, analogy-openblas-unset.json)",
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    name = "analogy.json" if args.openblas_env == "inherit" else "analogy-openblas-unset.json"
    output = args.output or REPO / "bench" / "results" / name
    env = child_env(args.threads, args.openblas_env)
    script = Path(sys.executable).parent / "nlpkit"
    nlpkit = [str(script)] if script.exists() else [sys.executable, "-m", "nlpkit"]
    load_start = loadavg()
    kv = prepare_gensim(args.vectors, args.gensim_python, env)
    res: dict[str, Any] = {
        "machine": machine_info(env, sys.executable, args.gensim_python),
        "gensim_file": str(kv),
    }
    drop = not args.no_drop_cache and drop_page_cache()
    res["cold"] = [
        measure_cold(nlpkit, args.gensim_python, kv, env, args.cold_reps, args.vectors, d)
        for d in ([True] if drop else []) + [False]
    ]
    res["load_before_eval"] = loadavg()
    res["eval"] = measure_eval(
        nlpkit, args.gensim_python, kv, env, args.eval_reps, args.vectors, args.data / "questions-words.txt"
    )
    res["pairs"] = measure_pairs(
        nlpkit,
        args.gensim_python,
        kv,
        env,
        args.vectors,
        [args.data / "wordsim353.tsv", args.data / "simlex999.txt"],
    )
    res["load"] = {"start": load_start, "end": loadavg()}
    head, ev = res["cold"][0], res["eval"]
    res["targets"] = {
        "cold_ratio_ge_10": head["ratio"] >= 10,
        "eval_ratio_ge_10": ev["ratio"] >= 10,
        "cold_nlpkit_under_0.5s": head["nlpkit_s"]["median"] < 0.5,
        "accuracy_within_0.1_point": ev["accuracy"]["within_tolerance"],
    }
    ok = all(c["queen_first"] for c in res["cold"]) and ev["accuracy"]["within_tolerance"]
    ok = ok and all(p["match"] for p in res["pairs"].values())
    res["answers_agree"] = ok
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2) + "\n")
    print_report(res)
    print(f"results: {output}")
    acc = ev["accuracy"]
    last = {
        "cold_ratio": f"{head['ratio']:.1f}",
        "eval_ratio": f"{ev['ratio']:.1f}",
        "cold_nlpkit_s": f"{head['nlpkit_s']['median']:.3f}",
        "eval_nlpkit_s": f"{ev['nlpkit_process_s']['median']:.2f}",
        "acc_nlpkit": f"{acc['total_nlpkit_pct']:.2f}",
        "acc_gensim": f"{acc['total_gensim_pct']:.2f}",
        "warm_cache_ratio": f"{res['cold'][-1]['ratio']:.1f}",
        "page_cache": "dropped" if drop else "warm",
        "openblas_env": args.openblas_env,
        "agree": ok,
    }
    print("bench_analogy: " + " ".join(f"{k}={v}" for k, v in last.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
