"""nlpkit lora train vs Hugging Face PEFT + transformers on the same LoRA step, side by side.

SmolLM2-135M-Instruct (``nlpkit models pull smollm2-135m-instruct``), float32 on both sides,
LoRA r=8, alpha=16, dropout 0 on q_proj and v_proj, batch 4 x 256 tokens (completion records
of Shakespeare cut to 257 tokens: every token trained), AdamW (lr 2e-4, betas 0.9/0.999, no
weight decay, clip 1.0, nlpkit's warmup + cosine schedule on both sides), 2 threads.

* nlpkit: the whole ``nlpkit lora train`` process as a user runs it (the one training loop);
  per-step times come from its train.jsonl (``--log-interval 1``).
* reference: ``peft.get_peft_model`` over ``transformers.LlamaForCausalLM`` loaded from
  ``nlpkit export --to hf`` of the same model, trained by a plain loop in a worker process
  (this file, ``--worker peft``): the same batches in the same order (nlpkit's own batcher),
  the same initial lora_A (copied from nlpkit's seeded initialisation; lora_B is zero on both
  sides), the same schedule.
* same answer: the first-step loss must agree within 1e-3 (both start from the base model on
  the same batch), and the loss curves are printed side by side.
* QLoRA: ``nlpkit lora train --qlora`` (NF4 base) once: step time, peak RSS, and the bytes of
  the frozen base matrices against float32.

Tokens/s is the steady state: steps after the first two; peak RSS is each process's own
(``os.wait4``). Sides alternate A B A B for ``--reps`` repetitions; medians with min and max.

    .venv/bin/python bench/bench_lora.py                 # --reps 3 --steps 6: about 6 minutes
    .venv/bin/python bench/bench_lora.py --reps 1 --steps 3 --no-qlora   # a smoke run

The last line is ``bench_lora: speed_ratio=... rss_ratio=... first_loss_diff=... ...``;
bench/results/lora.json gets every figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
CORPUS = REPO.parent / "shared" / "data" / "shakespeare"
MODEL = "smollm2-135m-instruct"
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
SETTINGS = dict(
    rank=8, alpha=16, dropout=0.0, batch_size=4, max_length=257, lr=2e-4, warmup_steps=2, seed=1337
)


def make_data(path: Path, n: int = 48) -> None:
    """Completion records of ~2,000 characters of Shakespeare (well over 257 tokens each)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))[:3])
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": text[i * 2000 : (i + 1) * 2000]}) + "\n")


def run_timed(cmd: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds, peak RSS (MB), stdout (os.wait4: the child's own rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=ENV)
        killer = threading.Timer(timeout, os.kill, (proc.pid, signal.SIGKILL))
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_lora: {' '.join(cmd[:5])} ... failed:\n{stderr[-3000:]}")
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}


def nlpkit_side(data: Path, out: Path, steps: int, qlora: bool = False) -> dict[str, Any]:
    s = SETTINGS
    cmd = [
        sys.executable,
        "-m",
        "nlpkit",
        "lora",
        "train",
        MODEL,
        str(data),
        "-o",
        str(out),
        "--threads",
        "2",
        "--device",
        "cpu",
        "--rank",
        str(s["rank"]),
        "--alpha",
        str(s["alpha"]),
        "--dropout",
        str(s["dropout"]),
        "--targets",
        "q_proj,v_proj",
        "--batch-size",
        str(s["batch_size"]),
        "--max-length",
        str(s["max_length"]),
        "--lr",
        str(s["lr"]),
        "--warmup-steps",
        str(s["warmup_steps"]),
        "--weight-decay",
        "0",
        "--max-steps",
        str(steps),
        "--log-interval",
        "1",
        "--eval-interval",
        "100000",
        "--eval-iters",
        "1",
        "--checkpoint-interval",
        "0",
        "--seed",
        str(s["seed"]),
    ]
    if qlora:
        cmd.append("--qlora")
    r = run_timed(cmd)
    log = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    steps_log = [x for x in log if "loss" in x and "tokens_per_s" in x]
    times = [x["tokens"] / x["tokens_per_s"] for x in steps_log]  # cumulative training seconds
    step_s = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    summary = json.loads(r["stdout"].strip().splitlines()[-1])
    return {
        "losses": [x["loss"] for x in steps_log],
        "step_s": step_s,
        "rss_mb": r["rss_mb"],
        "wall_s": r["wall_s"],
        "summary": summary,
        "stderr_tail": r["stderr"][-600:],
    }


def peft_side(data: Path, hf: Path, steps: int) -> dict[str, Any]:
    r = run_timed(
        [
            sys.executable,
            __file__,
            "--worker",
            "peft",
            "--data",
            str(data),
            "--hf",
            str(hf),
            "--steps",
            str(steps),
        ]
    )
    return json.loads(r["stdout"].strip().splitlines()[-1]) | {"rss_mb": r["rss_mb"], "wall_s": r["wall_s"]}


def peft_worker(data: str, hf: str, steps: int) -> None:
    """The reference: PEFT over transformers, nlpkit's batches and initial lora_A."""
    import numpy as np
    import peft
    import torch
    import transformers
    from torch.nn import functional as F

    from nlpkit.lm.lora import LoraConfig, apply_lora
    from nlpkit.lm.model import load_model
    from nlpkit.lm.train.config import TrainConfig
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate
    from nlpkit.text.tokenizer import load
    from nlpkit.tune.lora import DEFAULTS
    from nlpkit.tune.sft import SFTSet, read_examples

    torch.set_num_threads(2)
    s = SETTINGS
    folder = resolve_model(MODEL)
    examples, _ = read_examples([data], load(str(folder)), ChatTemplate.from_folder(folder), s["max_length"])
    cfg = TrainConfig(
        **(
            DEFAULTS
            | {
                "max_steps": steps,
                "lr": s["lr"],
                "warmup_steps": s["warmup_steps"],
                "seed": s["seed"],
                "batch_size": s["batch_size"],
            }
        )
    )
    cut = max(1, round(len(examples) * cfg.val_fraction))
    batches = SFTSet(examples[:-cut], 2, cfg.seed)
    # nlpkit's initial lora_A: the same seeded initialisation as train_lora
    ours, _ = load_model(folder)
    torch.manual_seed(cfg.seed)
    apply_lora(ours, LoraConfig(s["rank"], s["alpha"], s["dropout"], ("q_proj", "v_proj")))
    init = {n: p.detach().clone() for n, p in ours.named_parameters() if ".lora_a." in n}
    del ours
    model = transformers.LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32)
    lcfg = peft.LoraConfig(
        r=s["rank"],
        lora_alpha=s["alpha"],
        lora_dropout=s["dropout"],
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lcfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                key = name.replace("base_model.model.", "", 1).replace("lora_A.default", "lora_a")
                p.copy_(init[key])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=0.0)
    losses, step_s = [], []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step, 0.0)
        t0 = time.perf_counter()
        x, y = batches.batch(0, step * cfg.batch_size + np.arange(cfg.batch_size))
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        losses.append(float(loss))
    print(json.dumps({"losses": losses, "step_s": step_s, "tokens_per_step": int(x.numel())}))


