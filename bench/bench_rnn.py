"""A plain RNN, a GRU and an LSTM on the same long-range recall task, with the same budget.

Each line is a key letter, N filler digits, "?" and the key again: ``c3810...?c``. The model
must carry the key across N steps to answer after "?". Each cell is nlpkit's recurrent language
model (``train-lstm --cell``'s ``LSTMLM``: one layer of 64 units, character tokens), trained
here with the loss on the answer only (the one position that needs memory; the LM loss over
every digit drowned it, see bench/README), on fresh random lines: the same steps, batch,
learning rate, schedule and seed per cell, stopping early once a cell answers every line of
its last 100 batches. Then it answers 500 fresh lines greedily; chance is 1/8 (eight keys).

    python bench/bench_rnn.py                    # --steps 3000 --lengths 5,20,50,100,200

Last line: ``rnn: N=acc/acc/acc ...`` (rnn/gru/lstm); bench/results/rnn.json and rnn.svg (the
accuracy against N, one line per cell).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
KEYS = "abcdefgh"
VOCAB = KEYS + "0123456789?"
CELLS = ("rnn", "gru", "lstm")


def batch(g: object, n: int, size: int) -> tuple[object, object]:
    """``size`` fresh lines ``KEY + n digits + ?`` as ids, and targets: the key after "?" only."""
    import torch

    keys = torch.randint(0, len(KEYS), (size,), generator=g)
    digits = torch.randint(len(KEYS), len(KEYS) + 10, (size, n), generator=g)
    x = torch.cat([keys[:, None], digits, torch.full((size, 1), VOCAB.index("?"))], 1)
    y = torch.full_like(x, -100)
    y[:, -1] = keys
    return x, y


def train_cell(cell: str, n: int, steps: int, lr: float, batch_size: int, seed: int) -> dict[str, float]:
    import torch

    from nlpkit.lm.config import ModelConfig
    from nlpkit.lm.model import build_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(arch="lstm", cell=cell, vocab_size=len(VOCAB), n_layer=1, n_embd=64,
                                    n_head=1, block_size=n + 2, tie_embeddings=False))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    recent: list[float] = []
    t0, step = time.perf_counter(), 0
    for step in range(1, steps + 1):
        for group in opt.param_groups:  # cosine decay to lr/10 over the budget
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps)))
        x, y = batch(g, n, batch_size)
        logits, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = [*recent[-99:], float((logits[:, -1].argmax(-1) == y[:, -1]).float().mean())]
        if len(recent) == 100 and min(recent) == 1.0:
            break
    seconds = time.perf_counter() - t0
    test_g = torch.Generator().manual_seed(10_000 + n)
    x, y = batch(test_g, n, 500)
    model.eval()
    with torch.inference_mode():
        logits, _ = model(x)
    accuracy = float((logits[:, -1, : len(KEYS)].argmax(-1) == y[:, -1]).float().mean())
    return {"accuracy": accuracy, "steps": step, "train_s": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000, help="most steps per cell and length")
    ap.add_argument("--lengths", default="5,20,50,100,200")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--redraw", action="store_true", help="only redraw rnn.svg from rnn.json")
    args = ap.parse_args()
    if args.redraw:
        saved = json.loads((HERE / "results" / "rnn.json").read_text())
        results = {c: {int(n): r for n, r in v.items()} for c, v in saved["results"].items()}
        (HERE / "results" / "rnn.svg").write_text(_svg(results, sorted(results["rnn"])))
        return
    import torch

    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {c: {} for c in CELLS}
    for n in lengths:
        for cell in CELLS:
            r = train_cell(cell, n, args.steps, args.lr, args.batch_size, args.seed)
            results[cell][n] = r
            what = f"accuracy {r['accuracy']:.3f} after {r['steps']} steps ({r['train_s']:.0f} s)"
            print(f"N={n:4d} {cell:5s} {what}", file=sys.stderr, flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    setup = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed")}
    (HERE / "results" / "rnn.json").write_text(json.dumps({**setup, "results": results}, indent=2) + "\n")
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
    out.append(f'<line x1="{left}" x2="{W - 20}" y1="{y(0.125)}" y2="{y(0.125)}" stroke="#999" '
               'stroke-dasharray="4 3"/>')  # fmt: skip
    out.append(f'<text x="{W - 22}" y="{y(0.125) - 4}" text-anchor="end" fill="#999">chance</text>')
    for k, cell in enumerate(CELLS):
        pts = " ".join(f"{x(i)},{y(results[cell][n]['accuracy'])}" for i, n in enumerate(lengths))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colors[cell]}" stroke-width="2"/>')
        out.append(f'<text x="{W - 120}" y="{top + 60 + 16 * k}" fill="{colors[cell]}">{cell.upper()}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


if __name__ == "__main__":
    main()
