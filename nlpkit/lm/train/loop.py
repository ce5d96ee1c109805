"""The one training loop behind every language-model command (train-lstm, train-transformer).

    summary = train(["plays/"], "model/", arch="llama", preset="small", overrides={"max_time": 120})

Reads top to bottom like nanoGPT's train.py: data -> model -> AdamW -> loop of (warmup +
cosine learning rate, gradient accumulation, clipping, bf16 autocast on CUDA) -> evaluation
every ``eval_interval`` steps -> checkpoints. What it promises:

* data: files, folders or stdin, plain lines or JSONL ("text"; "input"/"output" pairs for the
  encoder-decoder), tokenized with a tokenizer.json / model folder / named tokenizer, or one
  token per character; records are joined with "\\n"; the last ``val_fraction`` is held out;
* a model folder any nlpkit command (and transformers, for llama) can use: config.json,
  tokenizer.json, model.safetensors, train.jsonl (metrics), checkpoints/;
* SIGTERM (or a first Ctrl-C) checkpoints at the next step and raises ``Stopped`` (exit 143;
  ``Interrupted``, 130, for Ctrl-C); ``resume=True`` continues from checkpoints/latest bitwise
  identically on the CPU (weights, AdamW, schedule, RNG states and data position are saved);
* under ``torchrun`` it trains with DDP (gloo on CPU, nccl on CUDA): each process takes its
  slice of every global batch, so N processes equal one process on the combined batch; only
  rank 0 writes.

The data are read and batched by corpus.py; processes, stop signals and checkpoints are in
checkpoint.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError, Interrupted, Stopped, UsageError
from nlpkit.io.deps import import_torch
from nlpkit.io.signals import StopFlag
from nlpkit.lm.train.checkpoint import (
    RunState,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    truncate_log,
)
from nlpkit.lm.train.config import RESUMABLE, Run, TrainConfig, _flag, resolve_configs
from nlpkit.lm.train.data import (
    char_tokenizer,
    encode_pairs,
    encode_stream,
    load_data,
    read_texts,
    special_ids,
    split_data,
)
from nlpkit.lm.train.dist import Dist, autocast, training_session
from nlpkit.lm.train.evaluate import evaluate

if TYPE_CHECKING:
    from nlpkit.lm.config import ModelConfig


def train(
    paths: Sequence[str],
    out: str | os.PathLike[str],
    *,
    arch: str = "llama",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    resume: bool = False,
    field: str = "text",
    fmt: str = "auto",
    wait: bool = False,
) -> dict[str, Any]:
    """Train a language model into the folder ``out``; return the run's summary record.

    ``overrides``: the settings given explicitly (flag names with underscores); on ``resume``
    only the RESUMABLE ones may be given, the others come from the checkpoint.
    """
    import_torch()  # first: a clean exit 69 without PyTorch

    out_dir, overrides = Path(out), dict(overrides or {})
    ckpt = load_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        saved = ckpt["model_config"] | ckpt["train_config"]
        fixed = sorted(k for k in set(overrides) - RESUMABLE if saved.get(k, object()) != overrides[k])
        overrides = {k: v for k, v in overrides.items() if k in RESUMABLE}  # the same value: nothing changes
        if fixed:
            raise UsageError(
                f"--{_flag(fixed[0])} cannot change when resuming", hint="the checkpoint's value is used"
            )
        arch, cfg = ckpt["model_config"]["arch"], TrainConfig(**(ckpt["train_config"] | overrides))
    else:
        model_fields, cfg = resolve_configs(arch, preset, overrides)
        _check_new_folder(out_dir)
    with training_session(cfg.device, cfg.threads, out_dir, wait) as d:
        if ckpt is None:
            run = _new_run(paths, out_dir, model_fields, cfg, tokenizer, field, fmt, d)
        else:
            run = _resumed_run(paths, out_dir, ckpt, cfg, field, fmt, d)
        return fit(run, out_dir, d)


def _check_new_folder(out: Path) -> None:
    if (out / "checkpoints").exists() or (out / "model.safetensors").exists():
        raise UsageError("the output folder already holds a model", where=str(out),
                         hint="pass --resume to continue its training, or choose another -o")  # fmt: skip


def _digest(data: Any) -> str:
    if isinstance(data, np.ndarray):
        return hashlib.sha256(data.tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _new_run(paths: Sequence[str], out: Path, model_fields: dict[str, Any], cfg: TrainConfig,
             spec: str | None, field: str, fmt: str, d: Dist) -> Run:  # fmt: skip
    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.lm.config import ModelConfig

    pairs = model_fields["arch"] == "seq2seq"
    texts = read_texts(paths, field=field, fmt=fmt, pairs=pairs)
    if spec:
        from nlpkit.text.tokenizer import load

        tok = load(spec)
    else:
        tok = char_tokenizer([t for pair in texts for t in pair] if pairs else texts)
    ids = special_ids(tok, add=pairs)
    model_cfg = ModelConfig(**model_fields, vocab_size=tok.get_vocab_size(with_added_tokens=True),
                            bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])  # fmt: skip
    data = encode_pairs(tok, texts, model_cfg.block_size) if pairs else encode_stream(tok, texts)
    if d.rank == 0:
        write_bytes_atomic(out / "tokenizer.json", tok.to_str(pretty=True).encode() + b"\n")
    return _make_run(model_cfg, cfg, data, d)


def _resumed_run(
    paths: Sequence[str], out: Path, ckpt: dict[str, Any], cfg: TrainConfig, field: str, fmt: str, d: Dist
) -> Run:
    from nlpkit.lm.config import ModelConfig
    from nlpkit.text.tokenizer import load

    model_cfg = ModelConfig(**ckpt["model_config"])
    data = load_data(paths, load(str(out / "tokenizer.json")), model_cfg, field, fmt)
    if _digest(data) != ckpt["data_sha256"]:
        raise DataError("the training data differ from the checkpoint's", where=", ".join(paths),
                        hint="resume with the same input files")  # fmt: skip
    run = _make_run(model_cfg, cfg, data, d)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.state = RunState(**ckpt["state"])
    set_rng_state(ckpt["rng"][d.rank] if d.rank < len(ckpt["rng"]) else ckpt["rng"][0])
    if d.rank == 0:
        truncate_log(out / "train.jsonl", run.state.step)
    return run


def _make_run(model_cfg: ModelConfig, cfg: TrainConfig, data: Any, d: Dist) -> Run:
    import torch

    from nlpkit.lm.model import build_model

    train_data, val_data = split_data(data, model_cfg, cfg)
    if len(train_data) < cfg.batch_size * cfg.grad_accum * d.world:
        raise DataError(f"the training split has {len(train_data)} sequences, fewer than one batch",
                        hint="lower --batch-size or --block-size, or give more text")  # fmt: skip
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = build_model(model_cfg).to(d.device)
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    torch.manual_seed(cfg.seed + d.rank)  # dropout differs between processes
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    # fused AdamW: one kernel for all parameters, on the CPU as on CUDA (torch >= 2.4)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    return Run(model, model_cfg, cfg, optimizer, train_data, val_data, RunState(), _digest(data), d.device)


def fit(run: Run, out: Path, d: Dist) -> dict[str, Any]:
    """The loop: step, log, evaluate, checkpoint; stop at max_steps / max_time or on a signal."""
    import torch

    from nlpkit.io.talk import Progress

    cfg, state = run.cfg, run.state
    model = torch.nn.parallel.DistributedDataParallel(run.model) if d.world > 1 else run.model
    log = open(out / "train.jsonl", "a", encoding="utf-8") if d.rank == 0 else None  # noqa: SIM115
    t0, base = time.perf_counter(), state.elapsed
    losses: list[Any] = []  # this log interval's losses, as tensors (no device sync per step)
    extras: list[dict[str, Any]] = []  # and the objective's other numbers (reward models, DPO)
    train_loss = val_loss = None
    if (cfg.max_steps and state.step >= cfg.max_steps) or (cfg.max_time and state.elapsed >= cfg.max_time):
        from nlpkit.io.talk import say

        say(f"{out}: the run already finished at step {state.step}; nothing to do (raise --max-steps)")
        if log is not None:
            log.close()
        return _summary(run, None, None) | {
            "model": str(out),
            "arch": run.model_cfg.arch,
            "already_finished": True,
        }
    with StopFlag() as stop, Progress("training", total=cfg.max_steps, unit=" steps") as progress:
        progress.advance(state.step)  # a resumed run starts where it stopped
        while True:
            signum, state.elapsed = d.all_max([stop.signum, base + time.perf_counter() - t0])
            if signum:
                save_checkpoint(out, run, d)
                how, error = ("SIGTERM", Stopped) if signum == signal.SIGTERM else ("Ctrl-C", Interrupted)
                raise error(f"stopped by {how} at step {state.step}; checkpoint saved", where=str(out),
                            hint="continue with --resume")  # fmt: skip
            if (cfg.max_steps and state.step >= cfg.max_steps) or (
                cfg.max_time and state.elapsed >= cfg.max_time
            ):
                break
            loss, numbers = _step(model, run, d)
            losses.append(loss)
            if numbers:
                extras.append(numbers)
            state.step += 1
            progress.advance(1)
            if state.step % cfg.log_interval == 0:
                train_loss = _log_train(run, log, d, losses, extras)
                progress.advance(0, loss=f"{train_loss:.3f}")
            if state.step % cfg.eval_interval == 0:
                val_loss = _evaluate_logged(run, log, limit=cfg.eval_iters)
            if cfg.checkpoint_interval and state.step % cfg.checkpoint_interval == 0:
                save_checkpoint(out, run, d)
    if losses:
        train_loss = _log_train(run, log, d, losses, extras)
    if state.step % cfg.eval_interval or val_loss is None:
        val_loss = _evaluate_logged(run, log, limit=cfg.eval_iters)
    if not cfg.checkpoint_interval or state.step % cfg.checkpoint_interval:
        save_checkpoint(out, run, d)
    if log is not None:
        log.close()
    return _summary(run, train_loss, val_loss) | {
        "model": str(out), "arch": run.model_cfg.arch, "params": _count(run.model), "processes": d.world,
    }  # fmt: skip


def _log_train(run: Run, log: Any, d: Dist, losses: list[Any], extras: list[dict[str, Any]]) -> float:
    """Append the mean training loss (and the objective's other numbers) since the last record,
    over all processes; clear ``losses`` and ``extras``."""
    mean = d.all_mean(float(sum(losses).item()) / len(losses))
    numbers = (
        {k: d.all_mean(float(sum(e[k] for e in extras).item()) / len(extras)) for k in extras[0]}
        if extras
        else {}
    )
    extras.clear()
    if not math.isfinite(mean):  # the weights are lost: stop before writing anything more
        raise DataError(
            f"the training loss became {mean} by step {run.state.step}; nothing more is written and "
            "the last checkpoint (if any) is kept",
            hint="lower --lr or raise --warmup-steps, then --resume or start again",
        )
    _write(log, _summary(run, mean, None) | numbers | {"lr": run.lr})
    losses.clear()
    return mean


def _step(model: Any, run: Run, d: Dist) -> tuple[Any, dict[str, Any]]:
    """One optimizer step over grad_accum micro-batches; this process's mean loss (a tensor) and
    the means of the numbers a model returns in place of logits (a dict: reward models, DPO)."""
    import torch

    cfg, state = run.cfg, run.state
    B, per_step = cfg.batch_size, cfg.batch_size * d.world * cfg.grad_accum
    if state.cursor + per_step > len(run.train_data):
        state.epoch, state.cursor = state.epoch + 1, 0
    lr = cfg.lr_at(state.step, state.elapsed)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.lr = lr
    start, total = time.perf_counter(), 0.0
    numbers: dict[str, Any] = {}
    for micro in range(cfg.grad_accum):
        ids = state.cursor + (micro * d.world + d.rank) * B + np.arange(B)
        batch = [t.to(run.device, non_blocking=True) for t in run.train_data.batch(state.epoch, ids)]
        last = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if last or d.world == 1 else model.no_sync(), autocast(run.device):
            out, loss = model(*batch)
        (loss / cfg.grad_accum).backward()
        total = total + loss.detach()
        if isinstance(out, dict):
            numbers = {k: numbers.get(k, 0.0) + v.detach() / cfg.grad_accum for k, v in out.items()}
        state.tokens += batch[0].numel() * d.world
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.cursor += per_step
    state.train_time += time.perf_counter() - start
    return total / cfg.grad_accum, numbers


def _summary(run: Run, loss: float | None, val_loss: float | None) -> dict[str, Any]:
    s = run.state
    speed = round(s.tokens / s.train_time, 1) if s.train_time else None
    record = {
        "step": s.step,
        "loss": loss,
        "tokens": s.tokens,
        "elapsed_s": round(s.elapsed, 3),
        "tokens_per_s": speed,
    }
    if val_loss is not None and run.evaluate is not None:  # not a language model: no perplexity
        record |= {"val_loss": val_loss} | run.last_eval
    elif val_loss is not None:
        record |= {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
    return record


def _write(log: Any, record: dict[str, Any]) -> None:
    if log is not None:
        log.write(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")
        log.flush()


def _evaluate_logged(run: Run, log: Any, limit: int) -> float:
    if run.evaluate is not None:  # another objective than next-token prediction: its own numbers
        numbers = run.evaluate(run, limit)
        run.last_eval = numbers
        _write(log, {"step": run.state.step, **numbers, "elapsed_s": round(run.state.elapsed, 3)})
        return float(numbers["val_loss"])
    loss, _ = evaluate(run.model, run.val_data, run.cfg.batch_size, run.device, limit=limit)
    _write(log, {"step": run.state.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                 "elapsed_s": round(run.state.elapsed, 3)})  # fmt: skip
    return loss


def _count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
