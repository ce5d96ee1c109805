"""rag-index / rag-ask on the Python library reference: recall@5, index throughput, latency.

    .venv/bin/python bench/bench_rag.py                  # --reps 3 --synthetic 100000 --fresh

What it measures, side by side in one run:

* recall@5 of BM25 alone, dense alone and hybrid (RRF) over ``bench/data/rag_questions.jsonl``
  (real questions, each with the library file that answers it), and of ``rank_bm25``'s
  BM25Okapi over the same chunks and FTS5's own (porter-stemmed) tokens as the lexical
  reference (if installed: the bench extra);
* index throughput: the whole ``nlpkit rag-index`` process (cold, 2 threads) in chunks/s on
  every 10th library file, against the encoder alone (one ``encode`` call on the same chunk
  texts, in process, model loaded): the ratio is what start-up, reading, converting,
  chunking, SQLite and fsync cost on top of the model; plus the one full build (cached);
* incremental runs: the unchanged folder again (0 embedded), then one file changed;
* retrieval-only latency p50 (min/max over reps, question encoding included) per mode, on the
  real index and on a synthetic 100k-chunk index (random unit vectors, Zipf text), with FAISS
  ``IndexFlatIP`` (if installed) as the reference for the exact dense search;
* one whole cold ``nlpkit rag-ask --retrieve-only`` process.

The library folder is copied to ``bench/.cache/rag/library`` (the index cites those paths; one
file is modified there and restored). The real index is built once and reused unless --fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "rag"
NLPKIT = [sys.executable, "-m", "nlpkit"]
LIBRARY = "/usr/share/doc/python3.11/html/_sources/library"


def run(args: list[str], **kw: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, cwd=CACHE, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr}")
    return time.perf_counter() - t, r


def summary_numbers(stderr: str) -> dict[str, float]:
    line = [x for x in stderr.splitlines() if "chunks " in x and "embedded" in x][-1]
    keys = ["added", "changed", "unchanged", "removed", "skipped"]
    out: dict[str, float] = {k: int(re.search(rf"(\d+) {k}", line).group(1)) for k in keys}  # type: ignore[union-attr]
    out["embedded"] = int(re.search(r"chunks (\d+) embedded", line).group(1))  # type: ignore[union-attr]
    out["index_chunks"] = int(re.search(r"(\d+) chunks \(", line).group(1))  # type: ignore[union-attr]
    return out


def build(args: argparse.Namespace) -> dict[str, object]:
    lib, idx = CACHE / "library", CACHE / "pydocs.idx"
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "build.json"
    if args.fresh or not idx.exists() or not log.exists():
        shutil.rmtree(lib, ignore_errors=True)
        shutil.rmtree(idx, ignore_errors=True)
        shutil.copytree(args.library, lib)
        wall, r = run([*NLPKIT, "rag-index", "library", "-o", "pydocs.idx", "-m", args.model])
        nums = summary_numbers(r.stderr)
        log.write_text(json.dumps({"wall_s": wall, **nums, "line": r.stderr.strip().splitlines()[-1]}))
    first = json.loads(log.read_text())
    first["chunks_per_s"] = first["embedded"] / first["wall_s"]
    again_s, r = run([*NLPKIT, "rag-index", "library", "-o", "pydocs.idx"])
    unchanged = summary_numbers(r.stderr)
    target = lib / "zlib.rst.txt"
    original = target.read_bytes()
    target.write_bytes(original + b"\nA sentence added by the benchmark.\n")
    try:
        touch_s, r = run([*NLPKIT, "rag-index", "library", "-o", "pydocs.idx"])
        touched = summary_numbers(r.stderr)
    finally:
        target.write_bytes(original)
    run([*NLPKIT, "rag-index", "library", "-o", "pydocs.idx"])  # back to the original
    return {
        "first": first,
        "rerun_unchanged": {"wall_s": again_s, **unchanged},
        "rerun_one_changed": {"wall_s": touch_s, **touched},
    }


def index_vs_encoder(model: str, reps: int, every: int = 10) -> dict[str, object]:
    """Side by side on every ``every``-th library file: the whole ``rag-index`` process into a
    fresh index vs ``encode`` alone (in process, model loaded) on the very same chunk texts in
    one call, alternating A B A B; chunks/s medians with min and max."""
    from nlpkit.rag.index import embed_text, load_text_encoder, open_index

    subset = CACHE / "subset"
    if not subset.exists():
        subset.mkdir()
        for f in sorted((CACHE / "library").iterdir())[::every]:
            shutil.copy(f, subset / f.name)
    enc = load_text_encoder(model)
    cli, alone = [], []
    texts: list[str] = []
    for _ in range(reps):
        shutil.rmtree(CACHE / "subset.idx", ignore_errors=True)
        wall, r = run([*NLPKIT, "rag-index", "subset", "-o", "subset.idx", "-m", model])
        n = summary_numbers(r.stderr)["embedded"]
        cli.append(n / wall)
        if not texts:
            with open_index(CACHE / "subset.idx") as idx:
                rows = idx.conn.execute("SELECT title, text FROM chunks ORDER BY id").fetchall()
            texts = [embed_text(t, x) for t, x in rows]
        t = time.perf_counter()
        enc.encode(texts)  # one call: the encoder sorts all texts by length (least padding)
        alone.append(len(texts) / (time.perf_counter() - t))
    ratios = [a / b for a, b in zip(cli, alone, strict=True)]
    return {
        "files": len(list(subset.iterdir())),
        "chunks": len(texts),
        "cli_chunks_per_s": {"median": statistics.median(cli), "min": min(cli), "max": max(cli)},
        "encoder_chunks_per_s": {"median": statistics.median(alone), "min": min(alone), "max": max(alone)},
        "ratio": statistics.median(ratios),
    }


def _same(path: str, answer_file: str) -> bool:
    return path == answer_file or path.endswith("/" + answer_file)


def recall(index: object, enc: object, questions: list[dict[str, str]], k: int = 5) -> dict[str, float]:
    from nlpkit.rag.retrieval import retrieve

    out = {}
    for mode in ("bm25", "dense", "hybrid"):
        hits = 0
        for q in questions:
            got = retrieve(index, enc, q["question"], k=k, mode=mode)  # type: ignore[arg-type]
            hits += any(_same(h.path, q["answer_file"]) for h in got)
        out[mode] = hits / len(questions)
    return out


def rank_bm25_recall(index: object, questions: list[dict[str, str]], k: int = 5) -> float | None:
    """recall@k of rank_bm25's BM25Okapi (k1 = 1.2, b = 0.75: FTS5's constants) over the same
    chunks with the very tokens FTS5 indexed (porter unicode61, read back out of SQLite through
    ``fts5vocab``) and the question words nlpkit's query keeps (stop words dropped, the first 32
    distinct), tokenised by the same FTS5 tokenizer. What still differs: FTS5 scores title and
    text as two columns (each with its own length normalisation) and sums them; the reference
    scores them as one field."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        return None
    from nlpkit.rag.retrieval import fts_query

    conn = index.conn  # type: ignore[attr-defined]
    rows = conn.execute("SELECT c.id, d.path FROM chunks c JOIN documents d ON d.id = c.doc_id").fetchall()
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.bench_vocab USING fts5vocab(main, chunks_fts, instance)"
    )
    tokens: dict[int, list[str]] = {cid: [] for cid, _ in rows}
    for term, doc in conn.execute("SELECT term, doc FROM temp.bench_vocab ORDER BY doc, col, offset"):
        tokens[doc].append(term)
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.bench_q USING fts5(q, tokenize='porter unicode61')")
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.bench_qv USING fts5vocab(temp, bench_q, instance)")
    conn.execute("DELETE FROM temp.bench_q")
    for i, q in enumerate(questions):
        words = fts_query(q["question"]).replace('"', "").replace(" OR ", " ")
        conn.execute("INSERT INTO temp.bench_q(rowid, q) VALUES (?, ?)", (i, words))
    asked: dict[int, list[str]] = {i: [] for i in range(len(questions))}
    for term, doc in conn.execute("SELECT term, doc FROM temp.bench_qv ORDER BY doc, offset"):
        asked[doc].append(term)
    bm = BM25Okapi([tokens[cid] for cid, _ in rows], k1=1.2, b=0.75)
    hits = 0
    for i, q in enumerate(questions):
        top = np.argsort(-bm.get_scores(asked[i]))[:k]
        hits += any(_same(rows[j][1], q["answer_file"]) for j in top)
    return hits / len(questions)


