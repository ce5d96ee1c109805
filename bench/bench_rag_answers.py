"""Answer quality of `rag-ask` per chat model: does the answer cite a retrieved source, the right file?

    .venv/bin/python bench/bench_rag_answers.py   # --llm NAME (repeat); default SmolLM2-135M and the 0.5B

For each chat model, on the same index and the same questions (every --every-th question of
``bench/data/rag_questions.jsonl``, 7 of 85 by default), one whole ``nlpkit rag-ask --json``
process answers them all (greedy, ``-k`` sources, ``--max-new-tokens``). Per model:

* ``cites_source``: share of answers that cite at least one retrieved source as ``[n]``;
* ``cites_right_file``: share whose cited sources include a chunk of the question's answer file;
* ``names_source`` / ``names_right_file``: the same, counting also an answer that names a
  retrieved file instead of writing ``[n]`` ("use `choice` from `library/random.rst.txt`"), the
  way the Qwen models often cite;
* ``retrieved_right_file``: share where the answer file is among the -k sources at all (the
  ceiling for the previous line: retrieval, not the model);
* ``evidence``: share of answers that name the question's evidence word (``getcwd``...);
* ``decode_tok_s``: in process, greedy decode speed after the first question's RAG prompt
  (``--decode-tokens`` new tokens, the model's default dtype), and ``s_per_question``, the
  process's wall time per question (load, prefill and decode included);
* ``trivia``: accepted-answer accuracy on --trivia questions of the trivia dataset's test split
  (an even spread of the 837; ``nlpkit data pull trivia``): greedy, 16 new tokens, the model
  told to give only the answer; right when any accepted answer appears in the reply
  (case-insensitive). Generated in batches of 8.

The index covers a subset of the library so that it builds in a few minutes on 2 cores: the
answer files of every 7th question (13 files) plus every 10th file (distractors), 42 files. Built once into
``bench/.cache/rag-answers/`` (reused unless --fresh). Results: bench/results/rag_answers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "rag-answers"
LIBRARY = "/usr/share/doc/python3.11/html/_sources/library"
NLPKIT = [sys.executable, "-m", "nlpkit"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", action="append", help="chat models (repeat); default SmolLM2 and the 0.5B")
    ap.add_argument("--every", type=int, default=14, help="take every Nth question")
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--library", default=LIBRARY)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--rescore", action="store_true", help="score the saved answers again, run nothing")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on an oversubscribed machine)")
    ap.add_argument("--trivia", type=int, default=16, help="trivia test questions per model (0: none)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for this process and every rag-ask it runs
    llms = args.llm or ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    rows = [json.loads(x) for x in (ROOT / "bench" / "data" / "rag_questions.jsonl").read_text().splitlines()]
    questions = rows[:: args.every]
    if args.rescore:
        saved = json.loads((ROOT / "bench" / "results" / "rag_answers.json").read_text())
        for llm, r in saved["models"].items():
            r.update(score(questions, CACHE / f"answers-{llm}.jsonl"))
        (ROOT / "bench" / "results" / "rag_answers.json").write_text(json.dumps(saved, indent=2) + "\n")
        for llm, r in saved["models"].items():
            print(
                llm,
                {k: round(r[k], 2) for k in (*METRICS, "decode_tok_s", "s_per_question", "trivia") if k in r},
            )
        return
    index = build_index(rows[::7], args)  # fixed: the same index whatever --every
    results = {}
    for llm in llms:
        results[llm] = ask_all(llm, index, questions, args)
        results[llm]["decode_tok_s"] = decode_speed(llm, index, questions[0]["question"], args)
        if args.trivia:
            results[llm]["trivia"], results[llm]["trivia_answers"] = trivia(llm, args.trivia)
        r = results[llm]
        print(
            f"{llm}: cites_source={r['cites_source']:.2f} cites_right_file={r['cites_right_file']:.2f} "
            f"names_source={r['names_source']:.2f} names_right_file={r['names_right_file']:.2f} "
            f"retrieved_right_file={r['retrieved_right_file']:.2f} evidence={r['evidence']:.2f} "
            f"decode_tok_s={r['decode_tok_s']:.1f} s_per_question={r['s_per_question']:.1f} "
            f"trivia={r.get('trivia', float('nan')):.2f}",
            file=sys.stderr,
        )
    out = {"questions": len(questions), "k": args.k, "threads": args.threads,
           "max_new_tokens": args.max_new_tokens,
           "index": json.loads((CACHE / "build.json").read_text()), "models": results,
           "load": os.getloadavg()[0]}  # fmt: skip
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "rag_answers.json").write_text(json.dumps(out, indent=2) + "\n")
    print(
        "rag_answers: "
        + " ".join(
            f"{llm}:cites={r['cites_source']:.2f},right_file={r['cites_right_file']:.2f},"
            f"names_right_file={r['names_right_file']:.2f},"
            f"tok_s={r['decode_tok_s']:.1f},trivia={r.get('trivia', float('nan')):.2f}"
            for llm, r in results.items()
        )
        + f" questions={len(questions)}"
    )


def build_index(questions: list[dict[str, str]], args: argparse.Namespace) -> Path:
    lib, idx = CACHE / "library", CACHE / "pydocs.idx"
    if idx.exists() and (CACHE / "build.json").exists() and not args.fresh:
        return idx
    shutil.rmtree(CACHE, ignore_errors=True)
    (lib / "library").mkdir(parents=True)
    files = sorted(Path(args.library).iterdir())
    wanted = {Path(q["answer_file"]).name for q in questions} | {f.name for f in files[::10]}
    for f in files:
        if f.name in wanted:
            shutil.copy(f, lib / "library" / f.name)
    t = time.perf_counter()
    r = subprocess.run(
        [*NLPKIT, "rag-index", "library", "-o", str(idx)], cwd=lib, capture_output=True, text=True
    )
    if r.returncode:
        sys.exit(r.stderr)
    (CACHE / "build.json").write_text(
        json.dumps({"files": len(wanted), "wall_s": time.perf_counter() - t, "line": r.stderr.strip()[-300:]})
    )
    return idx


def ask_all(llm: str, index: Path, questions: list[dict[str, str]], args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    cmd = [*NLPKIT, "rag-ask", str(index), "--json", "-k", str(args.k), "--llm", llm,
           "--max-new-tokens", str(args.max_new_tokens), "-q"]  # fmt: skip
    stdin = "".join(json.dumps({"question": q["question"]}) + "\n" for q in questions)
    t = time.perf_counter()
    answers = CACHE / f"answers-{llm}.jsonl"  # written as they come (tail it to follow)
    with open(answers, "w") as out:
        r = subprocess.run(cmd, input=stdin, stdout=out, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return {**score(questions, answers), "s_per_question": wall / len(questions)}


METRICS = ("cites_source", "cites_right_file", "names_source", "names_right_file", "retrieved_right_file",
           "evidence")  # fmt: skip


def score(questions: list[dict[str, str]], answers: Path) -> dict:  # type: ignore[type-arg]
    """The shares over the answers a rag-ask --json run wrote to ``answers``."""
    from nlpkit.rag.retrieval import cited_numbers, clean_answer

    records = [json.loads(x) for x in answers.read_text().splitlines()]
    per = []
    for q, rec in zip(questions, records, strict=True):
        rec["answer"] = clean_answer(rec["answer"])  # as rag-ask cleans it
        numbers = cited_numbers(rec["answer"], len(rec["citations"]))
        cited = [c for c in rec["citations"] if c["n"] in numbers]
        named = [c for c in rec["citations"] if c in cited or Path(c["path"]).name in rec["answer"]]
        right = [c for c in rec["citations"] if c["path"].endswith(q["answer_file"])]
        per.append({
            "question": q["question"], "answer_file": q["answer_file"], "answer": rec["answer"],
            "cites_source": bool(cited), "cites_right_file": any(c in right for c in cited),
            "names_source": bool(named), "names_right_file": any(c in right for c in named),
            "retrieved_right_file": bool(right), "evidence": q["evidence"].lower() in rec["answer"].lower(),
        })  # fmt: skip
    return {**{key: sum(p[key] for p in per) / len(per) for key in METRICS}, "answers": per}


def decode_speed(llm: str, index: Path, question: str, args: argparse.Namespace) -> float:
    """Greedy decode tokens/s after the RAG prompt of ``question`` (prefill not counted)."""
    import torch

    torch.set_num_threads(args.threads)
    from nlpkit.llm.chat import ChatModel
    from nlpkit.rag import index as rag
    from nlpkit.rag import retrieval

    idx = rag.open_index(str(index))
    enc = rag.load_text_encoder(idx.meta["encoder"], "cpu")
    hits = retrieval.retrieve(idx, enc, question, k=args.k, mode="hybrid", candidates=50)
    chat = ChatModel.load(llm, "cpu")
    ids = chat.prompt_ids(retrieval.build_messages(question, hits))
    with torch.inference_mode():
        logits, cache = chat.gen.prefill([ids], args.decode_tokens)
        token = int(logits[0].argmax())
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            token = int(chat.gen.step([token], cache)[0].argmax())
        return args.decode_tokens / (time.perf_counter() - t)


TRIVIA_SYSTEM = "Answer the trivia question with the answer only: a few words, no explanation."


def trivia(llm: str, n: int) -> tuple[float, list[dict[str, object]]]:
    """Accepted-answer accuracy on an even spread of ``n`` trivia test questions."""
    from nlpkit.data.datasets import read_dataset
    from nlpkit.llm.chat import ChatModel
    from nlpkit.llm.generate import Sampling
    from nlpkit.text.chat_template import encode_chat

    records = list(read_dataset("trivia", split="test"))
    picked = records[:: max(1, len(records) // n)][:n]
    chat = ChatModel.load(llm, "cpu")
    s = Sampling(max_new_tokens=16, temperature=0)
    out: list[dict[str, object]] = []
    for i in range(0, len(picked), 8):
        group = picked[i : i + 8]
        messages = [
            [{"role": "system", "content": TRIVIA_SYSTEM}, {"role": "user", "content": r["instruction"]}]
            for r in group
        ]
        rows = [encode_chat(chat.gen.tok, chat.template, m) for m in messages]
        for r, reply in zip(group, chat.replies(rows, [s] * len(rows)), strict=True):
            right = any(str(a).lower() in reply.lower() for a in r["answers"])
            out.append(
                {"question": r["instruction"], "answers": r["answers"], "reply": reply, "right": right}
            )
    return sum(bool(o["right"]) for o in out) / len(out), out


if __name__ == "__main__":
    main()
