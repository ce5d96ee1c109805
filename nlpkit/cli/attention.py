"""``nlpkit attention``: the attention weights of a decoder or a BERT encoder, as records or a picture."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import Device, Quiet


@app.command("attention", rich_help_panel="Pretrained LLMs")
def attention_cmd(
    model: Annotated[str, typer.Argument(help="A decoder or BERT encoder: a folder, .gguf or named model.")],
    text: Annotated[str, typer.Argument(help="The text to look at.")],
    token: Annotated[
        str | None, typer.Option("--token", help="Only what this token attends to.", show_default=False)
    ] = None,
    layer: Annotated[
        int | None, typer.Option("--layer", help="One layer (0-based; -1 the last).", show_default=False)
    ] = None,
    head: Annotated[
        int | None, typer.Option("--head", help="One head (0-based).", show_default=False)
    ] = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="'-': JSONL records; FILE.svg or FILE.png: a picture.")
    ] = "-",
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Attention weights: one JSONL record per (layer, head, from, to), or a picture.

    Records: {"layer", "head", "from", "to", "from_token", "to_token", "weight"}, row "from"
    attending over "to" (a decoder sees only earlier tokens). With -o FILE.svg (or .png, with the
    plot extra): for --token, a bar chart of what that token attends to in --layer (default the
    last), averaged over its heads, the strongest heads named; otherwise a heatmap of --layer and
    --head (default: the mean over heads).

    Example: nlpkit attention smollm2-135m-instruct "The animal didn't cross the street because
    it was too tired" --token it -o it.svg
    """
    from nlpkit.io.records import RecordWriter
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.llm import attention as A

    set_quiet(quiet)
    if output != "-" and not output.endswith((".svg", ".png")):
        raise typer.BadParameter("name the picture .svg or .png (or '-' for records)", param_hint="-o")
    weights, tokens = A.attention_weights(model, text, device)
    if output == "-":
        with RecordWriter() as out:
            out.write_all(A.records(weights, tokens, layer, head, token))
        return
    L = A._pick(layer if layer is not None else -1, weights.shape[0], "--layer")[0]
    if token is not None:
        row = A.token_rows(tokens, token)[-1]
        per_head = weights[L, :, row]  # (H, T)
        mean = per_head.mean(0)
        target = int(mean.argmax())
        strongest = sorted(range(per_head.shape[0]), key=lambda h: -per_head[h, target])[:3]
        note = (f"layer {L}, mean of {per_head.shape[0]} heads; strongest on '{tokens[target].strip()}': "
                + ", ".join(f"head {h} ({per_head[h, target]:.2f})" for h in strongest))  # fmt: skip
        title = f"what '{tokens[row].strip()}' attends to"
        picture = A.svg_bars(mean, tokens, title, note) if output.endswith(".svg") else None
        _write(output, picture, lambda p: A.png_bars(mean, tokens, title, note, p))
        say(f"wrote {output}: {note}")
        return
    H = A._pick(head, weights.shape[1], "--head") if head is not None else None
    grid = weights[L, H[0]] if H is not None else weights[L].mean(0)
    title = f"layer {L}, " + (f"head {H[0]}" if H is not None else f"mean of {weights.shape[1]} heads")
    picture = A.svg_heatmap(grid, tokens, title) if output.endswith(".svg") else None
    _write(output, picture, lambda p: A.png_heatmap(grid, tokens, title, p))
    say(f"wrote {output}: {title}")


def _write(output: str, svg: str | None, png: object) -> None:
    from nlpkit.io.files import write_bytes_atomic

    if svg is not None:
        write_bytes_atomic(output, svg.encode("utf-8"))
    else:
        png(output)  # type: ignore[operator]
