"""LoRA and QLoRA fine-tuning through the one training loop (``nlpkit lora train``), and
merging an adapter into a plain model folder (``nlpkit lora merge``).

    summary = train_lora("smollm2-135m-instruct", ["train.jsonl"], "adapter/",
                         LoraConfig(rank=8, alpha=16), overrides={"max_steps": 100})
    merge_adapter("smollm2-135m-instruct", "adapter/", "merged/")

The base model is frozen; only the LoRA matrices train (AdamW, no weight decay by default),
with the loop of ``nlpkit.lm.train``: warmup + cosine, gradient accumulation, SIGTERM
checkpoints (exit 143) and ``--resume``, torchrun, ``train.jsonl``. A checkpoint holds the
adapter and its optimizer state only; the adapter files are rewritten at every checkpoint.
``qlora=True`` holds the frozen base matrices as NF4 (``nlpkit.tune.nf4``).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np

from nlpkit.errors import DataError, UsageError
from nlpkit.io.deps import import_torch
from nlpkit.lm.lora import LoraConfig
from nlpkit.lm.train.config import RESUMABLE, Run, TrainConfig, _flag

TASKS = ("sft", "rm", "dpo")
RUN_FILE = "lora_run.json"  # what a resume needs besides the checkpoint: model, LoRA shape, data settings
# Fine-tuning defaults (PEFT's usual recipe): a small constant-ish learning rate, no decay of the adapters
DEFAULTS: dict[str, Any] = dict(
    lr=2e-4,
    warmup_steps=10,
    weight_decay=0.0,
    beta2=0.999,
    batch_size=4,
    eval_interval=100,
    eval_iters=10,
    checkpoint_interval=200,
    val_fraction=0.05,
)


def train_lora(
    model: str,
    paths: Sequence[str],
    out: str | os.PathLike[str],
    lora: LoraConfig | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    max_length: int = 512,
    epochs: float | None = None,
    eval_paths: Sequence[str] = (),
    qlora: bool = False,
    resume: bool = False,
    wait: bool = False,
    task: str = "sft",
    beta: float = 0.1,
) -> dict[str, Any]:
    """Train a LoRA adapter of ``model`` on ``paths`` into the folder ``out``; the summary record.

    ``task``: ``sft`` (next-token loss on responses), ``rm`` (a reward model: the adapter and a
    score head, written merged as LlamaForSequenceClassification, see ``tune.reward``) or
    ``dpo`` (DPO against the adapter-free model, ``tune.dpo``, with ``beta``). ``lora=None``
    with ``task="sft"`` fine-tunes every weight (no adapter) and writes a model folder."""
    import_torch()  # first: a clean exit 69 without PyTorch
    _return_freed_memory()
    from nlpkit.lm.train.checkpoint import load_checkpoint
    from nlpkit.lm.train.dist import training_session

    out_dir, overrides = Path(out), dict(overrides or {})
    ckpt = load_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        fixed = sorted(k for k in set(overrides) - RESUMABLE if ckpt["train_config"].get(k) != overrides[k])
        if fixed:
            raise UsageError(
                f"--{_flag(fixed[0])} cannot change when resuming", hint="the checkpoint's value is used"
            )
        saved = json.loads((out_dir / RUN_FILE).read_text(encoding="utf-8"))
        cfg = TrainConfig(**(ckpt["train_config"] | overrides))
        lora = LoraConfig(**saved["lora"]) if saved["lora"] else None
        max_length, qlora = saved["max_length"], saved["qlora"]
        task, beta = saved.get("task", "sft"), saved.get("beta", beta)
    else:
        if any(
            (out_dir / f).exists() for f in ("checkpoints", "adapter_model.safetensors", "model.safetensors")
        ):
            raise UsageError(
                "the output folder already holds a model or an adapter",
                where=str(out_dir),
                hint="pass --resume to continue its training, or choose another -o",
            )
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}", hint=f"use one of {', '.join(TASKS)}")
        if lora is None and (task != "sft" or qlora):
            raise UsageError(f"{task if task != 'sft' else 'QLoRA'} trains a LoRA adapter: give its shape")
        if task == "dpo" and not (beta > 0 and math.isfinite(beta)):
            raise UsageError("--beta must be a positive number")
        if lora is not None:
            lora.modules()  # an unknown target module fails before any loading
        cfg = TrainConfig(**(DEFAULTS | {"max_steps": None if epochs else 1000} | overrides))
        saved = None
    with training_session(cfg.device, cfg.threads, out_dir, wait) as d:
        run, fingerprint, base_bytes = _build_run(
            model, paths, eval_paths, lora, cfg, max_length, qlora, d, saved, epochs, task, beta
        )
        if ckpt is not None:
            _restore(run, ckpt, out_dir, d)
        elif d.rank == 0:
            record = {
                "model": model,
                "lora": asdict(lora) if lora else None,
                "max_length": max_length,
                "qlora": qlora,
                "base": fingerprint,
                "task": task,
                "beta": beta,
            }
            (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        from nlpkit.lm.train.loop import fit

        summary = fit(run, out_dir, d)
    trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    summary |= {"adapter" if task != "rm" and lora else "model": str(out_dir), "task": task,
                "trainable_params": trained, "qlora": qlora}  # fmt: skip
    if base_bytes:  # QLoRA: the frozen matrices' bytes, NF4 against float32
        summary["base_bytes"] = base_bytes
    return summary


def _return_freed_memory() -> None:
    """glibc raises its mmap threshold (up to 32 MB) whenever a large block is freed, so from the
    second step on even large tensors come from the heap and stay there (peak RSS grew ~500 MB in
    a few steps of SmolLM2, measured). A fixed threshold stops that. 8 MB, not lower: at 1 MB
    every activation (1-4 MB at batch 8 x 80 tokens) was a fresh mmap whose pages the kernel
    faulted in again each step, and the reward-model step ran at 0.61x TRL's speed (8 MB: 1.01x,
    peak RSS 0.86x TRL's; bench/bench_rlhf.py, measured side by side)."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").mallopt(-3, 8 << 20)  # M_MMAP_THRESHOLD


