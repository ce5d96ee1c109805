"""GPU check: nlpkit's training loop on a mid-size decoder, bf16 autocast: tokens/s and MFU.

    python bench/gpu_check.py                 # about 60 s of training plus a few seconds of setup
    python bench/gpu_check.py --seconds 30 --n-layer 24

Runs ``nlpkit.lm.train.loop.train`` (the same loop as ``nlpkit train-transformer``: fused AdamW, bf16
autocast, gradient clipping) on a GPT-2-small-sized Llama decoder (12 layers, n_embd 768, 12 heads,
block 1024, batch 16) over synthetic text made here (no data files needed; character level, so the
vocabulary and the output head are small). MFU is model FLOPs utilisation: 6 * N * tokens/s over
the accelerator's dense bf16 peak (``--peak-tflops``, default 989 for an H200), N the parameter
count; ``mfu_attn`` adds the attention term of nanoGPT's estimate (12 * n_layer * n_embd * T per
token). Without CUDA it prints ``gpu_check: no CUDA`` and exits 0.

The last line is ``gpu_check: tokens_per_s=... mfu=... ...``; bench/results/gpu.json gets the
figures (``-o`` to change).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic_text(chars: int, seed: int = 0) -> str:
    """Lines of random words: plenty of text for a minute of training, made in a second."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(rng.randint(1, 9))) for _ in range(5000)
    ]
    lines, size = [], 0
    while size < chars:
        line = " ".join(rng.choices(words, k=rng.randint(4, 14)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description="nlpkit training throughput and MFU on a GPU")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200: 989)")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script on a tiny config")
    p.add_argument("-o", "--output", default=str(REPO / "bench" / "results" / "gpu.json"))
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA")
        return
    from nlpkit.lm.train.loop import train

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(synthetic_text(10_000_000 if args.device == "cuda" else 200_000), encoding="utf-8")
        settings = {
            "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head,
            "block_size": args.block_size, "batch_size": args.batch_size, "max_time": args.seconds,
            "max_steps": 10**9, "lr": 6e-4,
            "warmup_steps": 100, "eval_interval": 10**9, "eval_iters": 2, "log_interval": 50,
            "checkpoint_interval": 0, "device": args.device,
        }  # fmt: skip
        started = time.perf_counter()
        summary = train([str(corpus)], Path(tmp) / "model", arch="llama", preset="large", overrides=settings)
        wall = time.perf_counter() - started
    n, tps = summary["params"], summary["tokens_per_s"]
    attn = 12 * args.n_layer * args.n_embd * args.block_size  # nanoGPT's attention FLOPs per token
    result = {
        "device": device, "torch": torch.__version__, "params": n, "steps": summary["step"],
        "tokens_per_s": tps, "mfu": 6 * n * tps / (args.peak_tflops * 1e12),
        "mfu_attn": (6 * n + attn) * tps / (args.peak_tflops * 1e12), "loss": summary.get("loss"),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else None,
        "wall_s": round(wall, 1),
        "settings": settings | {"precision": "bf16 autocast", "peak_tflops": args.peak_tflops},
    }  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"gpu_check: device={device.replace(' ', '_')} params={n} tokens_per_s={tps:.0f} "
          f"mfu={result['mfu']:.3f} mfu_attn={result['mfu_attn']:.3f} steps={summary['step']} "
          f"peak_mem_gb={result['peak_memory_gb'] or 0:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
