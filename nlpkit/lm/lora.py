"""LoRA (Hu et al. 2021): a frozen linear layer plus a trained low-rank update, and adapters in
Hugging Face PEFT's layout.

    names = apply_lora(model, LoraConfig(rank=8, alpha=16, targets=("q_proj", "v_proj")))
    ...train the lora_a / lora_b parameters (trainable_params(model))...
    save_adapter(model, "adapter/")            # adapter_config.json + adapter_model.safetensors
    load_adapter(base, "adapter/", merge=True)  # W += (alpha / r) B A, the plain layers again

``LoRALinear`` keeps the base layer's parameter names (``q_proj.weight``) and adds
``q_proj.lora_a.weight`` (r, in) and ``q_proj.lora_b.weight`` (out, r), as torchtune does, so a
base checkpoint loads unchanged; the output is ``x W^T + (alpha / r) * dropout(x) A^T B^T``.
At initialisation B is zero (A is PEFT's Kaiming-uniform), so the model equals its base.

The adapter files are PEFT's: ``adapter_config.json`` (``peft_type: LORA``, ``r``,
``lora_alpha``, ``target_modules``...) and tensors named
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``, so ``PeftModel.from_pretrained``
loads them over the same base model, and an adapter PEFT trained loads here. nlpkit adds its
provenance to the safetensors metadata, with a fingerprint of the base weights: an adapter is
refused over a different base (or rank, or shape), never silently applied.

The layer lives with the model (``lm``) because generation and evaluation load adapters; the
fine-tuning workflow that trains them is ``nlpkit.tune``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.errors import DataError, InputMissing, UsageError

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class LoraConfig:
    """The adapter's shape; ``targets`` are module names (``q_proj``) or ``("all-linear",)``."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    base: str = ""  # the base model as the user named it (PEFT's base_model_name_or_path)
    extra: dict[str, Any] = field(default_factory=dict)  # other adapter_config.json keys, kept

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UsageError("--rank must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError("--dropout must be in [0, 1)")
        if self.alpha <= 0:
            raise UsageError("--alpha must be positive")
        if not self.targets:
            raise UsageError(
                "--targets names no module", hint=f"use all-linear or some of {', '.join(LINEAR_NAMES)}"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def modules(self) -> tuple[str, ...]:
        if tuple(self.targets) == ("all-linear",):
            return LINEAR_NAMES
        unknown = [t for t in self.targets if t not in LINEAR_NAMES]
        if unknown:
            raise UsageError(
                f"unknown target module {unknown[0]!r}",
                hint=f"use all-linear or some of {', '.join(LINEAR_NAMES)}",
            )
        return tuple(self.targets)

    def to_peft(self) -> dict[str, Any]:
        """adapter_config.json as PEFT writes it (the keys PEFT 0.x reads)."""
        return {
            **self.extra,
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base or None,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": sorted(self.modules()),
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
            "layers_to_transform": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }

    @classmethod
    def from_peft(cls, cfg: dict[str, Any], where: str) -> LoraConfig:
        """Read a PEFT adapter_config.json; refuse what nlpkit does not apply (DoRA, rsLoRA...)."""
        if cfg.get("peft_type") != "LORA":
            raise DataError(f"peft_type is {cfg.get('peft_type')!r}, not 'LORA'", where=where)
        unsupported = [k for k in ("use_dora", "use_rslora", "fan_in_fan_out") if cfg.get(k)]
        unsupported += [
            k
            for k in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform")
            if cfg.get(k)
        ]
        if cfg.get("bias", "none") != "none":
            unsupported.append("bias")
        if unsupported:
            raise DataError(
                f"the adapter uses {', '.join(unsupported)}, which nlpkit does not apply", where=where
            )
        targets = cfg.get("target_modules")
        if isinstance(targets, str):
            targets = [targets] if targets == "all-linear" else None
        if not isinstance(targets, list) or not targets:
            raise DataError("target_modules must be a list of module names", where=where)
        try:
            return cls(
                int(cfg["r"]),
                float(cfg["lora_alpha"]),
                float(cfg.get("lora_dropout") or 0.0),
                tuple(str(t) for t in targets),
                str(cfg.get("base_model_name_or_path") or ""),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"adapter_config.json lacks a valid r or lora_alpha ({e})", where=where) from None


class LoRALinear(nn.Module):
    """A frozen ``weight`` (out, in) plus ``lora_b(lora_a(dropout(x))) * scaling``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.bias = base.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scaling = rank, alpha / rank
        self.disabled = False  # True: the frozen base alone (see ``adapters_disabled``)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dev = base.weight.device
        self.lora_a = nn.Linear(self.in_features, rank, bias=False, device=dev)
        self.lora_b = nn.Linear(rank, self.out_features, bias=False, device=dev)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))  # PEFT's (and nn.Linear's)
        nn.init.zeros_(self.lora_b.weight)

    def base_weight(self) -> torch.Tensor:
        """The frozen matrix in the compute dtype (QLoRA overrides this to dequantize NF4)."""
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.base_weight(), self.bias)  # (B, T, out)
        if self.disabled:
            return out
        a = self.lora_a(self.dropout(x).to(self.lora_a.weight.dtype))  # (B, T, r)
        return out + (self.lora_b(a) * self.scaling).to(out.dtype)

    def delta(self) -> torch.Tensor:
        """(alpha / r) B A: what merging adds to the base matrix, (out, in)."""
        return (self.lora_b.weight.float() @ self.lora_a.weight.float()) * self.scaling


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Freeze ``model`` and wrap its target linear layers in ``LoRALinear``; the wrapped names."""
    targets = set(cfg.modules())
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for name, module in list(model.named_modules()):
        leaf = name.rpartition(".")[2]
        if leaf in targets and isinstance(module, nn.Linear):
            parent = model.get_submodule(name.rpartition(".")[0])
            wrapped = LoRALinear(module, cfg.rank, cfg.alpha, cfg.dropout)
            setattr(parent, leaf, wrapped.train(module.training))  # an eval model stays in eval mode
            names.append(name)
    if not names:
        raise UsageError(f"the model has no {', '.join(sorted(targets))} layers to adapt")
    return names


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its frozen base: every LoRA layer adds nothing inside the block. DPO and
    PPO take their reference model this way, so one copy of the weights serves both."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.disabled = True
    try:
        yield
    finally:
        for m in layers:
            m.disabled = False


def trainable_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA matrices by name (``...q_proj.lora_a.weight``)."""
    return {n: p for n, p in model.named_parameters() if ".lora_a." in n or ".lora_b." in n}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base matrix and put plain ``nn.Linear`` layers back."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                w = module.base_weight().float() + module.delta().to(module.base_weight().device)
            dtype = (
                module.lora_a.weight.dtype if getattr(module, "weight", None) is None else module.weight.dtype
            )
            linear = nn.Linear(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                device=w.device,
                dtype=dtype,
            )
            linear.weight = nn.Parameter(w.to(dtype), requires_grad=False)
            if module.bias is not None:
                linear.bias = module.bias
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, linear)
    return model


# --------------------------------------------------------------------------- PEFT files


def base_fingerprint(model: nn.Module) -> str:
    """A digest of the base weights an adapter was trained over: the first and last layers'
    query matrices and the final norm (cheap, and different for any other checkpoint)."""
    state = dict(model.named_parameters())
    h = hashlib.sha256()
    picks = [n for n in state if n.endswith("q_proj.weight")]
    for name in [*picks[:1], *picks[-1:], "model.norm.weight"]:
        if name in state:
            t = state[name].detach().float().cpu().contiguous()
            h.update(name.encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    return h.hexdigest()[:32]


def peft_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's names (``base_model.model.<module>.lora_A.weight``)."""
    out = {}
    for name, p in trainable_params(model).items():
        module, _, rest = name.rpartition(".lora_")
        letter = rest[0].upper()
        out[f"{PEFT_PREFIX}{module}.lora_{letter}.weight"] = p.detach().float().cpu().contiguous()
    return out


def save_adapter(
    model: nn.Module,
    cfg: LoraConfig,
    folder: str | Path,
    metadata: dict[str, str] | None = None,
    fingerprint: str | None = None,
) -> None:
    """adapter_config.json and adapter_model.safetensors (each atomic), PEFT's layout;
    ``fingerprint``: the base's (``base_fingerprint`` of the unquantized model) when the
    model in hand holds other weights (QLoRA's NF4)."""
    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.tensors import provenance, save_tensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = provenance(**(metadata or {}), format="pt")
    meta["nlpkit.base_fingerprint"] = fingerprint or base_fingerprint(model)
    state = {k: v.numpy() for k, v in peft_state(model).items()}
    save_tensors(str(folder / WEIGHTS_FILE), state, meta, kind="adapter.lora")
    write_bytes_atomic(folder / CONFIG_FILE, (json.dumps(cfg.to_peft(), indent=2) + "\n").encode())


def read_adapter(folder: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor], dict[str, str]]:
    """An adapter folder's config, tensors (PEFT names) and metadata."""
    from nlpkit.io.tensors import load_tensors

    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise InputMissing(
            f"no {CONFIG_FILE} and {WEIGHTS_FILE}",
            where=str(folder),
            hint="give the folder `nlpkit lora train -o` (or PEFT's save_pretrained) wrote",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", where=str(path)) from None
    if not isinstance(raw, dict):
        raise DataError("adapter_config.json must hold an object", where=str(path))
    cfg = LoraConfig.from_peft(raw, str(path))
    arrays, meta = load_tensors(str(folder / WEIGHTS_FILE))
    return cfg, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, meta


def load_adapter(
    model: nn.Module, folder: str | Path, *, merge: bool = False, strict_base: bool = True
) -> LoraConfig:
    """Apply the adapter in ``folder`` to ``model`` (wrapping its targets), or, with ``merge``,
    fold it into the base matrices. Refuses an adapter whose names, rank or shapes do not fit
    the model, or (for nlpkit's own adapters) whose base fingerprint differs."""
    cfg, tensors, meta = read_adapter(folder)
    where = str(Path(folder) / WEIGHTS_FILE)
    want = meta.get("nlpkit.base_fingerprint")
    if strict_base and want and want != base_fingerprint(model):
        raise UsageError(
            "the adapter was trained over another base model (its fingerprint differs)",
            where=str(folder),
            hint="give the model the adapter was trained on",
        )
    apply_lora(model, cfg)
    expected = peft_state(model)
    names = {_strip_adapter_name(k): v for k, v in tensors.items()}
    missing, extra = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    if missing or extra:
        raise UsageError(
            f"the adapter does not fit this model (missing {missing[:2]}, unexpected {extra[:2]})",
            where=where,
            hint="give the base model the adapter was trained on",
        )
    params = trainable_params(model)
    for key, value in names.items():
        module = key[len(PEFT_PREFIX) : -len(".lora_A.weight")]
        p = params[f"{module}.lora_{key[-8].lower()}.weight"]
        if tuple(value.shape) != tuple(p.shape):
            raise UsageError(
                f"{key} is {tuple(value.shape)}, the model needs {tuple(p.shape)} (rank {cfg.rank})",
                where=where,
                hint="the adapter is for another base model or rank",
            )
        with torch.no_grad():
            p.copy_(value.to(p.dtype))
    if merge:
        merge_lora(model)
    return cfg


def _strip_adapter_name(key: str) -> str:
    """PEFT writes ``...lora_A.weight``; in memory it is ``...lora_A.default.weight``."""
    return key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def lora_summary(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    trained = sum(p.numel() for p in trainable_params(model).values())
    return {"adapted_layers": len(names), "trainable_params": trained}
