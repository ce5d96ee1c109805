"""nlpkit's reward-model and DPO training vs TRL's RewardTrainer and DPOTrainer, side by side.

SmolLM2-135M-Instruct (``nlpkit models pull smollm2-135m-instruct``) in float32 on both sides,
LoRA r=16, alpha=32, dropout 0 on every linear layer of the blocks (PEFT's "all-linear"), plus
the whole ``score`` head for the reward model; the same preference pairs (rotten-tomatoes,
``nlpkit data show rotten-tomatoes --shape preference``) in the same batches; AdamW (fused on
both sides), no warmup, no weight decay, clip 1.0; no gradient checkpointing, no dropout, no
evaluation during the steps; the same torch threads.

* nlpkit: ``nlpkit.tune.lora.train_lora(..., task="rm" | "dpo")`` in its own process (this file,
  ``--worker nlpkit``): the one training loop behind ``nlpkit rlhf rm`` / ``rlhf dpo``; the loop's
  ``_step`` (one optimizer step: batch, forward, backward, clip, AdamW) is wrapped to stamp its
  start and end.
* TRL: ``RewardTrainer`` (``AutoModelForSequenceClassification``, num_labels=1, PEFT
  ``task_type="SEQ_CLS"``: ``score`` trained whole via ``modules_to_save``) and ``DPOTrainer``
  (``AutoModelForCausalLM``, ``task_type="CAUSAL_LM"``, ``precompute_ref_log_probs=False``, the
  reference is the same model with the adapter off, as in nlpkit) in their own process
  (``--worker trl``), from the same model folder; a ``TrainerCallback`` stamps
  ``on_step_begin`` / ``on_step_end``.
* same batches: TRL gets the records of nlpkit's training split in the order nlpkit's seeded
  batcher takes them (conversational shape: prompt = one user message, chosen / rejected = one
  assistant message) with ``train_sampling_strategy="sequential"``; the script checks that TRL's
  token ids of every pair used equal nlpkit's (``same_ids``) and that each step's real and padded
  token counts agree on the two sides (``same_batches``).

Tokens/s counts the real tokens of the pairs in a step (prompt + chosen + prompt + rejected, no
padding: the same number on both sides) over the wall time from the end of step 1 (warm-up) to
the end of the last step: everything a step costs, data and logging included (``step_only``:
the same over the summed begin-to-end times of those steps only). Model loading and
tokenization are not timed (``setup_s`` reports them). Peak RSS is each process's high-water
mark read at the end of the last step (``rss_mb``: loading included, nlpkit's final evaluation
and save excluded) and at exit (``rss_exit_mb``, ``os.wait4``). DPO's first-step loss must be
ln 2 on both sides (the adapter starts at zero: policy = reference).

    .venv/bin/python bench/bench_rlhf.py                         # --steps 20 --batch-size 4 --threads 2
    .venv/bin/python bench/bench_rlhf.py --steps 12 --threads 1  # the provisional figures
    .venv/bin/python bench/bench_rlhf.py --quick                 # a smoke run: 3 steps, 1 thread

The last line is ``bench_rlhf: rm_speed_ratio=... rm_rss_ratio=... dpo_... dpo_first_loss=...``;
bench/results/rlhf.json gets every figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shutil
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
MODEL = "smollm2-135m-instruct"
LN2 = math.log(2)
SEED = 1337  # nlpkit's TrainConfig default; TRL's seed too (its score head is its own draw)
VAL_FRACTION = 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- data


def pull_pairs(path: Path) -> None:
    cmd = [sys.executable, "-m", "nlpkit", "data", "show", "rotten-tomatoes", "--shape", "preference"]
    subprocess.run([*cmd, "--split", "train", "-o", str(path)], check=True, env=env(1))


def prepare(pairs_file: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The pairs both sides train on (those nlpkit keeps whole within --max-length), nlpkit's
    training split in nlpkit's batch order (TRL's dataset), and each step's expected tokens."""
    import numpy as np

    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate
    from nlpkit.text.tokenizer import load
    from nlpkit.tune.pairs import read_pairs

    folder = resolve_model(MODEL)
    tok, template = load(str(folder)), ChatTemplate.from_folder(folder)
    records = [json.loads(x) for x in pairs_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    records = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]
    if args.limit:
        records = records[: args.limit]
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    pairs, report = read_pairs([str(data)], tok, template, args.max_length)
    if report.truncated or len(pairs) != len(records):  # keep only what nlpkit takes whole, 1:1
        kept, pairs = [], []
        one = tmp / "one.jsonl"
        for r in records:
            one.write_text(json.dumps(r) + "\n", encoding="utf-8")
            try:
                p, rep = read_pairs([str(one)], tok, template, args.max_length)
            except Exception:  # DataError: nothing left of this pair
                continue
            if not rep.truncated:
                kept.append(r)
                pairs.extend(p)
        log(f"bench_rlhf: kept {len(kept)} of {len(records)} pairs (whole within --max-length)")
        records = kept
        data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cut = max(1, round(len(pairs) * VAL_FRACTION))
    n_train = len(pairs) - cut
    B = args.batch_size
    if args.steps * B > n_train:
        sys.exit(
            f"bench_rlhf: {args.steps} steps of {B} pairs need {args.steps * B} training pairs, got {n_train}"
        )
    order = np.random.default_rng([SEED, 0]).permutation(n_train)  # nlpkit's PairSet, epoch 0
    trl_records = [
        {
            "prompt": [{"role": "user", "content": records[i]["prompt"]}],
            "chosen": [{"role": "assistant", "content": records[i]["chosen"]}],
            "rejected": [{"role": "assistant", "content": records[i]["rejected"]}],
        }
        for i in order
    ]
    trl_data = tmp / "pairs-trl.jsonl"
    trl_data.write_text("".join(json.dumps(r) + "\n" for r in trl_records), encoding="utf-8")
    used = [pairs[int(i)] for i in order[: args.steps * B]]
    ids = tmp / "nlpkit-ids.json"  # what TRL's tokenization must give for the pairs used
    ids.write_text(json.dumps([[p.prompt.tolist(), p.chosen.tolist(), p.rejected.tolist()] for p in used]))
    real, padded = [], []
    for s in range(args.steps):
        batch = used[s * B : (s + 1) * B]
        real.append(sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in batch))
        T = max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in batch)
        padded.append(2 * B * T)
    return {
        "folder": str(folder),
        "data": data,
        "trl_data": trl_data,
        "ids": ids,
        "pairs": len(pairs),
        "train_pairs": n_train,
        "real_tokens": real,
        "padded_tokens": padded,
        "report": report.line(),
    }


