"""MiniLM quantized to int8 (`nlpkit quantize minilm-l6-v2 --bits 8`) against the float model on
the RAG benchmark of bench_rag.py: recall@5 (dense and hybrid) over bench/data/rag_questions.jsonl
with an index of the Python library reference built by each encoder, the cosine between their
embeddings of every chunk, and the index build time (2 threads, the same machine, one after the
other).

    python bench/bench_quantize_encoder.py      # needs python3.11-doc and minilm-l6-v2 pulled
    python bench/bench_quantize_encoder.py --every 3   # the answer files + every 3rd other file

Last line: ``quantize_encoder: key=value ...``; bench/results/quantize_encoder.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = HERE / ".cache" / "quantize-encoder"


def main() -> None:
    import argparse

    from bench_rag import LIBRARY, recall

    from nlpkit.embed.encoder import load_encoder
    from nlpkit.rag.index import open_index

    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=1, help="index the answer files and every N-th other file")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    int8 = CACHE / "minilm-int8"
    if not (int8 / "quantization.json").is_file():
        shutil.rmtree(int8, ignore_errors=True)
        cmd = [sys.executable, "-m", "nlpkit", "quantize", "minilm-l6-v2", "-o", str(int8), "--bits", "8"]
        subprocess.run(cmd, check=True)
    questions = [
        json.loads(line) for line in (HERE / "data" / "rag_questions.jsonl").read_text().splitlines()
    ]
    library = CACHE / f"library-every{args.every}" / "library"
    if not library.is_dir():
        answers = {Path(q["answer_file"]).name for q in questions}
        files = sorted(Path(LIBRARY).glob("*.rst.txt"))
        keep = [p for i, p in enumerate(files) if p.name in answers or i % args.every == 0]
        library.mkdir(parents=True)
        for p in keep:
            shutil.copyfile(p, library / p.name)
    result: dict[str, object] = {"questions": len(questions), "files": len(list(library.iterdir()))}
    indexes = {}
    for name, model in (("float32", "minilm-l6-v2"), ("int8", str(int8))):
        idx = CACHE / f"{name}-every{args.every}.idx"
        t0 = time.perf_counter()
        if not (idx / "index.sqlite").is_file():
            cmd = [sys.executable, "-m", "nlpkit", "rag-index", "library", "-o", str(idx), "-m", model, "-q"]
            subprocess.run(cmd, check=True, cwd=library.parent)  # cited as library/NAME, as the answers
            result[f"{name}_index_s"] = round(time.perf_counter() - t0, 1)
        index = open_index(idx)
        enc = load_encoder(model)
        result[f"{name}_recall_at_5"] = recall(index, enc, questions)
        indexes[name] = (index, enc)
    texts = [q["question"] for q in questions]
    a, b = (indexes[n][1].encode(texts) for n in ("float32", "int8"))
    cos = np.einsum("ij,ij->i", a, b)
    result["question_cosine_mean"], result["question_cosine_min"] = float(cos.mean()), float(cos.min())
    result["receipt"] = json.loads((int8 / "quantization.json").read_text())
    out = HERE / "results" / "quantize_encoder.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    r32, r8, receipt = result["float32_recall_at_5"], result["int8_recall_at_5"], result["receipt"]
    assert isinstance(r32, dict) and isinstance(r8, dict) and isinstance(receipt, dict)
    print(
        f"quantize_encoder: dense_recall5={r32['dense']:.3f}->{r8['dense']:.3f} "
        f"hybrid_recall5={r32['hybrid']:.3f}->{r8['hybrid']:.3f} cosine_mean={cos.mean():.4f} "
        f"cosine_min={cos.min():.4f} bytes={receipt['bytes_before']}->{receipt['bytes_after']}"
    )


if __name__ == "__main__":
    main()