def steady(step_s: list[float], tokens: int) -> float:
    """Tokens/s over the steps after the first two (warm-up)."""
    rest = step_s[2:] or step_s
    return tokens * len(rest) / sum(rest)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} (min {min(values):.1f} max {max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--no-qlora", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--data")
    ap.add_argument("--hf")
    args = ap.parse_args()
    if args.worker == "peft":
        peft_worker(args.data, args.hf, args.steps)
        return
    import peft
    import transformers

    tmp = Path(tempfile.mkdtemp(prefix="bench_lora."))
    data, hf = tmp / "shakespeare.jsonl", tmp / "hf"
    make_data(data)
    subprocess.run(
        [sys.executable, "-m", "nlpkit", "export", MODEL, "--to", "hf", str(hf)], env=ENV, check=True
    )
    tokens = SETTINGS["batch_size"] * (SETTINGS["max_length"] - 1)
    runs: dict[str, list[dict[str, Any]]] = {"nlpkit": [], "peft": []}
    for rep in range(args.reps):
        order = ["nlpkit", "peft"] if rep % 2 == 0 else ["peft", "nlpkit"]
        for side in order:
            r = (
                nlpkit_side(data, tmp / f"lora-{rep}", args.steps)
                if side == "nlpkit"
                else peft_side(data, hf, args.steps)
            )
            r["tok_s"] = steady(r["step_s"], tokens)
            runs[side].append(r)
            print(
                f"rep {rep} {side}: {r['tok_s']:.1f} tok/s, peak RSS {r['rss_mb']:.0f} MB, "
                f"losses {[round(x, 4) for x in r['losses']]}",
                file=sys.stderr,
            )
    q = None
    if not args.no_qlora:
        q = nlpkit_side(data, tmp / "qlora", args.steps, qlora=True)
        q["tok_s"] = steady(q["step_s"], tokens)
        print(
            f"qlora: {q['tok_s']:.1f} tok/s, peak RSS {q['rss_mb']:.0f} MB, {q['stderr_tail']}",
            file=sys.stderr,
        )
    ours, ref = runs["nlpkit"], runs["peft"]
    speed = statistics.median(r["tok_s"] for r in ours) / statistics.median(r["tok_s"] for r in ref)
    rss = statistics.median(r["rss_mb"] for r in ours) / statistics.median(r["rss_mb"] for r in ref)
    first = abs(ours[0]["losses"][0] - ref[0]["losses"][0])
    last = abs(ours[0]["losses"][-1] - ref[0]["losses"][-1])
    result = {
        "date": datetime.date.today().isoformat(),
        "settings": SETTINGS,
        "steps": args.steps,
        "reps": args.reps,
        "tokens_per_step": tokens,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "load_avg": os.getloadavg()[0],
        "nlpkit": ours,
        "reference": ref,
        "qlora": q,
        "speed_ratio": speed,
        "rss_ratio": rss,
        "first_loss_diff": first,
        "last_loss_diff": last,
    }
    out = REPO / "bench" / "results" / "lora.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"nlpkit tok/s {spread([r['tok_s'] for r in ours])}, RSS MB {spread([r['rss_mb'] for r in ours])}")
    print(f"peft   tok/s {spread([r['tok_s'] for r in ref])}, RSS MB {spread([r['rss_mb'] for r in ref])}")
    print(f"losses nlpkit {[round(x, 4) for x in ours[0]['losses']]}")
    print(f"losses peft   {[round(x, 4) for x in ref[0]['losses']]}")
    qline = ""
    if q is not None:
        base = q["summary"].get("base_bytes", {})
        qline = (
            f" qlora_tok_s={q['tok_s']:.1f} qlora_rss_mb={q['rss_mb']:.0f}"
            f" qlora_base_ratio={base.get('ratio', float('nan')):.3f}"
        )
    print(
        f"bench_lora: speed_ratio={speed:.2f} rss_ratio={rss:.2f} first_loss_diff={first:.2e} "
        f"last_loss_diff={last:.2e} nlpkit_tok_s={statistics.median(r['tok_s'] for r in ours):.1f} "
        f"peft_tok_s={statistics.median(r['tok_s'] for r in ref):.1f}{qline} threads=2"
    )


if __name__ == "__main__":
    main()
