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
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np

from nlpkit.errors import DataError, UsageError
from nlpkit.io.deps import import_torch
from nlpkit.lm.lora import LoraConfig
from nlpkit.lm.train.config import RESUMABLE, Run, TrainConfig, _flag

RUN_FILE = "lora_run.json"  # what a resume needs besides the checkpoint: model, LoRA shape, data settings
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
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
) -> dict[str, Any]:
    """Train a LoRA adapter of ``model`` on ``paths`` into the folder ``out``; the summary record."""
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
        lora, max_length, qlora = LoraConfig(**saved["lora"]), saved["max_length"], saved["qlora"]
    else:
        if (out_dir / "checkpoints").exists() or (out_dir / "adapter_model.safetensors").exists():
            raise UsageError(
                "the output folder already holds an adapter",
                where=str(out_dir),
                hint="pass --resume to continue its training, or choose another -o",
            )
        lora = lora or LoraConfig()
        lora.modules()  # an unknown target module fails before any loading
        cfg = TrainConfig(**(DEFAULTS | {"max_steps": None if epochs else 1000} | overrides))
        saved = None
    with training_session(cfg.device, cfg.threads, out_dir, wait) as d:
        run, fingerprint, base_bytes = _build_run(
            model, paths, eval_paths, lora, cfg, max_length, qlora, d, saved, epochs
        )
        if ckpt is not None:
            _restore(run, ckpt, out_dir, d)
        elif d.rank == 0:
            record = {
                "model": model,
                "lora": asdict(lora),
                "max_length": max_length,
                "qlora": qlora,
                "base": fingerprint,
            }
            (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        from nlpkit.lm.train.loop import fit

        summary = fit(run, out_dir, d)
    from nlpkit.lm.lora import trainable_params

    trained = sum(p.numel() for p in trainable_params(run.model).values())
    summary |= {"adapter": str(out_dir), "trainable_params": trained, "qlora": qlora}
    if base_bytes:  # QLoRA: the frozen matrices' bytes, NF4 against float32
        summary["base_bytes"] = base_bytes
    return summary


def _return_freed_memory() -> None:
    """glibc raises its mmap threshold whenever a large block is freed, so from the second step
    on the activations come from the heap and stay there (peak RSS grew ~500 MB in a few steps
    of SmolLM2, measured); a fixed 1 MB threshold keeps large tensors mmapped, returned on free."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def _build_run(
    model_spec: str,
    paths: Sequence[str],
    eval_paths: Sequence[str],
    lora: LoraConfig,
    cfg: TrainConfig,
    max_length: int,
    qlora: bool,
    d: Any,
    saved: dict[str, Any] | None,
    epochs: float | None,
) -> tuple[Run, str, dict[str, float] | None]:
    import torch

    from nlpkit.io.talk import say
    from nlpkit.lm.lora import apply_lora, base_fingerprint, save_adapter
    from nlpkit.lm.model import load_model
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate
    from nlpkit.text.tokenizer import load
    from nlpkit.tune.sft import SFTSet, digest, read_examples

    folder = resolve_model(model_spec)
    net, model_cfg = load_model(folder, d.device)
    if model_cfg.arch != "llama":
        raise UsageError(f"LoRA fine-tunes decoder (llama) models; {model_spec} is a {model_cfg.arch}")
    fingerprint = base_fingerprint(net)
    if saved is not None and saved.get("base") != fingerprint:
        raise UsageError(
            "the model differs from the one this adapter started training on",
            hint=f"resume with {saved.get('model')}",
        )
    tok, template = load(str(folder)), ChatTemplate.from_folder(folder)
    max_length = min(max_length, model_cfg.block_size)
    examples, report = read_examples(paths, tok, template, max_length)
    if eval_paths:
        val, _ = read_examples(eval_paths, tok, template, max_length)
        train = examples
    else:
        cut = max(1, round(len(examples) * cfg.val_fraction))
        if len(examples) - cut < 1:
            raise DataError(
                f"only {len(examples)} examples: too few to hold out a validation split",
                hint="give more examples or --eval-data FILE",
            )
        train, val = examples[:-cut], examples[-cut:]
    if d.rank == 0:
        say(f"lora: {report.line()}")
    per_step = cfg.batch_size * cfg.grad_accum * d.world
    if len(train) < per_step:
        raise DataError(
            f"the training split has {len(train)} examples, fewer than one batch of {per_step}",
            hint="lower --batch-size or --grad-accum, or give more examples",
        )
    if epochs is not None:
        cfg.max_steps = max(1, math.ceil(epochs * len(train) / per_step))
    torch.manual_seed(cfg.seed)  # the same adapter initialisation in every process
    names = apply_lora(net, lora)
    base_bytes = None
    if qlora:
        from nlpkit.tune.nf4 import quantize_bases

        base_bytes = quantize_bases(net)
    net.train()
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    torch.manual_seed(cfg.seed + d.rank)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": params, "weight_decay": cfg.weight_decay}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=True,
    )
    if d.rank == 0:
        say(
            f"lora: r={lora.rank} alpha={lora.alpha:g} on {len(names)} layers ({', '.join(lora.modules())}), "
            f"{sum(p.numel() for p in params):,} trainable parameters{', NF4 base' if qlora else ''}"
        )
    lora.base = lora.base or model_spec

    def write(out: Path, run: Run) -> None:
        meta = {"nlpkit.step": str(run.state.step), "nlpkit.base_model": model_spec}
        save_adapter(run.model, lora, out, meta, fingerprint=fingerprint)
        for name in TOKENIZER_FILES:  # the adapter folder works as a chat model's tokenizer source too
            if (folder / name).is_file() and not (out / name).is_file():
                shutil.copyfile(folder / name, out / name)

    pad = model_cfg.pad_id if model_cfg.pad_id is not None else (model_cfg.eos_id or 0)
    run = Run(
        net,
        model_cfg,
        cfg,
        optimizer,
        cast(Any, SFTSet(train, pad, cfg.seed)),  # the loop needs len, batch and eval_batches only
        cast(Any, SFTSet(val, pad, train=False)),
        _state(),
        digest(examples),
        d.device,
        write=write,
    )
    return run, fingerprint, base_bytes


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
    from nlpkit.store.resolve import resolve_model

    folder, out_dir = resolve_model(model), Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError("the output folder is not empty", where=str(out_dir), hint="choose another -o")
    net, cfg = load_model(folder, "cpu")
    lora = load_adapter(net, adapter, merge=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    save_model(net, cfg, tmp, {"nlpkit.base_model": model, "nlpkit.adapter": str(adapter)})
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, tmp / name)
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