def latency(index: object, enc: object, queries: list[str], reps: int) -> dict[str, dict[str, float]]:
    """p50 ms per mode; reps alternate the modes (A B C A B C) so drift hits all alike."""
    from nlpkit.rag.retrieval import retrieve

    for q in queries[:5]:
        retrieve(index, enc, q, k=5)  # warm: page cache, FTS pages, BLAS
    medians: dict[str, list[float]] = {m: [] for m in ("bm25", "dense", "hybrid")}
    for _ in range(reps):
        for mode in medians:
            times = []
            for q in queries:
                t = time.perf_counter()
                retrieve(index, enc, q, k=5, mode=mode)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t) * 1000)
            medians[mode].append(statistics.median(times))
    return {m: {"p50_ms": statistics.median(v), "min": min(v), "max": max(v)} for m, v in medians.items()}


def faiss_latency(index: object, enc: object, queries: list[str], reps: int) -> dict[str, float] | None:
    """The exact dense search alone, nlpkit (matrix @ q + argpartition) vs FAISS IndexFlatIP."""
    try:
        import faiss
    except ImportError:
        return None
    from nlpkit.rag.retrieval import search_dense

    faiss.omp_set_num_threads(2)
    matrix = np.asarray(index.matrix())  # type: ignore[attr-defined]
    flat = faiss.IndexFlatIP(matrix.shape[1])
    flat.add(matrix)
    qv = enc.encode(queries)  # type: ignore[attr-defined]
    rows = dict(index.conn.execute("SELECT id, row FROM chunks"))  # type: ignore[attr-defined]
    ours, theirs, same = [], [], 0
    for _ in range(reps):
        for q in qv:
            t = time.perf_counter()
            a = search_dense(index, q, 5)  # type: ignore[arg-type]
            ours.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            _, ids = flat.search(q[None, :], 5)
            theirs.append((time.perf_counter() - t) * 1000)
            same += [rows[c] for c, _ in a] == ids[0].tolist()
    return {
        "nlpkit_p50_ms": statistics.median(ours),
        "faiss_flat_p50_ms": statistics.median(theirs),
        "same_top5": same / (reps * len(qv)),
    }


