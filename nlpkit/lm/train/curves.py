"""Training curves from a train.jsonl: a picture of the training and validation loss by step
(or of any numbers the run logged: a PPO run's reward and KL).

    plot_curves("model/train.jsonl", "curves.svg")   # built in, no dependency
    plot_curves("model/train.jsonl", "curves.png")   # matplotlib (the `plot` extra)
    plot_curves("ppo/train.jsonl", "ppo.svg", ["reward", "kl"])

Why SVG is built in: it is text (a few dozen lines to write), opens in every browser and
scales; matplotlib is 40 MB of dependencies for one PNG, so it is optional.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nlpkit.errors import DataError, UsageError

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 420, 70, 20, 40, 50
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
LABELS = {"loss": "training loss", "val_loss": "validation loss"}
LOSSES = ("loss", "val_loss")


def read_curves(path: str, keys: Sequence[str] | None = None) -> dict[str, list[tuple[float, float]]]:
    """(step, value) points of ``keys`` in a train.jsonl (or ``-``); by default "loss" and
    "val_loss", or "reward" and "kl" for a PPO run (which logs no loss)."""
    from nlpkit.io.records import iter_lines, parse_record

    records = [(where, parse_record(line, where)) for where, line in iter_lines(path)]
    if not keys:
        ppo = any("reward" in r for _, r in records) and not any("loss" in r for _, r in records)
        keys = ("reward", "kl") if ppo else LOSSES
    curves: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    for where, record in records:
        for key, points in curves.items():
            value, step = record.get(key), record.get("step")
            if isinstance(value, (int, float)) and isinstance(step, (int, float)):
                if not (
                    math.isfinite(value) and math.isfinite(step) and abs(value) < 1e100 and abs(step) < 1e15
                ):
                    raise DataError(f"{key} {value} at step {step} is out of range to draw", where=where)
                points.append((float(step), float(value)))
    if not any(curves.values()):
        raise DataError(
            f"no {' or '.join(curves)} records", where=path, hint="give the train.jsonl of a model folder"
        )
    return curves


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _ylabel(curves: dict[str, Any]) -> str:
    return "loss (nats per token)" if set(curves) <= set(LOSSES) else ", ".join(curves)


def plot_curves(log: str, out: str, keys: Sequence[str] | None = None) -> None:
    """Write the curves of ``log`` to ``out`` (.svg built in, .png with matplotlib)."""
    curves = read_curves(log, keys)
    if out.endswith(".svg"):
        from nlpkit.io.files import write_bytes_atomic

        write_bytes_atomic(out, svg(curves, title=Path(log).parent.name or "training").encode())
    elif out.endswith(".png"):
        _png(curves, out)
    else:
        raise UsageError(f"unknown picture format {out!r}", hint="name the output .svg or .png")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers between lo and hi."""
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= n)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def svg(curves: dict[str, list[tuple[float, float]]], title: str = "training") -> str:
    """The curves as an SVG document (steps across, loss up)."""
    from xml.sax.saxutils import escape

    points = [p for c in curves.values() for p in c]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad = 0.05 * (y1 - y0)  # keep the extreme points and markers inside the frame
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def sy(y: float) -> float:
        return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif"'
        ' font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for x in _ticks(x0, x1):
        out.append(f'<line x1="{sx(x):.1f}" y1="{TOP}" x2="{sx(x):.1f}" y2="{H - BOTTOM}" stroke="#eee"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{x:g}</text>')
    for y in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT}" y1="{sy(y):.1f}" x2="{W - RIGHT}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 8}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">step</text>')
    mid = (TOP + H - BOTTOM) / 2
    out.append(
        f'<text x="18" y="{mid}" transform="rotate(-90 18 {mid})" text-anchor="middle">'
        f"{escape(_ylabel(curves))}</text>"
    )
    for i, (key, pts) in enumerate((k, v) for k, v in curves.items() if v):
        color = _color(list(curves).index(key))
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        if key.startswith("val_"):
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        ly = TOP + 8 + 18 * i
        out.append(
            f'<line x1="{W - 190}" y1="{ly}" x2="{W - 165}" y2="{ly}" stroke="{color}" stroke-width="3"/>'
        )
        out.append(f'<text x="{W - 158}" y="{ly + 4}">{escape(LABELS.get(key, key))}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


def _png(curves: dict[str, list[tuple[float, float]]], out: str) -> None:
    from nlpkit.io.deps import require

    require("matplotlib", "PNG output (or write an .svg, built in)").use("Agg")
    import matplotlib.pyplot as plt

    from nlpkit.io.files import atomic_open

    fig: Any
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=100)
    for i, (key, pts) in enumerate(curves.items()):
        if pts:
            marker = "o" if key.startswith("val_") else None
            ax.plot(*zip(*pts, strict=True), label=LABELS.get(key, key), color=_color(i), marker=marker)
    ax.set_xlabel("step")
    ax.set_ylabel(_ylabel(curves))
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_open(out) as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
