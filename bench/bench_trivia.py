"""The trivia task: SmolLM2-135M-Instruct fine-tuned with LoRA and QLoRA to answer in a short
form, against the base model, on the test split of ``nlpkit data pull trivia``.

For each of base, LoRA and QLoRA (the QLoRA adapter applied over the float base, as QLoRA
adapters are used after training):

* response loss: the mean cross-entropy of the reference answer's tokens (the first accepted
  answer and the end-of-turn marker, prompt tokens masked) under the chat template;
* accuracy: greedy replies (``nlpkit chat --temperature 0``, 24 new tokens at most); a reply is
  right when an accepted answer, normalised (lower case, punctuation and articles dropped,
  spaces collapsed), appears in the normalised reply as whole words.

Training runs ``nlpkit lora train`` as a user would: r=8, alpha=16 on q,k,v,o,gate,up,down
(all-linear), lr 2e-4 with warmup and cosine, batch 8, ``--max-steps`` steps over the train
split (in nlpkit's seeded order), 2 threads.

    .venv/bin/python bench/bench_trivia.py                   # --steps 300 --test 200: ~25 minutes on 2 cores
    .venv/bin/python bench/bench_trivia.py --steps 20 --test 20   # a smoke run

Ends with ``bench_trivia: base_acc=... lora_acc=... qlora_acc=... base_loss=... ...``;
bench/results/trivia.json gets everything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's nlpkit, not an installed one
MODEL = "smollm2-135m-instruct"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "PYTHONPATH": str(REPO),
    "NLPKIT_QUIET": "1",
}


def nlpkit(*args: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "nlpkit", *args], input=stdin, capture_output=True, env=ENV)
    if proc.returncode != 0:
        sys.exit(f"bench_trivia: nlpkit {' '.join(args[:4])} failed:\n{proc.stderr.decode()[-2000:]}")
    return proc.stdout


def normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def accepted(reply: str, answers: list[str]) -> bool:
    r = f" {normalise(reply)} "
    return any(n and f" {n} " in r for n in (normalise(str(a)) for a in answers))


def response_loss(test: Path, adapter: str | None) -> float:
    """Mean loss per answer token (prompt masked) through nlpkit's SFT data and evaluation."""
    import torch

    from nlpkit.lm.lora import load_adapter
    from nlpkit.lm.model import load_model
    from nlpkit.lm.train.evaluate import evaluate
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate
    from nlpkit.text.tokenizer import load
    from nlpkit.tune.sft import SFTSet, read_examples

    torch.set_num_threads(2)
    folder = resolve_model(MODEL)
    model, cfg = load_model(folder)
    if adapter:
        load_adapter(model, adapter, merge=True)
    examples, _ = read_examples([str(test)], load(str(folder)), ChatTemplate.from_folder(folder), 256)
    loss, _ = evaluate(model, SFTSet(examples, int(cfg.pad_id or 0), train=False), 16, "cpu")
    return loss


def accuracy(test_records: list[dict[str, Any]], adapter: str | None) -> tuple[float, list[str]]:
    lines = b"".join(
        json.dumps({"messages": [{"role": "user", "content": r["instruction"]}]}).encode() + b"\n"
        for r in test_records
    )
    args = [
        "chat",
        MODEL,
        "-i",
        "-",
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ]
    if adapter:
        args += ["--adapter", adapter]
    replies = [json.loads(x)["reply"] for x in nlpkit(*args, stdin=lines).decode().splitlines()]
    right = sum(accepted(rep, r["answers"]) for rep, r in zip(replies, test_records, strict=True))
    return right / len(test_records), replies


def train(train_file: Path, out: Path, steps: int, qlora: bool, lr: float) -> dict[str, Any]:
    args = [
        "lora",
        "train",
        MODEL,
        str(train_file),
        "-o",
        str(out),
        "--targets",
        "all-linear",
        "--max-steps",
        str(steps),
        "--batch-size",
        "8",
        "--max-length",
        "128",
        "--threads",
        "2",
        "--device",
        "cpu",
        "--eval-interval",
        "100000",
        "--eval-iters",
        "4",
        "--log-interval",
        "10",
    ]
    args += ["--lr", str(lr)]
    if qlora:
        args.append("--qlora")
    t0 = time.perf_counter()
    summary = json.loads(nlpkit(*args).decode().strip().splitlines()[-1])
    return summary | {"train_wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--test", type=int, default=200, help="test questions scored (the first N; 0: all 837)")
    ap.add_argument("--only", default="base,lora,qlora")
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_trivia."))
    train_file, test_file = tmp / "train.jsonl", tmp / "test.jsonl"
    train_file.write_bytes(nlpkit("data", "show", "trivia", "--split", "train"))
    test_records = [json.loads(x) for x in nlpkit("data", "show", "trivia", "--split", "test").splitlines()]
    if args.test:
        test_records = test_records[: args.test]
    test_file.write_text("".join(json.dumps(r) + "\n" for r in test_records))
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "steps": args.steps,
        "lr": args.lr,
        "test_questions": len(test_records),
        "model": MODEL,
    }
    for name in args.only.split(","):
        adapter = None
        if name != "base":
            out = tmp / name
            results[f"{name}_train"] = train(train_file, out, args.steps, qlora=name == "qlora", lr=args.lr)
            adapter = str(out)
        loss = response_loss(test_file, adapter)
        acc, replies = accuracy(test_records, adapter)
        results[name] = {
            "response_loss": loss,
            "accuracy": acc,
            "examples": [
                {"q": r["instruction"], "answers": r["answers"], "reply": rep}
                for r, rep in zip(test_records[:8], replies, strict=False)
            ],
        }
        print(
            f"{name}: response loss {loss:.3f}, accuracy {acc:.3f} ({len(test_records)} questions)",
            file=sys.stderr,
        )
    (REPO / "bench" / "results" / "trivia.json").write_text(
        json.dumps(results, indent=1, ensure_ascii=False) + "\n"
    )
    parts = [
        f"{n}_acc={results[n]['accuracy']:.3f} {n}_loss={results[n]['response_loss']:.3f}"
        for n in args.only.split(",")
    ]
    print(f"bench_trivia: {' '.join(parts)} steps={args.steps} test={len(test_records)}")


if __name__ == "__main__":
    main()