def hnsw(path: Path, enc: object, queries: list[str], exact_top: list[list[int]], reps: int) -> object:
    """The same synthetic index with ``--ann hnsw``: build time, latency, overlap@5 with exact."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    from nlpkit.rag.index import open_index, open_writer
    from nlpkit.rag.retrieval import search_dense

    copy = path.with_name(path.name.replace(".idx", "-hnsw.idx"))
    build_s = None
    if not copy.exists():
        shutil.copytree(path, copy)
        t = time.perf_counter()
        with open_writer(copy, ann="hnsw"):
            pass
        build_s = time.perf_counter() - t
    with open_index(copy) as idx:
        lat = latency(idx, enc, queries, reps)
        got = [[c for c, _ in search_dense(idx, v, 5)] for v in enc.encode(queries)]  # type: ignore[attr-defined]
    overlap = statistics.mean(len(set(a) & set(b)) / 5 for a, b in zip(got, exact_top, strict=True))
    return {"build_s": build_s, "latency": lat, "overlap_at_5_with_exact": overlap}


def hnsw_real(enc: object, questions: list[dict[str, str]], reps: int) -> object:
    """``--ann hnsw`` on (a copy of) the real index: recall@5 and overlap@5 with exact dense."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    from nlpkit.rag.index import open_index, open_writer
    from nlpkit.rag.retrieval import search_dense

    copy = CACHE / "pydocs-hnsw.idx"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(CACHE / "pydocs.idx", copy)
    t = time.perf_counter()
    with open_writer(copy, ann="hnsw"):
        pass
    build_s = time.perf_counter() - t
    qv = enc.encode([q["question"] for q in questions])  # type: ignore[attr-defined]
    with open_index(CACHE / "pydocs.idx") as idx:
        exact = [[c for c, _ in search_dense(idx, v, 5)] for v in qv]
    with open_index(copy) as idx:
        got = [[c for c, _ in search_dense(idx, v, 5)] for v in qv]
        rec = recall(idx, enc, questions)
        lat = latency(idx, enc, [q["question"] for q in questions], reps)
    overlap = statistics.mean(len(set(a) & set(b)) / 5 for a, b in zip(got, exact, strict=True))
    return {"build_s": build_s, "recall_at_5": rec, "overlap_at_5_with_exact": overlap, "latency": lat}


