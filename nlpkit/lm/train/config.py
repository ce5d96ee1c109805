"""Training configuration, presets, and the state of one run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpkit.errors import UsageError
from nlpkit.lm.train.checkpoint import (
    RunState,
)
from nlpkit.lm.train.data import (
    Dataset,
)

if TYPE_CHECKING:
    from nlpkit.lm.config import ModelConfig


# Presets: model and training fields together; explicit flags override them. "small" is the
# CPU benchmark (a few minutes on 2 cores), "medium" nanoGPT's shakespeare-char GPT, "large"
# GPT-2 small's shape (a GPU).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "transformer": {
        "tiny": dict(n_layer=2, n_embd=32, n_head=2, block_size=32, batch_size=8, lr=3e-3, warmup_steps=10,
                     max_steps=200, eval_interval=50, eval_iters=4, beta2=0.99),
        "small": dict(n_layer=4, n_embd=128, n_head=4, block_size=128, batch_size=16, lr=2e-3,
                      warmup_steps=100, max_steps=5000, beta2=0.99),
        "medium": dict(n_layer=6, n_embd=384, n_head=6, block_size=256, batch_size=64, dropout=0.2,
                       lr=1e-3, warmup_steps=100, max_steps=5000, beta2=0.99),
        "large": dict(n_layer=12, n_embd=768, n_head=12, block_size=1024, batch_size=16, grad_accum=4,
                      lr=6e-4, warmup_steps=500, max_steps=20000, beta2=0.95),
    },
    "lstm": {
        "tiny": dict(n_layer=1, n_embd=32, block_size=32, batch_size=8, lr=3e-3, warmup_steps=10,
                     max_steps=200, eval_interval=50, eval_iters=4, beta2=0.99),
        "small": dict(n_layer=2, n_embd=256, block_size=128, batch_size=16, lr=2e-3, warmup_steps=100,
                      max_steps=5000, beta2=0.99),
        "medium": dict(n_layer=3, n_embd=512, block_size=256, batch_size=32, dropout=0.2, lr=1e-3,
                       warmup_steps=100, max_steps=10000, beta2=0.99),
    },
}  # fmt: skip


@dataclass
class TrainConfig:
    """How to train; the flags mirror the names (``--max-time`` <-> ``max_time``)."""

    batch_size: int = 16  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float | None = None  # the end of the cosine; None: lr / 10
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # cosine length in steps; None: max_steps
    weight_decay: float = 0.1  # matrices only; norms, biases and gains are not decayed
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: off
    max_steps: int | None = None
    max_time: float | None = None  # seconds of training; with no step limit the cosine follows the clock
    eval_interval: int = 250
    eval_iters: int = 20  # validation batches per evaluation
    log_interval: int = 10
    checkpoint_interval: int = 500  # steps between checkpoints (also at the end and on a stop)
    val_fraction: float = 0.1
    seed: int = 1337
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: torch's default

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{_flag(name)} must be at least 1")
        if self.max_steps is None and self.max_time is None:
            raise UsageError("give --max-steps or --max-time (or a --preset)")
        if (self.max_steps is not None and self.max_steps < 1) or (
            self.max_time is not None and self.max_time <= 0
        ):
            raise UsageError("--max-steps and --max-time must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError("--val-fraction must be between 0 and 1")
        if self.lr <= 0 or self.warmup_steps < 0 or self.checkpoint_interval < 0:
            raise UsageError("--lr must be positive, --warmup-steps and --checkpoint-interval not negative")
        for name in (
            "lr",
            "min_lr",
            "weight_decay",
            "beta1",
            "beta2",
            "grad_clip",
            "max_time",
            "val_fraction",
        ):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # NaN and infinity pass every comparison test
                raise UsageError(f"--{_flag(name)} must be a finite number, not {value}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise UsageError("--beta1 and --beta2 must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0 or (self.min_lr is not None and self.min_lr < 0):
            raise UsageError("--weight-decay, --grad-clip and --min-lr must not be negative")

    def lr_at(self, step: int, elapsed: float) -> float:
        """Linear warmup, then cosine from lr to min_lr over the steps or the time budget (whichever
        is further along: a run ends by one limit or the other)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        ratio = 0.0
        if steps := self.lr_decay_steps or self.max_steps:
            ratio = (step - self.warmup_steps) / max(steps - self.warmup_steps, 1)
        if self.max_time:
            ratio = max(ratio, elapsed / self.max_time)
        min_lr = self.lr / 10 if self.min_lr is None else self.min_lr
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (self.lr - min_lr)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def resolve_configs(
    arch: str, preset: str | None, overrides: dict[str, Any]
) -> tuple[dict[str, Any], TrainConfig]:
    """Model fields (a dict: the vocabulary is not known yet) and the TrainConfig from a preset
    plus explicit flags (``overrides``: only the flags the user gave)."""
    from nlpkit.lm.config import ModelConfig

    family = PRESETS["lstm" if arch == "lstm" else "transformer"]
    name = preset or "small"
    if name not in family:
        raise UsageError(f"unknown --preset {name!r}", hint=f"use one of {', '.join(family)}")
    merged = {**family[name], **overrides}
    model_names = {f.name for f in fields(ModelConfig)}
    train_names = {f.name for f in fields(TrainConfig)}
    unknown = set(merged) - model_names - train_names
    if unknown:
        raise UsageError(f"unknown setting(s) {sorted(unknown)}")
    model = {k: v for k, v in merged.items() if k in model_names}
    return model | {"arch": arch}, TrainConfig(**{k: v for k, v in merged.items() if k in train_names})


# --------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """Everything the loop touches."""

    model: Any
    model_cfg: ModelConfig
    cfg: TrainConfig
    optimizer: Any
    train_data: Dataset
    val_data: Dataset
    state: RunState
    data_sha256: str
    device: str
    lr: float = 0.0  # the learning rate of the last step
    # how a checkpoint writes the run's result next to it (None: the whole model folder);
    # LoRA writes its adapter files instead
    write: Callable[[Path, Run], None] | None = None
    # validation for another objective than next-token prediction (reward models, DPO):
    # (run, batches) -> {"val_loss": ..., other "val_" numbers}; None: the language-model loss
    evaluate: Callable[[Run, int], dict[str, float]] | None = None
    last_eval: dict[str, float] = field(default_factory=dict)  # what ``evaluate`` last returned


# Flags that may change when a run is resumed; any other setting is the checkpoint's.
RESUMABLE = {"max_steps", "max_time", "eval_interval", "eval_iters", "log_interval", "checkpoint_interval",
             "device", "threads"}  # fmt: skip