def _build_run(
    model_spec: str,
    paths: Sequence[str],
    eval_paths: Sequence[str],
    lora: LoraConfig | None,
    cfg: TrainConfig,
    max_length: int,
    qlora: bool,
    d: Any,
    saved: dict[str, Any] | None,
    epochs: float | None,
    task: str = "sft",
    beta: float = 0.1,
) -> tuple[Run, str, dict[str, float] | None]:
    import torch

    from nlpkit.io.talk import say
    from nlpkit.lm.lora import apply_lora, base_fingerprint
    from nlpkit.lm.model import load_model
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate
    from nlpkit.text.tokenizer import load

    folder = resolve_model(model_spec)
    net, model_cfg = load_model(folder, d.device)
    if model_cfg.arch != "llama":
        raise UsageError(f"fine-tuning takes decoder (llama) models; {model_spec} is a {model_cfg.arch}")
    fingerprint = base_fingerprint(net)
    if saved is not None and saved.get("base") != fingerprint:
        raise UsageError(
            "the model differs from the one this run started training on",
            hint=f"resume with {saved.get('model')}",
        )
    tok, template = load(str(folder)), ChatTemplate.from_folder(folder)
    max_length = min(max_length, model_cfg.block_size)
    train, val, line, data_digest = _read(task, paths, eval_paths, tok, template, max_length, cfg)
    if d.rank == 0:
        say(f"{task}: {line}")
    per_step = cfg.batch_size * cfg.grad_accum * d.world
    if len(train) < per_step:
        raise DataError(
            f"the training split has {len(train)} examples, fewer than one batch of {per_step}",
            hint="lower --batch-size or --grad-accum, or give more examples",
        )
    if epochs is not None:
        cfg.max_steps = max(1, math.ceil(epochs * len(train) / per_step))
    torch.manual_seed(cfg.seed)  # the same adapter initialisation in every process
    module: Any = net
    if task == "rm":
        from nlpkit.tune.reward import RewardModel, RewardObjective

        net = RewardModel.from_lm(cast(Any, net), cfg.seed)
        module = RewardObjective(net)
    names = apply_lora(net, lora) if lora is not None else []
    if task == "rm":
        cast(Any, net).score.weight.requires_grad_(True)  # PEFT's modules_to_save: the head trains whole
    if task == "dpo":
        from nlpkit.tune.dpo import DPOObjective

        module = DPOObjective(net, beta)
    base_bytes = None
    if qlora:
        from nlpkit.tune.nf4 import quantize_bases

        base_bytes = quantize_bases(net)
    module.train()
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    torch.manual_seed(cfg.seed + d.rank)
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2] if lora is None else params  # full: no decay on norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if len(decay) < len(params):
        groups.append({"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    if d.rank == 0:
        n = sum(p.numel() for p in params)
        if lora is None:
            say(f"{task}: full fine-tuning, {n:,} trainable parameters")
        else:
            say(
                f"{task}: LoRA r={lora.rank} alpha={lora.alpha:g} on {len(names)} layers "
                f"({', '.join(lora.modules())}), {n:,} trainable parameters{', NF4 base' if qlora else ''}"
            )
            lora.base = lora.base or model_spec
    write = _writer(task, lora, net, folder, model_spec, model_cfg, fingerprint)
    pad = model_cfg.pad_id if model_cfg.pad_id is not None else (model_cfg.eos_id or 0)
    Set = _dataset(task)
    run = Run(
        module,
        model_cfg,
        cfg,
        optimizer,
        cast(Any, Set(train, pad, cfg.seed)),  # the loop needs len, batch and eval_batches only
        cast(Any, Set(val, pad, train=False)),
        _state(),
        data_digest,
        d.device,
        write=write,
        evaluate=_pair_evaluation() if task != "sft" else None,
    )
    return run, fingerprint, base_bytes


def _read(
    task: str,
    paths: Sequence[str],
    eval_paths: Sequence[str],
    tok: Any,
    template: Any,
    max_length: int,
    cfg: TrainConfig,
) -> tuple[list[Any], list[Any], str, str]:
    """Training and validation items of the task, the report line and the data digest."""
    if task == "sft":
        from nlpkit.tune.sft import digest, read_examples

        def read(p: Sequence[str]) -> tuple[list[Any], str]:
            items, report = read_examples(p, tok, template, max_length)
            return items, report.line()
    else:
        from nlpkit.tune.pairs import digest, read_pairs  # type: ignore[assignment]

        def read(p: Sequence[str]) -> tuple[list[Any], str]:
            pairs, report = read_pairs(p, tok, template, max_length)
            return pairs, report.line()

    items, line = read(paths)
    if eval_paths:
        return items, read(eval_paths)[0], line, digest(items)
    cut = max(1, round(len(items) * cfg.val_fraction))
    if len(items) - cut < 1:
        raise DataError(
            f"only {len(items)} examples: too few to hold out a validation split",
            hint="give more examples or --eval-data FILE",
        )
    return items[:-cut], items[-cut:], line, digest(items)


def _dataset(task: str) -> Any:
    if task == "sft":
        from nlpkit.tune.sft import SFTSet

        return SFTSet
    from nlpkit.tune.pairs import PairSet

    return PairSet


def _pair_evaluation() -> Any:
    from nlpkit.tune.pairs import evaluate_pairs

    return evaluate_pairs


def _writer(
    task: str, lora: LoraConfig | None, net: Any, folder: Path, spec: str, model_cfg: Any, fingerprint: str
) -> Any:
    """How a checkpoint writes the run's result into its folder."""
    from nlpkit.lm.lora import save_adapter
    from nlpkit.store.gguf_folder import copy_tokenizer_files

    def copy_tokenizer(out: Path) -> None:  # the folder works as a chat model's tokenizer source too
        copy_tokenizer_files(folder, out, replace=False)

    def adapter(out: Path, run: Run) -> None:
        assert lora is not None
        meta = {"nlpkit.step": str(run.state.step), "nlpkit.base_model": spec, "nlpkit.task": task}
        save_adapter(net, lora, out, meta, fingerprint=fingerprint)
        copy_tokenizer(out)

    def full(out: Path, run: Run) -> None:
        from nlpkit.lm.model import save_model

        save_model(net, model_cfg, out, {"nlpkit.step": str(run.state.step), "nlpkit.base_model": spec})
        copy_tokenizer(out)

    def reward(out: Path, run: Run) -> None:
        from nlpkit.tune.reward import save_reward_model

        meta = {"nlpkit.step": str(run.state.step), "nlpkit.base_model": spec}
        save_reward_model(net, out, folder, meta)

    if task == "rm":
        return reward
    return adapter if lora is not None else full


def _state() -> Any:
    from nlpkit.lm.train.checkpoint import RunState

    return RunState()


def _restore(run: Run, ckpt: dict[str, Any], out: Path, d: Any) -> None:
    from nlpkit.lm.train.checkpoint import RunState, set_rng_state, truncate_log

    if ckpt["data_sha256"] != run.data_sha256:
        raise DataError(
            "the training data differ from the checkpoint's", hint="resume with the same input files"
        )
    missing, unexpected = run.model.load_state_dict(ckpt["model"], strict=False)
    trained = {n for n, p in run.model.named_parameters() if p.requires_grad}
    if unexpected or trained & set(missing):
        raise DataError("the checkpoint does not hold this adapter's weights", where=str(out / "checkpoints"))
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.state = RunState(**ckpt["state"])
    set_rng_state(ckpt["rng"][d.rank] if d.rank < len(ckpt["rng"]) else ckpt["rng"][0])
    if d.rank == 0:
        truncate_log(out / "train.jsonl", run.state.step)


def merge_adapter(model: str, adapter: str, out: str | os.PathLike[str]) -> dict[str, Any]:
    """``model`` with ``adapter`` folded into its weights, written as a plain model folder."""
    import_torch()
    from nlpkit.io.files import fsync_dir
    from nlpkit.lm.lora import load_adapter
    from nlpkit.lm.model import load_model, save_model
    from nlpkit.store.gguf_folder import copy_tokenizer_files
    from nlpkit.store.resolve import resolve_model

    folder, out_dir = resolve_model(model), Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError("the output folder is not empty", where=str(out_dir), hint="choose another -o")
    net, cfg = load_model(folder, "cpu")
    lora = load_adapter(net, adapter, merge=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    save_model(net, cfg, tmp, {"nlpkit.base_model": model, "nlpkit.adapter": str(adapter)})
    copy_tokenizer_files(folder, tmp)
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    return {
        "model": str(out_dir),
        "base": model,
        "adapter": str(adapter),
        "rank": lora.rank,
        "alpha": lora.alpha,
    }


def merge_into(model: str, folder: str | os.PathLike[str]) -> None:
    """Write ``model`` with the adapter of ``folder`` folded in as the model of ``folder``
    itself (config.json, model.safetensors): ``rlhf sft --lora``'s result is a plain model."""
    from nlpkit.lm.lora import load_adapter
    from nlpkit.lm.model import load_model, save_model
    from nlpkit.store.resolve import resolve_model

    net, cfg = load_model(resolve_model(model), "cpu")
    load_adapter(net, Path(folder), merge=True)
    save_model(net, cfg, Path(folder), {"nlpkit.base_model": model, "nlpkit.adapter": str(folder)})