# --------------------------------------------------------------------------- workers


def nlpkit_worker(args: argparse.Namespace) -> None:
    """``train_lora`` with the loop's step wrapped to stamp it; one JSON line on stdout."""
    import nlpkit.lm.train.loop as loop
    from nlpkit.lm.lora import LoraConfig
    from nlpkit.tune.lora import train_lora

    t_start = time.perf_counter()
    marks: list[dict[str, float]] = []
    step = loop._step

    def timed_step(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = step(*a, **k)
        marks.append({"begin": t0, "end": time.perf_counter(), "rss_mb": peak_mb()})
        return out

    loop._step = timed_step
    import torch

    overrides = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "threads": args.threads,
        "device": "cpu",
        "log_interval": 1,
        "eval_interval": 10**9,
        "eval_iters": 1,
        "checkpoint_interval": 0,
        "val_fraction": VAL_FRACTION,
        "seed": SEED,
    }
    lora = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=0.0, targets=("all-linear",))
    extra = {"beta": args.beta} if args.task == "dpo" else {}
    summary = train_lora(
        MODEL,
        [args.data],
        args.out,
        lora,
        overrides=overrides,
        max_length=args.max_length,
        task=args.task,
        **extra,
    )
    records = [json.loads(x) for x in (Path(args.out) / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "tokens_per_s" in r and "val_loss" not in r]
    tokens = [r["tokens"] for r in steps]
    first = {k: v for k, v in steps[0].items() if "/" in k or k in ("loss", "accuracy", "margin")}
    print(
        json.dumps(
            {
                "marks": marks,
                "t_start": t_start,
                "losses": [r["loss"] for r in steps],
                "padded_tokens": [b - a for a, b in zip([0, *tokens], tokens, strict=False)],
                "first_step": first,
                "trainable_params": summary.get("trainable_params"),
                "threads": torch.get_num_threads(),
                "rss_exit_self_mb": peak_mb(),
            }
        )
    )


def trl_worker(args: argparse.Namespace) -> None:
    """TRL's trainer on the same pairs in the same order; one JSON line on stdout."""
    t_start = time.perf_counter()
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset

    torch.set_num_threads(args.threads)
    folder = args.model_folder  # the folder nlpkit resolves MODEL to (the parent passes it)
    records = [json.loads(x) for x in Path(args.data).read_text(encoding="utf-8").splitlines()]
    dataset = Dataset.from_list(records)
    marks: list[dict[str, float]] = []
    seen: list[dict[str, Any]] = []  # per step: real and padded tokens, loss (exact, not the rounded log)

    class Stamp(transformers.TrainerCallback):
        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append({"begin": time.perf_counter()})

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks[-1] |= {"end": time.perf_counter(), "rss_mb": peak_mb()}

    logged: list[dict[str, Any]] = []  # what TRL logs each step (logging_steps=1)

    class Logs(transformers.TrainerCallback):
        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                logged.append(dict(logs))

    common = dict(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        disable_dropout=True,
        max_length=args.max_length,
        seed=SEED,
        train_sampling_strategy="sequential",
        model_init_kwargs={"dtype": "float32"},
        disable_tqdm=True,
    )
    lcfg = peft.LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="SEQ_CLS" if args.task == "rm" else "CAUSAL_LM",
    )

    def watch(cls: type) -> type:
        class Watched(cls):  # type: ignore[misc, valid-type]
            def compute_loss(self, model: Any, inputs: Any, *a: Any, **k: Any) -> Any:
                out = super().compute_loss(model, inputs, *a, **k)
                if model.training:
                    loss = out[0] if isinstance(out, tuple) else out
                    seen.append(
                        {
                            "real": int(inputs["attention_mask"].sum()),
                            "padded": int(inputs["input_ids"].numel()),
                            "loss": float(loss.detach()),
                        }
                    )
                return out

        return Watched

    if args.task == "rm":
        config: Any = trl.RewardConfig(**common)
        Trainer: Any = watch(trl.RewardTrainer)
    else:
        config = trl.DPOConfig(**common, beta=args.beta, precompute_ref_log_probs=False)
        Trainer = watch(trl.DPOTrainer)
    trainer = Trainer(
        model=folder,
        args=config,
        train_dataset=dataset,
        peft_config=lcfg,
        callbacks=[Stamp(), Logs()],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    rss_train = marks[-1]["rss_mb"]
    trainer.save_model(args.out)  # what a user does next (nlpkit writes its result at the end too)
    # after the steps (the peak above is already read): TRL's token ids against nlpkit's
    want = json.loads(Path(args.ids).read_text())
    ds = trainer.train_dataset
    mismatched = 0
    for i, (prompt, chosen, rejected) in enumerate(want):
        row = ds[i]
        if args.task == "rm":
            ok = row["chosen_ids"] == prompt + chosen and row["rejected_ids"] == prompt + rejected
        else:
            ok = (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == (prompt, chosen, rejected)
        mismatched += not ok
    first = {
        k: v for k, v in (logged[0] if logged else {}).items() if "/" in k or k in ("accuracy", "margin")
    }
    print(
        json.dumps(
            {
                "marks": marks,
                "t_start": t_start,
                "losses": [s["loss"] for s in seen],
                "logged_losses": [x["loss"] for x in logged],
                "real_tokens": [s["real"] for s in seen],
                "padded_tokens": [s["padded"] for s in seen],
                "first_step": first,
                "trainable_params": trainable,
                "threads": torch.get_num_threads(),
                "id_mismatches": mismatched,
                "pairs_checked": len(want),
                "rss_train_mb": rss_train,
                "rss_exit_self_mb": peak_mb(),
            }
        )
    )


# --------------------------------------------------------------------------- driver


def env(threads: int) -> dict[str, str]:
    t = str(threads)
    return {
        **os.environ,
        "OMP_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }


def run_timed(cmd: list[str], threads: int, timeout: float = 3600) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds, peak RSS (MB, ``os.wait4``: the child's own), stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env(threads))
        killer = threading.Timer(timeout, os.kill, (proc.pid, signal.SIGKILL))
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_rlhf: {' '.join(cmd[2:6])} ... failed:\n{stderr[-4000:]}")
    return {
        "wall_s": wall,
        "rss_exit_mb": usage.ru_maxrss / 1024,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "stdout": stdout,
        "stderr": stderr,
    }


def side(name: str, task: str, prep: dict[str, Any], tmp: Path, rep: int, a: argparse.Namespace) -> dict:
    out = tmp / f"{task}-{name}-{rep}"
    cmd = [sys.executable, __file__, "--worker", name, "--task", task, "--out", str(out)]
    cmd += ["--data", str(prep["data"] if name == "nlpkit" else prep["trl_data"]), "--ids", str(prep["ids"])]
    cmd += ["--steps", str(a.steps), "--batch-size", str(a.batch_size), "--threads", str(a.threads)]
    cmd += ["--max-length", str(a.max_length), "--lr", str(a.lr), "--beta", str(a.beta)]
    cmd += ["--rank", str(a.rank), "--alpha", str(a.alpha), "--model-folder", prep["folder"]]
    t0 = time.time()
    r = run_timed(cmd, a.threads)
    w = json.loads(r["stdout"].strip().splitlines()[-1])
    marks = w.pop("marks")
    ends, begins = [m["end"] for m in marks], [m["begin"] for m in marks]
    real = prep["real_tokens"]
    timed = slice(1, None) if len(marks) > 1 else slice(None)  # steps 2..N (step 1 is the warm-up)
    span = ends[-1] - ends[0] if len(marks) > 1 else ends[0] - begins[0]
    step_sum = sum(e - b for b, e in zip(begins[timed], ends[timed], strict=True))
    tokens = sum(real[timed])
    res = {
        "side": name,
        "task": task,
        "rep": rep,
        "started": datetime.datetime.fromtimestamp(t0).isoformat(timespec="seconds"),
        "tok_s": tokens / span,
        "tok_s_step_only": tokens / step_sum,
        "timed_steps": len(marks[timed]),
        "timed_s": span,
        "step_s": [e - b for b, e in zip(begins, ends, strict=True)],
        "setup_s": begins[0] - w.pop("t_start"),
        "rss_mb": marks[-1]["rss_mb"],
        "rss_exit_mb": r["rss_exit_mb"],
        "wall_s": r["wall_s"],
        "user_s": r["user_s"],
        "sys_s": r["sys_s"],
        "load_avg": os.getloadavg()[0],
        **w,
        "stderr_tail": r["stderr"][-1500:],
    }
    log(
        f"{task} {name} (rep {rep}): {res['tok_s']:.1f} tok/s ({res['tok_s_step_only']:.1f} step only), "
        f"peak RSS {res['rss_mb']:.0f} MB (exit {res['rss_exit_mb']:.0f}), setup {res['setup_s']:.1f} s, "
        f"cpu {res['user_s']:.0f} user + {res['sys_s']:.0f} sys s, "
        f"losses {[round(x, 4) for x in res['losses']]}"
    )
    return res


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per side (the first is warm-up)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pairs", help="preference JSONL (default: nlpkit data show rotten-tomatoes)")
    ap.add_argument("--tasks", default="rm,dpo")
    ap.add_argument("--reps", type=int, default=1, help="repetitions; the sides alternate A B, B A")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N pairs (0: all)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (data, trained models)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 steps, 1 thread, 400 pairs")
    ap.add_argument("--worker", choices=["nlpkit", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model-folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "nlpkit":
        return nlpkit_worker(args)
    if args.worker == "trl":
        return trl_worker(args)
    if args.quick:
        args.steps, args.threads, args.limit = 3, 1, args.limit or 400
    tasks = [t for t in args.tasks.split(",") if t]
    if not set(tasks) <= {"rm", "dpo"}:
        sys.exit("bench_rlhf: --tasks takes rm and/or dpo")
    import peft
    import torch
    import transformers
    import trl

    tmp = Path(tempfile.mkdtemp(prefix="bench_rlhf."))
    pairs_file = Path(args.pairs) if args.pairs else tmp / "rotten-tomatoes.jsonl"
    if not args.pairs:
        pull_pairs(pairs_file)
    prep = prepare(pairs_file, tmp, args)
    log(
        f"bench_rlhf: {prep['pairs']} pairs ({prep['report']}), {prep['train_pairs']} in nlpkit's training "
        f"split; {args.steps} steps x {args.batch_size} pairs, {sum(prep['real_tokens'])} real tokens "
        f"({sum(prep['padded_tokens'])} padded); {args.threads} thread(s); work folder {tmp}"
    )
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {"nlpkit": [], "trl": []} for t in tasks}
    turn = 0
    for rep in range(args.reps):
        for task in tasks:
            order = ["nlpkit", "trl"] if turn % 2 == 0 else ["trl", "nlpkit"]
            turn += 1
            for name in order:
                runs[task][name].append(side(name, task, prep, tmp, rep, args))
    summary: dict[str, Any] = {}
    rows = []
    ok = True
    for task in tasks:
        ours, ref = runs[task]["nlpkit"], runs[task]["trl"]
        same_ids = all(r["id_mismatches"] == 0 for r in ref)
        same_batches = all(r["padded_tokens"] == prep["padded_tokens"] for r in [*ours, *ref]) and all(
            r["real_tokens"] == prep["real_tokens"] for r in ref
        )
        s = {
            "speed_ratio": med(ours, "tok_s") / med(ref, "tok_s"),
            "speed_ratio_step_only": med(ours, "tok_s_step_only") / med(ref, "tok_s_step_only"),
            "rss_ratio": med(ours, "rss_mb") / med(ref, "rss_mb"),
            "rss_exit_ratio": med(ours, "rss_exit_mb") / med(ref, "rss_exit_mb"),
            "nlpkit_tok_s": med(ours, "tok_s"),
            "trl_tok_s": med(ref, "tok_s"),
            "first_loss_nlpkit": ours[0]["losses"][0],
            "first_loss_trl": ref[0]["losses"][0],
            "same_ids": same_ids,
            "same_batches": same_batches,
            "same_trainable_params": ours[0]["trainable_params"] == ref[0]["trainable_params"],
        }
        if task == "dpo":
            s["first_loss_diff_ln2"] = max(abs(r["losses"][0] - LN2) for r in [*ours, *ref])
            ok &= s["first_loss_diff_ln2"] < 1e-5
        ok &= same_ids and same_batches
        summary[task] = s
        for name, rs in (("nlpkit", ours), ("TRL", ref)):
            tok_ratio = med(rs, "tok_s") / med(ref, "tok_s")
            rss_ratio = med(rs, "rss_mb") / med(ref, "rss_mb")
            rows.append(
                f"| {name} | {task} | {med(rs, 'tok_s'):.1f} | {tok_ratio:.2f}× | "
                f"{med(rs, 'tok_s_step_only'):.1f} | {med(rs, 'rss_mb'):,.0f} | {rss_ratio:.2f}× | "
                f"{med(rs, 'rss_exit_mb'):,.0f} | {rs[0]['losses'][0]:.6f} |"
            )
    result = {
        "date": datetime.date.today().isoformat(),
        "model": MODEL,
        "settings": {
            k: getattr(args, k)
            for k in ("steps", "batch_size", "threads", "max_length", "lr", "beta", "rank", "alpha", "reps")
        }
        | {"targets": "all-linear", "dropout": 0.0, "seed": SEED, "dtype": "float32"},
        "pairs": {k: prep[k] for k in ("pairs", "train_pairs", "report", "real_tokens", "padded_tokens")}
        | {"source": str(args.pairs or "nlpkit data show rotten-tomatoes --shape preference --split train")},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "peft": peft.__version__,
        },
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "summary": summary,
        "runs": runs,
    }
    out = REPO / "bench" / "results" / "rlhf.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)  # the trained models (the RM's is a whole model folder)
    print(
        "| side | task | tokens/s | ratio | tokens/s (step only) | peak RSS MB (steps) | ratio "
        "| peak RSS MB (exit) | first-step loss |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"ln 2 = {LN2:.6f}")
    parts = []
    for task, s in summary.items():
        parts += [
            f"{task}_speed_ratio={s['speed_ratio']:.2f}",
            f"{task}_rss_ratio={s['rss_ratio']:.2f}",
            f"{task}_rss_exit_ratio={s['rss_exit_ratio']:.2f}",
        ]
        if task == "dpo":
            parts += [
                f"dpo_first_loss_nlpkit={s['first_loss_nlpkit']:.6f}",
                f"dpo_first_loss_trl={s['first_loss_trl']:.6f}",
            ]
        parts += [f"{task}_same_ids={s['same_ids']}", f"{task}_same_batches={s['same_batches']}"]
    print(f"bench_rlhf: {' '.join(parts)} steps={args.steps} threads={args.threads}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