def synthetic(n: int, dim: int, encoder: str) -> Path:
    """An index of ``n`` chunks: Zipf-distributed words of a 50k vocabulary, random unit vectors."""
    from nlpkit.rag.index import DocumentIn, open_writer

    path = CACHE / f"synth{n}.idx"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(50000)])
    per_doc = 20
    with open_writer(path, {"encoder": encoder}) as w:
        w.batch_chunks = 4096
        for d in range(n // per_doc):
            words = vocab[np.minimum(rng.zipf(1.2, size=(per_doc, 120)) - 1, len(vocab) - 1)]
            chunks = [(i * 800, i * 800 + 800, " ".join(row)) for i, row in enumerate(words)]
            vecs = rng.standard_normal((per_doc, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            w.put(
                DocumentIn(f"synthetic/{d}.txt", f"{d:064x}", 16000, "text", f"doc {d}", chunks, vecs), None
            )
    return path


def _p50(h: object) -> str:
    return f"{h['latency']['hybrid']['p50_ms']:.1f}" if isinstance(h, dict) else "nan"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", default=LIBRARY)
    ap.add_argument("--model", default="minilm-l6-v2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--synthetic", type=int, default=100_000)
    ap.add_argument("--fresh", action="store_true", help="rebuild the real index (minutes)")
    args = ap.parse_args()

    from nlpkit.rag.index import load_text_encoder, open_index
    from nlpkit.rag.retrieval import search_dense

    questions = [json.loads(x) for x in (ROOT / "bench/data/rag_questions.jsonl").read_text().splitlines()]
    res: dict[str, object] = {"questions": len(questions), "threads": 2, "model": args.model}
    res["indexing"] = build(args)
    res["index_vs_encoder"] = side = index_vs_encoder(args.model, args.reps)
    enc = load_text_encoder(args.model)
    with open_index(CACHE / "pydocs.idx") as idx:
        res["index"] = idx.stats()
        res["recall_at_5"] = recall(idx, enc, questions)
        res["recall_at_5_rank_bm25"] = rank_bm25_recall(idx, questions)
        qs = [q["question"] for q in questions]
        res["latency_real"] = latency(idx, enc, qs, args.reps)
        res["dense_vs_faiss_real"] = faiss_latency(idx, enc, qs[:30], args.reps)
    res["hnsw_real"] = hnsw_real(enc, questions, args.reps)
    if args.synthetic:
        path = synthetic(args.synthetic, enc.dim, args.model)
        rng = np.random.default_rng(1)
        synth_q = [" ".join(f"w{int(i)}" for i in rng.integers(50, 5000, size=6)) for _ in range(50)]
        with open_index(path) as idx:
            res["synthetic_chunks"] = idx.stats()["chunks"]
            res["latency_synthetic"] = latency(idx, enc, synth_q, args.reps)
            res["dense_vs_faiss_synthetic"] = faiss_latency(idx, enc, synth_q[:20], args.reps)
            exact_top = [[c for c, _ in search_dense(idx, v, 5)] for v in enc.encode(synth_q)]
        res["hnsw_synthetic"] = hnsw(path, enc, synth_q, exact_top, args.reps)
    cold = []
    for _ in range(args.reps):
        t, _ = run([*NLPKIT, "rag-ask", "pydocs.idx", questions[0]["question"], "--retrieve-only", "--json"])
        cold.append(t)
    res["cold_rag_ask_s"] = {"median": statistics.median(cold), "min": min(cold), "max": max(cold)}
    res["load_avg"] = os.getloadavg()[0]
    res["date"] = time.strftime("%Y-%m-%d")
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/rag.json").write_text(json.dumps(res, indent=2) + "\n")
    first = res["indexing"]["first"]  # type: ignore[index]
    r5, lat = res["recall_at_5"], res["latency_real"]
    syn = res.get("latency_synthetic", {})
    print(
        f"bench_rag: recall5_bm25={r5['bm25']:.3f} recall5_dense={r5['dense']:.3f} "  # type: ignore[index]
        f"recall5_hybrid={r5['hybrid']:.3f} recall5_rank_bm25={res['recall_at_5_rank_bm25']} "  # type: ignore[index]
        f"index_chunks_s={side['cli_chunks_per_s']['median']:.1f} "  # type: ignore[index]
        f"encoder_chunks_s={side['encoder_chunks_per_s']['median']:.1f} "  # type: ignore[index]
        f"index_ratio={side['ratio']:.2f} full_build_chunks_s={first['chunks_per_s']:.1f} "
        f"p50_ms_hybrid={lat['hybrid']['p50_ms']:.1f} "  # type: ignore[index]
        f"p50_ms_hybrid_{args.synthetic // 1000}k={syn.get('hybrid', {}).get('p50_ms', float('nan')):.1f} "  # type: ignore[union-attr]
        f"p50_ms_hybrid_hnsw_100k={_p50(res.get('hnsw_synthetic'))} "
        f"cold_ask_s={res['cold_rag_ask_s']['median']:.2f} threads=2"  # type: ignore[index]
    )


if __name__ == "__main__":
    main()
