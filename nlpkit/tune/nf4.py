"""NF4, the QLoRA paper's 4-bit NormalFloat (Dettmers et al. 2023), in bitsandbytes' layout.

    q = quantize_nf4(w)             # NF4: packed codes, double-quantized block scales
    w2 = dequantize_nf4(q)          # float32, (out, in); |w - w2| <= one code step per block
    quantize_bases(model)           # every frozen linear weight becomes NF4 (QLoRA), the head excepted

* 16 levels: the quantiles of N(0, 1) scaled to [-1, 1] with an exact zero (``NF4_CODE``,
  bitsandbytes' table); each block of 64 weights is divided by its absolute maximum and each
  value takes the nearest level; two codes per byte, the first in the high nibble.
* double quantization: the per-block absmax (float32) minus their mean is quantized again in
  blocks of 256 with bitsandbytes' signed dynamic 8-bit code (``dynamic_code``), each block
  keeping one float32 absmax: 0.127 + 0.5 bits of scale per weight instead of 0.5 (float32).

Per matrix product the weight is dequantized to the compute dtype (float32 on the CPU,
bfloat16 on CUDA) and freed after use; autograd keeps only the NF4 bytes (the backward
dequantizes again), so the frozen base stays at ~4.13 bits per weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.lm.lora import LoRALinear

BLOCK, SCALE_BLOCK = 64, 256
# bitsandbytes' NF4 table (functional.py, get_4bit_type("nf4")), from the paper's construction
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])  # fmt: skip


def dynamic_code(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' dynamic 8-bit code (``create_dynamic_map``): a sign, a run of zero bits
    giving the decimal exponent, then linear fraction bits; 256 sorted values in [-1, 1]."""
    data: list[float] = []
    non_sign = total_bits - 1
    extra = 2 ** (non_sign - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = int(
            2 ** (i + non_sign - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign - max_exponent_bits + 1) + 1
        )
        bounds = torch.linspace(0.1, 1, items)
        means = ((bounds[:-1] + bounds[1:]) / 2.0) * 10 ** (-(max_exponent_bits - 1) + i)
        data += means.tolist() + ((-means).tolist() if signed else [])
    if extra > 0:
        bounds = torch.linspace(0.1, 1, extra + 1)
        means = ((bounds[:-1] + bounds[1:]) / 2.0) * 10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)
        data += means.tolist() + ((-means).tolist() if signed else [])
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return torch.tensor(sorted(data))


DYNAMIC_CODE = dynamic_code()


def _nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code value for each element of x (code sorted): uint8."""
    mids = (code[1:] + code[:-1]) / 2
    return torch.bucketize(x, mids).to(torch.uint8)


@dataclass
class NF4:
    """A matrix in NF4: ``packed`` (n/2,) uint8, ``scale_codes`` (n/64,) uint8 into the dynamic
    code, ``scale_absmax`` (n/64/256,) float32, ``scale_offset`` (the absmax mean), the shape."""

    packed: torch.Tensor
    scale_codes: torch.Tensor
    scale_absmax: torch.Tensor
    scale_offset: float
    shape: tuple[int, ...]

    def nbytes(self) -> int:
        return (
            sum(t.numel() * t.element_size() for t in (self.packed, self.scale_codes, self.scale_absmax)) + 4
        )


def quantize_nf4(w: torch.Tensor) -> NF4:
    """NF4 of a float matrix whose size is a multiple of 64 (every linear layer of the models here)."""
    flat = w.detach().float().reshape(-1)
    if flat.numel() % BLOCK:
        raise ValueError(f"NF4 needs a multiple of {BLOCK} weights, not {flat.numel()}")
    blocks = flat.view(-1, BLOCK)  # (nb, 64)
    absmax = blocks.abs().amax(1).clamp(min=1e-12)  # (nb,)
    codes = _nearest(blocks / absmax[:, None], NF4_CODE.to(flat.device)).view(-1)
    packed = (codes[0::2] << 4) | codes[1::2]
    offset = float(absmax.mean())
    centred = absmax - offset
    pad = (-centred.numel()) % SCALE_BLOCK
    sblocks = F.pad(centred, (0, pad)).view(-1, SCALE_BLOCK)
    smax = sblocks.abs().amax(1).clamp(min=1e-12)
    scodes = _nearest(sblocks / smax[:, None], DYNAMIC_CODE.to(flat.device)).view(-1)[: centred.numel()]
    return NF4(packed, scodes, smax, offset, tuple(w.shape))


def dequantize_nf4(q: NF4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float matrix back: code value * (dequantized absmax) per block of 64."""
    n_scales = q.scale_codes.numel()
    pad = (-n_scales) % SCALE_BLOCK
    scodes = F.pad(q.scale_codes.long(), (0, pad)).view(-1, SCALE_BLOCK)
    absmax = (DYNAMIC_CODE.to(q.packed.device)[scodes] * q.scale_absmax[:, None]).view(-1)[
        :n_scales
    ] + q.scale_offset
    codes = torch.stack(((q.packed >> 4) & 0xF, q.packed & 0xF), 1).view(-1).long()
    values = NF4_CODE.to(q.packed.device)[codes].view(-1, BLOCK) * absmax[:, None]
    return values.view(q.shape).to(dtype)


