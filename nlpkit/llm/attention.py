"""Attention weights, shown: what each token of a text attends to, in a decoder (a Llama-family
model: SmolLM2, Qwen2, one you trained) or a BERT sentence encoder (MiniLM).

    weights, tokens = attention_weights("smollm2-135m-instruct", "The animal didn't cross ...")
    weights.shape   # (layers, heads, T, T): row i is token i's attention over the tokens

The weights are recomputed from each attention layer's own input (a forward hook), with its
own projections and rotary embedding: softmax(q k^T / sqrt(hs)), causal for a decoder, over the
real tokens for an encoder. The model itself runs unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from nlpkit.errors import UsageError


def attention_weights(spec: str, text: str, device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """(weights (L, H, T, T) float32, the T tokens as text) for ``text`` under model ``spec``."""
    from nlpkit.io.deps import import_torch
    from nlpkit.store.resolve import resolve_model

    import_torch()
    if not text.strip():
        raise UsageError("give a text to look at", hint='nlpkit attention MODEL "The animal was tired"')
    folder = resolve_model(spec)
    if (folder / "model.onnx").is_file():
        raise UsageError(
            "a quantized (ONNX Runtime) model does not expose its attention weights",
            hint="give the float model it was quantized from",
        )
    config = (
        (folder / "config.json").read_text(encoding="utf-8") if (folder / "config.json").is_file() else ""
    )
    if '"bert"' in config:
        return _bert(folder, text, device)
    return _decoder(folder, text, device)


def _decoder(folder: Path, text: str, device: str) -> tuple[np.ndarray, list[str]]:
    import torch

    from nlpkit.lm.layers import Attention, apply_rope
    from nlpkit.lm.model import load_model
    from nlpkit.text.tokenizer import load

    model, cfg = load_model(folder, device)
    if cfg.arch != "llama":
        raise UsageError(f"attention works on transformer decoders and BERT encoders; this is {cfg.arch}")
    tok = load(str(folder))
    ids = tok.encode(text, add_special_tokens=False).ids[: cfg.block_size]
    captured: list[Any] = []

    def grab(module: Attention, args: tuple[Any, ...]) -> None:
        x, rope = args[0], args[1]
        B, T, _ = x.shape
        q = module.q_proj(x).view(B, T, module.n_head, module.hs)
        k = module.k_proj(x).view(B, T, module.n_kv, module.hs)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(module.n_head // module.n_kv, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(module.hs)  # (B, nh, T, T)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        captured.append(att.softmax(-1)[0].float())

    hooks = [m.register_forward_pre_hook(grab) for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.inference_mode():
            model(torch.tensor([ids], device=device))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(captured).cpu().numpy(), [tok.decode([i]) for i in ids]


def _bert(folder: Path, text: str, device: str) -> tuple[np.ndarray, list[str]]:
    import torch

    from nlpkit.embed.bert import Layer, load_bert
    from nlpkit.embed.config import BertConfig
    from nlpkit.embed.encoder import _max_length, load_tokenizer

    cfg = BertConfig.from_file(folder / "config.json")
    tok = load_tokenizer(folder, _max_length(folder, cfg.max_position_embeddings))
    enc = tok.encode(text)
    model = load_bert(folder).to(device).eval()
    captured: list[Any] = []

    def grab(module: Layer, args: tuple[Any, ...]) -> None:
        x, bias = args[0], args[1]
        B, T = x.shape[:2]

        def heads(t: Any) -> Any:
            return t.view(B, T, module.n_head, module.head_size).transpose(1, 2)

        q, k = heads(module.query(x)), heads(module.key(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(module.head_size) + bias
        captured.append(att.softmax(-1)[0].float())

    hooks = [m.register_forward_pre_hook(grab) for m in model.modules() if isinstance(m, Layer)]
    ids = torch.tensor([enc.ids], device=device)
    try:
        with torch.inference_mode():
            model(ids, torch.ones_like(ids))
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(captured).cpu().numpy(), list(enc.tokens)


def records(weights: np.ndarray, tokens: list[str], layer: int | None, head: int | None,
            token: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """One record per (layer, head, from, to) weight, filtered by layer, head and "from" token."""
    layers = _pick(layer, weights.shape[0], "--layer")
    heads = _pick(head, weights.shape[1], "--head")
    rows = token_rows(tokens, token) if token is not None else range(len(tokens))
    return [
        {"layer": int(L), "head": int(H), "from": int(i), "to": int(j), "from_token": tokens[i],
         "to_token": tokens[j], "weight": round(float(weights[L, H, i, j]), 6)}
        for L in layers for H in heads for i in rows for j in range(len(tokens)) if weights[L, H, i, j] > 0
    ]  # fmt: skip


def token_rows(tokens: list[str], token: str) -> list[int]:
    """Positions of ``token`` (matched without surrounding spaces or BPE markers)."""
    want = token.strip().lower()
    found = [i for i, t in enumerate(tokens) if _clean(t) == want]
    if not found:
        shown = ", ".join(repr(_clean(t)) for t in tokens[:40])
        raise UsageError(f"no token {token!r} in the text", hint=f"its tokens: {shown}")
    return found


def _clean(t: str) -> str:
    return t.replace("Ġ", " ").replace("▁", " ").replace("##", "").strip().lower()


def _pick(value: int | None, n: int, flag: str) -> range:
    if value is None:
        return range(n)
    index = value if value >= 0 else n + value
    if not 0 <= index < n:
        raise UsageError(f"{flag} {value} is out of range; the model has {n}")
    return range(index, index + 1)


# --------------------------------------------------------------------------- pictures


def svg_heatmap(weights: np.ndarray, tokens: list[str], title: str) -> str:
    """A (T, T) weight matrix as an SVG heatmap: rows attend (from), columns are attended (to)."""
    from xml.sax.saxutils import escape

    T, cell, left, top = len(tokens), 22, 120, 120
    size = (left + cell * T + 20, top + cell * T + 20)
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{size[0]}" height="{size[1]}"'
    out = [f'{svg} font-family="sans-serif" font-size="11"><title>{escape(title)}</title>',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="18" font-size="13">{escape(title)}</text>']  # fmt: skip
    peak = float(weights.max()) or 1.0
    for i in range(T):
        y = top + cell * i + 15
        out.append(f'<text x="{left - 6}" y="{y}" text-anchor="end">{escape(_label(tokens[i]))}</text>')
        out.append(f'<text transform="translate({left + cell * i + 15},{top - 6}) rotate(-60)">'
                   f"{escape(_label(tokens[i]))}</text>")  # fmt: skip
        for j in range(T):
            shade = int(255 * (1 - weights[i, j] / peak))
            x, y = left + cell * j, top + cell * i
            fill = f"rgb({shade},{shade},255)"
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}">'
                       f"<title>{weights[i, j]:.3f}</title></rect>")  # fmt: skip
    return "\n".join([*out, "</svg>"]) + "\n"


def svg_bars(values: np.ndarray, tokens: list[str], title: str, note: str) -> str:
    """What one token attends to: a bar per token of the text."""
    from xml.sax.saxutils import escape

    T, bar, left, top, width = len(tokens), 20, 140, 50, 420
    w, h = left + width + 80, top + bar * T + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12"><title>{escape(title)}</title>'
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14">{escape(title)}</text>',
           f'<text x="10" y="38" fill="#555">{escape(note)}</text>']  # fmt: skip
    peak = float(values.max()) or 1.0
    for j, v in enumerate(values):
        y = top + bar * j
        out.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end">{escape(_label(tokens[j]))}</text>')
        out.append(
            f'<rect x="{left}" y="{y + 3}" width="{width * v / peak:.1f}" height="{bar - 6}" fill="#1f77b4"/>'
        )
        out.append(f'<text x="{left + width * v / peak + 6:.1f}" y="{y + 14}">{v:.3f}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


def _label(t: str) -> str:
    text = t.replace("Ġ", "·").replace("▁", "·").replace("\n", "\\n")
    return text if len(text) <= 16 else text[:15] + "…"


def png_heatmap(weights: np.ndarray, tokens: list[str], title: str, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * len(tokens), 1.2 + 0.35 * len(tokens)), dpi=100)
    ax.imshow(weights, cmap="Blues")
    labels = [_label(t) for t in tokens]
    ax.set_xticks(range(len(tokens)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(tokens)), labels)
    ax.set_title(title)
    _save(fig, plt, path)


def png_bars(values: np.ndarray, tokens: list[str], title: str, note: str, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1 + 0.3 * len(tokens)), dpi=100)
    ax.barh(range(len(tokens)), values, color="#1f77b4")
    ax.set_yticks(range(len(tokens)), [_label(t) for t in tokens])
    ax.invert_yaxis()
    ax.set_title(f"{title}\n{note}", fontsize=9)
    _save(fig, plt, path)


def _pyplot() -> Any:
    from nlpkit.io.deps import require

    require("matplotlib", "a PNG picture (or write an .svg, built in)").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: str) -> None:
    from nlpkit.io.files import atomic_open

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
