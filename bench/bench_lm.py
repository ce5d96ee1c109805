"""nlpkit train-transformer / train-lstm vs plain PyTorch reference loops (bench/ref_lm.py), side by side.

Character level on ../shared/data/shakespeare (every non-blank line of the 42 files, in name
order: 5 MB). Every side gets the same text, the same split (first 90% trains, last 10%
validates), the same model size, the same hyperparameters, the same wall-clock budget
(``--budget`` s of training each, evaluations included) and 2 threads; the order of the sides
rotates from one repetition to the next, and ``--reps`` (default 3) give a median with min and max.

* transformer: nlpkit's Llama-family decoder (RMSNorm, RoPE, SwiGLU 8/3 n_embd wide) against
  - ``gpt``: nanoGPT's GPT (LayerNorm, learned positions, GELU MLP 4 n_embd wide), the classic;
  - ``llama``: the same loop on the same architecture as nlpkit's, written plainly (F.rms_norm,
    rotate_half, three Linear SwiGLU, foreach AdamW): what nlpkit's own implementation adds;
  all 4 layers, 4 heads, n_embd 128, block 128, batch 16 (nlpkit and llama have no position
  table, so 3% fewer parameters than gpt);
* lstm: nlpkit's LSTM LM vs PyTorch's word_language_model-style loop, 2 layers of 256, tied.

Training tokens/s is measured by each side over its training steps (evaluation excluded); the
validation loss is over every character of the validation split (``nlpkit eval`` for nlpkit,
the same blocks in ref_lm.py). Also: a generated sample, and the transformers parity check
(a saved decoder folder loaded by ``LlamaForCausalLM``: max logit difference).

    .venv/bin/python bench/bench_lm.py            # --budget 120 --reps 3: about 35 minutes
    .venv/bin/python bench/bench_lm.py --budget 20 --reps 1 --only transformer   # a smoke run

The last line is ``bench_lm: transformer_tok_s=... vs_gpt_speed=... vs_gpt_val=... ...`` (speed:
nlpkit's median tokens/s over the reference's; val: nlpkit's median validation loss minus the
reference's); bench/results/lm.json gets every figure, run by run, with the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "NLPKIT_QUIET": "1"}

SHARED = dict(block_size=128, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=100, weight_decay=0.1,
              beta2=0.99, grad_clip=1.0, dropout=0.0, eval_interval=250, eval_iters=20)  # fmt: skip
REFERENCES = {"transformer": ["gpt", "llama"], "lstm": ["lstm"]}
MODELS = {
    "transformer": dict(n_layer=4, n_head=4, n_embd=128),
    "lstm": dict(n_layer=2, n_embd=256),
}


def build_corpus(folder: Path) -> tuple[Path, Path]:
    """corpus.txt (every non-blank line, in file-name order) and val.txt (its last 10%)."""
    lines = [
        ln
        for p in sorted(CORPUS.glob("*.txt"))
        for ln in p.read_text(encoding="utf-8").splitlines()
        if ln.strip()
    ]
    text = "".join(ln + "\n" for ln in lines)
    corpus, val = folder / "corpus.txt", folder / "val.txt"
    corpus.write_text(text, encoding="utf-8")
    val.write_text(text[int(len(text) * 0.9) :], encoding="utf-8")
    return corpus, val


def flags(settings: dict[str, Any]) -> list[str]:
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def run_nlpkit(kind: str, corpus: Path, val: Path, out: Path, budget: float) -> dict[str, Any]:
    cmd = "train-lstm" if kind == "lstm" else "train-transformer"
    settings = {**MODELS[kind], **SHARED, "max_time": budget, "threads": 2, "seed": 1337,
                "checkpoint_interval": 0, "log_interval": 50}  # fmt: skip
    if kind == "transformer":
        settings["n_kv_head"] = settings["n_head"]
    args = [sys.executable, "-m", "nlpkit", cmd, str(corpus), "-o", str(out), *flags(settings), "-q"]
    summary = json.loads(subprocess.run(args, check=True, capture_output=True, env=ENV, cwd=REPO).stdout)
    ev = subprocess.run([sys.executable, "-m", "nlpkit", "eval", str(out), str(val), "--batch-size", "64"],
                        check=True, capture_output=True, env=ENV, cwd=REPO)  # fmt: skip
    result = json.loads(ev.stdout)
    return {"steps": summary["step"], "tokens_per_s": summary["tokens_per_s"], "val_loss": result["loss"],
            "val_tokens": result["tokens"], "params": summary["params"]}  # fmt: skip


def run_reference(kind: str, arch: str, corpus: Path, budget: float) -> dict[str, Any]:
    settings = {**MODELS[kind], **SHARED, "max_time": budget, "threads": 2, "seed": 1337}
    args = [
        sys.executable,
        str(REPO / "bench" / "ref_lm.py"),
        "--arch",
        arch,
        "--data",
        str(corpus),
        *flags(settings),
    ]
    return json.loads(subprocess.run(args, check=True, capture_output=True, env=ENV, cwd=REPO).stdout)


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_kind(kind: str, corpus: Path, val: Path, tmp: Path, budget: float, reps: int) -> dict[str, Any]:
    sides = ["nlpkit", *REFERENCES[kind]]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for rep in range(reps):
        order = sides[rep % len(sides) :] + sides[: rep % len(sides)]  # rotate who goes first
        for side in order:
            load = os.getloadavg()[0]
            if side == "nlpkit":
                r = run_nlpkit(kind, corpus, val, tmp / f"{kind}-{rep}", budget)
            else:
                r = run_reference(kind, side, corpus, budget)
            r["load_before"] = round(load, 2)
            runs[side].append(r)
            print(f"{kind} rep {rep} {side}: {r['tokens_per_s']:.0f} tokens/s, {r['steps']} steps, "
                  f"val_loss {r['val_loss']:.4f}, load {load:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    out: dict[str, Any] = {"runs": runs}
    for side, rs in runs.items():
        out[side] = {
            "tokens_per_s": summarize([r["tokens_per_s"] for r in rs]),
            "val_loss": summarize([r["val_loss"] for r in rs]),
            "params": rs[0]["params"],
        }
    for ref in REFERENCES[kind]:
        ours, theirs = out["nlpkit"], out[ref]
        pairs = [
            a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["nlpkit"], runs[ref], strict=True)
        ]
        out[f"vs_{ref}"] = {
            "speed_ratio": ours["tokens_per_s"]["median"] / theirs["tokens_per_s"]["median"],
            "speed_ratio_per_rep": summarize(pairs),
            "val_loss_diff": ours["val_loss"]["median"] - theirs["val_loss"]["median"],
        }
        if runs["nlpkit"][0]["val_tokens"] != runs[ref][0]["val_tokens"]:
            print(f"warning: validation targets differ ({runs['nlpkit'][0]['val_tokens']} vs "
                  f"{runs[ref][0]['val_tokens']})", file=sys.stderr)  # fmt: skip
    return out


def sample(model: Path) -> str:
    args = [
        sys.executable,
        "-m",
        "nlpkit",
        "generate",
        str(model),
        "ROMEO:",
        "-n",
        "300",
        "--seed",
        "1",
        "-f",
        "text",
    ]
    return subprocess.run(args, check=True, capture_output=True, env=ENV, cwd=REPO, text=True).stdout


def hf_parity(model: Path) -> dict[str, Any]:
    """Load the nlpkit folder in transformers' LlamaForCausalLM; compare logits on real text."""
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError:
        return {"skipped": "transformers is not installed (pip install -e '.[bench]')"}
    from nlpkit.lm.model import load_model
    from nlpkit.text.tokenizer import load

    ours, cfg = load_model(model)
    theirs = LlamaForCausalLM.from_pretrained(str(model)).eval()
    ids = load(str(model)).encode("ROMEO:\nBut, soft! what light through yonder window breaks?\n").ids
    x = torch.tensor([ids[: cfg.block_size]])
    with torch.no_grad():
        diff = (ours(x)[0] - theirs(x).logits).abs().max().item()
    return {"max_abs_logit_diff": diff, "tokens": x.numel(), "ok": diff < 1e-4}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=120.0, help="seconds of training per run")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", choices=["transformer", "lstm"], default=None)
    p.add_argument("-o", "--output", default=str(REPO / "bench" / "results" / "lm.json"))
    args = p.parse_args()
    started = time.time()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "threads": 2, "budget_s": args.budget, "reps": args.reps,
        "settings": {"shared": SHARED, "models": MODELS},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as tmp_name:
        tmp = Path(tmp_name)
        corpus, val = build_corpus(tmp)
        for kind in [args.only] if args.only else ["transformer", "lstm"]:
            results[kind] = bench_kind(kind, corpus, val, tmp, args.budget, args.reps)
            results[kind]["sample"] = sample(tmp / f"{kind}-0")
            print(f"--- {kind} sample (nlpkit generate, seed 1):\n{results[kind]['sample']}", file=sys.stderr)
        if "transformer" in results:
            results["hf_parity"] = hf_parity(tmp / "transformer-0")
    results["wall_s"] = round(time.time() - started, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    parts = []
    for kind in ("transformer", "lstm"):
        if kind in results:
            r = results[kind]
            parts += [f"{kind}_tok_s={r['nlpkit']['tokens_per_s']['median']:.0f}",
                      f"{kind}_val_loss={r['nlpkit']['val_loss']['median']:.4f}"]  # fmt: skip
            for ref in REFERENCES[kind]:
                parts += [f"vs_{ref}_speed={r[f'vs_{ref}']['speed_ratio']:.3f}",
                          f"vs_{ref}_val={r[f'vs_{ref}']['val_loss_diff']:+.4f}"]  # fmt: skip
    if "hf_parity" in results and "max_abs_logit_diff" in results["hf_parity"]:
        parts.append(f"hf_max_logit_diff={results['hf_parity']['max_abs_logit_diff']:.2e}")
    print("bench_lm: " + " ".join(parts))


if __name__ == "__main__":
    main()
