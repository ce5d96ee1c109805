"""How a training run survives: torchrun processes, stop signals, and checkpoints to resume from.

    with distributed("cpu") as d, StopFlag() as stop:   # io.signals; rank 0 of 1 outside torchrun
        ...
        save_checkpoint(out, run, d)                      # checkpoints/step-N.pt, then ``latest``
    ckpt = load_checkpoint(out)                           # what ``train(..., resume=True)`` reads

A checkpoint holds the weights, the AdamW state, the ``RunState`` (step, data position, clock),
both configurations, the training data's digest, and every process's RNG states (gathered to
rank 0), so a resumed run continues bitwise identically on the CPU. Only rank 0 writes; the
other processes wait at a barrier. The loop that calls these is loop.py's ``fit``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from nlpkit.errors import DataError, InputMissing
from nlpkit.lm.train.dist import Dist

if TYPE_CHECKING:
    from nlpkit.lm.train.config import Run


KEEP_CHECKPOINTS = 2


# --------------------------------------------------------------------------- checkpoints


@dataclass
class RunState:
    """Where a run is: everything besides weights and optimizer that a resume needs."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # the next item of the epoch's order
    tokens: int = 0  # training tokens seen, all processes
    elapsed: float = 0.0  # seconds of training (evaluations included), over every resumed run
    train_time: float = 0.0  # seconds in training steps alone (for tokens/s)


def _rng_state() -> dict[str, Any]:
    import torch

    kind, keys, pos, has_gauss, cached = cast(tuple[Any, ...], np.random.get_state())
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, run: Run, d: Dist) -> None:
    """checkpoints/step-N.pt (written atomically), then the ``latest`` pointer, then
    model.safetensors; older checkpoints beyond the last KEEP_CHECKPOINTS are removed."""
    import torch

    rngs = [_rng_state()]
    if d.world > 1:
        import torch.distributed as dist

        rngs = [{} for _ in range(d.world)]
        dist.all_gather_object(rngs, _rng_state())
    if d.rank == 0:
        from nlpkit.lm.model import save_model

        blob = {"model": trained_state(run.model), "optimizer": run.optimizer.state_dict(), "rng": rngs,
                "state": asdict(run.state), "model_config": asdict(run.model_cfg),
                "train_config": asdict(run.cfg), "data_sha256": run.data_sha256}  # fmt: skip
        write_checkpoint(out, run.state.step, blob)
        if run.write is not None:
            run.write(out, run)
        else:
            save_model(run.model, run.model_cfg, out, {"nlpkit.step": str(run.state.step)})
    if d.world > 1:
        torch.distributed.barrier()


def write_checkpoint(out: Path, step: int, blob: dict[str, Any]) -> None:
    """checkpoints/step-N.pt (written atomically), then the ``latest`` pointer; checkpoints
    older than the last KEEP_CHECKPOINTS are removed. What ``load_checkpoint`` reads."""
    import torch

    from nlpkit.io.files import atomic_open, write_bytes_atomic

    folder = out / "checkpoints"
    folder.mkdir(exist_ok=True)
    name = f"step-{step:08d}.pt"
    with atomic_open(folder / name) as f:
        torch.save(blob, f)
    write_bytes_atomic(folder / "latest", f"{name}\n".encode())
    for old in sorted(folder.glob("step-*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink()


def trained_state(model: Any) -> dict[str, Any]:
    """The weights a checkpoint holds: all of them, or only the trained ones when some are
    frozen (an adapter's few matrices, not the base model they adapt)."""
    state = model.state_dict()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    if len(trained) == len(list(model.parameters())):
        return state
    return {k: v for k, v in state.items() if k in trained}


def load_checkpoint(out: Path) -> dict[str, Any]:
    """The checkpoint ``latest`` names (our own files only, loaded with weights_only=True)."""
    import torch

    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        raise InputMissing(
            "no checkpoint to resume from", where=str(out), hint="train without --resume first"
        )
    name = pointer.read_text().strip()
    if not name.startswith("step-") or "/" in name or not (out / "checkpoints" / name).is_file():
        raise DataError(f"checkpoints/latest names no checkpoint ({name[:40]!r})", where=str(pointer))
    try:
        return torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)  # type: ignore[no-any-return,unused-ignore]
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise DataError(
            f"unreadable checkpoint ({str(e)[:200]})", where=str(out / "checkpoints" / name)
        ) from None


def truncate_log(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint (a run killed later logged steps it will redo)."""
    from nlpkit.io.files import write_bytes_atomic

    if path.is_file():
        lines = path.read_bytes().splitlines(keepends=True)
        write_bytes_atomic(
            path, b"".join(x for x in lines if x.strip() and json.loads(x).get("step", 0) <= step)
        )