class _NF4Linear(torch.autograd.Function):
    """y = x W^T with W dequantized on the fly; saves only the NF4 bytes, not W (no weight grad)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: QLoRALinear | NF4Linear) -> torch.Tensor:
        ctx.module = module
        return F.linear(x, module.base_weight(x.dtype))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g @ ctx.module.base_weight(g.dtype), None


class QLoRALinear(LoRALinear):
    """A LoRALinear whose frozen weight is held as NF4 (buffers, saved with the model state)."""

    nf4_packed: torch.Tensor
    nf4_scale_codes: torch.Tensor
    nf4_scale_absmax: torch.Tensor

    def __init__(self, lora: LoRALinear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = lora.in_features, lora.out_features
        self.rank, self.scaling, self.dropout = lora.rank, lora.scaling, lora.dropout
        self.lora_a, self.lora_b, self.bias = lora.lora_a, lora.lora_b, lora.bias
        self.disabled = lora.disabled
        q = quantize_nf4(lora.weight)
        self.register_buffer("nf4_packed", q.packed)
        self.register_buffer("nf4_scale_codes", q.scale_codes)
        self.register_buffer("nf4_scale_absmax", q.scale_absmax)
        self.nf4_offset, self.nf4_shape = q.scale_offset, q.shape
        self.train(lora.training)

    @property
    def nf4(self) -> NF4:
        return NF4(
            self.nf4_packed, self.nf4_scale_codes, self.nf4_scale_absmax, self.nf4_offset, self.nf4_shape
        )

    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_nf4(self.nf4, dtype or self.lora_a.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _NF4Linear.apply(x, self)  # (B, T, out)
        if self.bias is not None:
            out = out + self.bias
        if self.disabled:
            return out
        a = self.lora_a(self.dropout(x).to(self.lora_a.weight.dtype))  # (B, T, r)
        return out + (self.lora_b(a) * self.scaling).to(out.dtype)


class NF4Linear(nn.Module):
    """A frozen linear layer without an adapter, its weight held as NF4 (QLoRA quantizes every
    linear layer of the base, not only the adapted ones)."""

    nf4_packed: torch.Tensor
    nf4_scale_codes: torch.Tensor
    nf4_scale_absmax: torch.Tensor

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        q = quantize_nf4(linear.weight.detach())
        self.register_buffer("nf4_packed", q.packed)
        self.register_buffer("nf4_scale_codes", q.scale_codes)
        self.register_buffer("nf4_scale_absmax", q.scale_absmax)
        self.nf4_offset, self.nf4_shape, self.dtype = q.scale_offset, q.shape, linear.weight.dtype

    @property
    def nf4(self) -> NF4:
        return NF4(
            self.nf4_packed, self.nf4_scale_codes, self.nf4_scale_absmax, self.nf4_offset, self.nf4_shape
        )

    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_nf4(self.nf4, dtype or self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _NF4Linear.apply(x, self)
        return out if self.bias is None else out + self.bias


# the output head stays as it is (often tied to the embedding; PEFT and bitsandbytes skip it
# too), and so does a trainable head (a reward model's score)
KEEP = ("lm_head", "score")


def quantize_bases(model: nn.Module) -> dict[str, float]:
    """QLoRA's base: every LoRALinear becomes a QLoRALinear and every other frozen linear layer
    an NF4Linear (weights to NF4), the output head excepted; the bytes before and after."""
    before = after = 0
    for name, module in list(model.named_modules()):
        leaf_name = name.rpartition(".")[2]
        if isinstance(module, LoRALinear) and not isinstance(module, QLoRALinear):
            q: nn.Module = QLoRALinear(module)
        elif type(module) is nn.Linear and leaf_name not in KEEP and not module.weight.requires_grad:
            q = NF4Linear(module)
        else:
            continue
        before += module.weight.numel() * 4
        after += q.nf4.nbytes()  # type: ignore[operator]
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, q)
    return {"float32": before, "nf4": after, "ratio": after / max(before, 1)}
