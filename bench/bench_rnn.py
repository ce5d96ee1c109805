"""A plain RNN, a GRU and an LSTM on the same long-range recall task, with the same budget.

Each line is a key letter, N filler digits, "?" and the key again: ``c3810...?c``. The model
must carry the key across N steps to answer after "?". Every cell trains through nlpkit's one
loop (``train-lstm --cell``: one layer of 64 units, character tokens, the same steps, batch,
learning rate and seed), then answers 200 fresh lines greedily; chance is 1/8 (eight keys).

    python bench/bench_rnn.py                    # --steps 1500 --lengths 5,20,50,100

Last line: ``rnn: N=acc/acc/acc ...`` (rnn/gru/lstm); bench/results/rnn.json and rnn.svg (the
accuracy against N, one line per cell).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
KEYS = "abcdefgh"
CELLS = ("rnn", "gru", "lstm")


def line(rng: random.Random, n: int) -> str:
    key = rng.choice(KEYS)
    return key + "".join(rng.choice("0123456789") for _ in range(n)) + "?" + key


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lengths", default="5,20,50,100")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from nlpkit.llm.generate import Generator
    from nlpkit.lm.train.loop import train

    lengths = [int(x) for x in args.lengths.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {c: {} for c in CELLS}
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            rng = random.Random(n)
            data = Path(tmp) / f"n{n}.txt"
            data.write_text("\n".join(line(rng, n) for _ in range(4000)) + "\n")
            test_rng = random.Random(10_000 + n)
            test = [line(test_rng, n) for _ in range(200)]
            for cell in CELLS:
                out = Path(tmp) / f"{cell}-{n}"
                t0 = time.perf_counter()
                train([str(data)], out, arch="lstm", preset="tiny", overrides={
                    "cell": cell, "n_layer": 1, "n_embd": 64, "block_size": 2 * (n + 3), "batch_size": 16,
                    "max_steps": args.steps, "lr": 1e-2, "warmup_steps": 20, "dropout": 0.0, "seed": 1,
                    "eval_interval": args.steps, "eval_iters": 2, "log_interval": 50, "threads": args.threads,
                    "device": "cpu",
                })  # fmt: skip
                seconds = time.perf_counter() - t0
                gen = Generator.load(out, "cpu")
                right = 0
                with torch.inference_mode():
                    for text in test:
                        logits, _ = gen.prefill([gen.prompt_ids(text[:-1])], 1)
                        logits[0, gen.banned()] = float("-inf")
                        right += gen.tok.decode([int(logits[0].argmax())]) == text[-1]
                results[cell][n] = {"accuracy": right / len(test), "train_s": round(seconds, 1)}
                print(
                    f"N={n:4d} {cell:5s} accuracy {right / len(test):.3f} ({seconds:.0f} s)", file=sys.stderr
                )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "rnn.json").write_text(
        json.dumps({"steps": args.steps, "results": results}, indent=2) + "\n"
    )
    (HERE / "results" / "rnn.svg").write_text(_svg(results, lengths))
    cells = {n: "/".join(f"{results[c][n]['accuracy']:.2f}" for c in CELLS) for n in lengths}
    print("rnn: " + " ".join(f"N{n}={v}" for n, v in cells.items()))


def _svg(results: dict[str, dict[int, dict[str, float]]], lengths: list[int]) -> str:
    W, H, left, top, bottom = 520, 320, 60, 40, 50
    colors = {"rnn": "#d62728", "gru": "#2ca02c", "lstm": "#1f77b4"}

    def x(i: int) -> float:
        return left + (W - left - 20) * i / max(len(lengths) - 1, 1)

    def y(acc: float) -> float:
        return top + (H - top - bottom) * (1 - acc)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">Recall of a key N steps back (chance 0.125)</text>',
           ]  # fmt: skip
    for acc in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{W - 20}" y1="{y(acc)}" y2="{y(acc)}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y(acc) + 4}" text-anchor="end">{acc:.2f}</text>')
    for i, n in enumerate(lengths):
        out.append(f'<text x="{x(i)}" y="{H - bottom + 18}" text-anchor="middle">N={n}</text>')
    for k, cell in enumerate(CELLS):
        pts = " ".join(f"{x(i)},{y(results[cell][n]['accuracy'])}" for i, n in enumerate(lengths))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colors[cell]}" stroke-width="2"/>')
        out.append(f'<text x="{W - 120}" y="{top + 16 * k + 10}" fill="{colors[cell]}">{cell.upper()}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


if __name__ == "__main__":
    main()
