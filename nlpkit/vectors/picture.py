"""A picture of word vectors: chosen words projected to 2-D by PCA, and the analogy
parallelogram (king - man + woman ~ queen) drawn when its four words are there.

    plot_vectors(load_vectors("glove-6b-50d"), ["king", "queen", "man", "woman"], "analogy.svg")

The projection is the two leading principal components of the chosen words' unit vectors
(centred), so distances in the picture are the best 2-D view of those words only. The
parallelogram of ``a - b + c ~ d`` is drawn for the first quadruple of PAIRS whose four words
are all among the chosen ones: arrows b -> a and c -> d (parallel when the analogy holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nlpkit.errors import UsageError

DEFAULT_WORDS = ("king", "queen", "man", "woman", "prince", "princess", "boy", "girl", "uncle", "aunt")
# a - b + c = d: drawn as the two parallel arrows b -> a and c -> d (and b -> c, a -> d)
PAIRS = (("king", "man", "woman", "queen"), ("paris", "france", "italy", "rome"))
W, H, PAD = 640, 480, 50


def project(vectors: np.ndarray) -> np.ndarray:
    """(n, 2): the rows' coordinates on their two leading principal components."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return np.asarray(x @ vt[:2].T)


def choose(wv: Any, words: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    words = list(dict.fromkeys(w.strip() for w in (words or DEFAULT_WORDS) if w.strip()))
    if len(words) < 3:
        raise UsageError("give at least three different --words to project")
    rows = {w: wv.lookup(w) for w in words}
    missing = [w[:40] for w, i in rows.items() if i is None]
    if missing:
        raise UsageError(f"not in the vocabulary: {', '.join(missing[:5])}", hint="choose other --words")
    return words, np.stack([wv.vectors[rows[w]] for w in words]).astype(np.float64)


def plot_vectors(wv: Any, words: Sequence[str] | None, out: str) -> list[str]:
    """Write the picture (.svg built in, .png with matplotlib); the words drawn."""
    names, vectors = choose(wv, words)
    xy = project(vectors)
    quad = next((q for q in PAIRS if all(w in names for w in q)), None)
    if out.endswith(".svg"):
        from nlpkit.io.files import write_bytes_atomic

        write_bytes_atomic(out, svg(names, xy, quad).encode())
    elif out.endswith(".png"):
        _png(names, xy, quad, out)
    else:
        raise UsageError(f"unknown picture format {out!r}", hint="name the output .svg or .png")
    return names


def svg(names: list[str], xy: np.ndarray, quad: tuple[str, ...] | None) -> str:
    from xml.sax.saxutils import escape

    lo, hi = xy.min(0), xy.max(0)
    # one scale for both axes: angles and parallels in the picture are the projection's own
    scale = min((W - 2 * PAD) / max(hi[0] - lo[0], 1e-9), (H - 2 * PAD) / max(hi[1] - lo[1], 1e-9))
    x0 = (W - scale * (hi[0] - lo[0])) / 2
    y0 = (H - scale * (hi[1] - lo[1])) / 2

    def at(i: int) -> tuple[float, float]:
        x, y = (xy[i] - lo) * scale
        return x0 + x, H - y0 - y

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif"'
        ' font-size="13">',
        '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#d62728"/></marker></defs>',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">word vectors, 2-D PCA</text>',
    ]
    if quad is not None:
        a, b, c, d = (names.index(w) for w in quad)
        for (i, j), color in (((b, a), "#d62728"), ((c, d), "#d62728"), ((b, c), "#999"), ((a, d), "#999")):
            (x1, y1), (x2, y2) = at(i), at(j)
            dash = ' stroke-dasharray="4 3"' if color == "#999" else ' marker-end="url(#a)"'
            out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"'
                       f' stroke-width="1.6"{dash}/>')  # fmt: skip
        label = escape(f"{quad[0]} - {quad[1]} + {quad[2]} ≈ {quad[3]}")
        out.append(f'<text x="{W / 2}" y="{H - 14}" text-anchor="middle" fill="#d62728">{label}</text>')
    for i, name in enumerate(names):
        x, y = at(i)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1f77b4"/>')
        out.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}">{escape(name)}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


def _png(names: list[str], xy: np.ndarray, quad: tuple[str, ...] | None, out: str) -> None:
    from nlpkit.io.deps import require

    require("matplotlib", "PNG output (or write an .svg, built in)").use("Agg")
    import matplotlib.pyplot as plt

    from nlpkit.io.files import atomic_open

    fig: Any
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    ax.scatter(xy[:, 0], xy[:, 1], color="#1f77b4")
    for (x, y), name in zip(xy, names, strict=True):
        ax.annotate(name, (x, y), xytext=(5, 5), textcoords="offset points")
    if quad is not None:
        a, b, c, d = (names.index(w) for w in quad)
        for i, j in ((b, a), (c, d)):
            ax.annotate("", xy=xy[j], xytext=xy[i], arrowprops={"arrowstyle": "->", "color": "#d62728"})
        for i, j in ((b, c), (a, d)):
            ax.plot(*xy[[i, j]].T, color="#999", linestyle="--", linewidth=1)
        ax.set_xlabel(f"{quad[0]} - {quad[1]} + {quad[2]} ≈ {quad[3]}", color="#d62728")
    ax.set_title("word vectors, 2-D PCA")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    with atomic_open(out) as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
