"""Evaluating a language model: loss and perplexity on held-out text (``nlpkit eval``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nlpkit.errors import DataError
from nlpkit.io.deps import import_torch, resolve_device
from nlpkit.lm.train.data import (
    Dataset,
    PairSet,
    TokenStream,
    load_data,
)
from nlpkit.lm.train.dist import autocast

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: Any, data: Dataset, batch_size: int, device: str, limit: int | None = None
) -> tuple[float, int]:
    """Mean loss per target token over the validation batches, and how many targets."""
    import torch
    from torch.nn import functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast(device):
        for cpu_batch in data.eval_batches(batch_size, limit):
            batch = [t.to(device) for t in cpu_batch]
            logits, _ = model(*batch)
            targets = batch[-1].reshape(-1)
            total += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets, reduction="sum"
            ).item()
            count += int((targets != -100).sum())
    model.train(was_training)
    return total / max(count, 1), count


def eval_model(folder: str, paths: Sequence[str], *, field: str = "text", fmt: str = "auto",
               batch_size: int = 32, device: str = "auto",
               adapter: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``nlpkit eval``: loss and perplexity of a model folder on held-out text (or pairs)."""
    import_torch()
    from nlpkit.lm.model import load_model
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.tokenizer import load

    device = resolve_device(device)
    path = resolve_model(folder)
    model, cfg = load_model(path, device)
    if adapter:  # a LoRA adapter (PEFT layout) folded into the weights
        from nlpkit.lm.lora import load_adapter

        load_adapter(model, adapter, merge=True)
    data = load_data(paths, load(str(path)), cfg, field, fmt)
    # Long-context models (SmolLM2: 8192) are scored in windows of 1024 tokens, and batches are
    # cut so the logits of one batch stay near 512 MB.
    window = min(cfg.block_size, 1024)
    batch_size = max(1, min(batch_size, 2**27 // (window * cfg.vocab_size)))
    dataset: Dataset = (
        PairSet(data, cfg, train=False) if cfg.arch == "seq2seq" else TokenStream(data, window, train=False)
    )
    if len(dataset) == 0:
        raise DataError("too little text to evaluate (fewer than 2 tokens)", where=", ".join(paths))
    loss, count = evaluate(model, dataset, batch_size, device)
    return {"model": folder, "loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
