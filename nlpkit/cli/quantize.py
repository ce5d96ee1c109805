"""``nlpkit quantize``: int4/int8 weights in an ONNX Runtime model folder, with a quality receipt."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import Quiet


@app.command("quantize", rich_help_panel="Pretrained LLMs")
def quantize_cmd(
    model: Annotated[str, typer.Argument(help="A decoder: a model folder, a .gguf file or a named model.")],
    output: Annotated[str, typer.Option("-o", "--output", help="The folder to write (new or empty).")],
    bits: Annotated[
        int, typer.Option("--bits", help="Weight bits: 4 (int4) or 8 (int8), block-wise, symmetric.")
    ] = 4,
    group_size: Annotated[int, typer.Option("--group-size", help="Weights per scale (32, 64 or 128).")] = 32,
    eval_text: Annotated[
        str | None,
        typer.Option(
            "--eval-text",
            help="Held-out text for the receipt's perplexity (default: Python standard-library docstrings).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Where the receipt runs the models: cpu, cuda or auto.")
    ] = "cpu",
    no_receipt_checks: Annotated[
        bool, typer.Option("--no-checks", help="Skip the receipt's measurements (sizes and hashes only).")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Quantize a decoder to int4 or int8 weights, served by ONNX Runtime.

    A sentence encoder (minilm-l6-v2 or a BERT folder) takes --bits 8: OUT then serves embed -m
    and rag-index -m, and its receipt gives the cosine to the float model and recall@5.

    OUT holds model.onnx (the decoder with its KV cache; MatMulNBits weights, int8 activations),
    config.json, the tokenizer, chat template and generation config, and quantization.json: the
    receipt (sizes, perplexity before and after, greedy agreement with the float model,
    prefill/decode tokens/s, any operator left in float), also printed on stderr. Every model
    command (generate, chat, eval, rag-ask --llm) takes OUT like any model folder.

    Example: nlpkit quantize smollm2-135m-instruct -o q4 && nlpkit generate q4 --chat "Hi!"
    """
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.quantize.quantize import quantize_model

    set_quiet(quiet)
    r = quantize_model(
        model, output, bits, group_size, eval_text, device, receipt_checks=not no_receipt_checks
    )
    say(f"wrote {output}: {r['bytes_before'] / 1e6:.1f} MB -> {r['bytes_after'] / 1e6:.1f} MB")
    if "cosine_mean" in r:  # a sentence encoder
        rec = r["recall_at_5"]
        say(
            f"cosine to the float encoder {r['cosine_mean']:.4f} (worst {r['cosine_min']:.4f}); "
            f"recall@5 {rec['before']} -> {rec['after']} ({r['eval_text']})"
        )
        say(r["verdict"])
    elif "verdict" in r:
        before, after = r["speed"]["before"], r["speed"]["after"]
        say(
            f"perplexity {r['perplexity_before']:.3f} -> {r['perplexity_after']:.3f} ({r['eval_text']}); "
            f"greedy agreement {r['token_agreement']:.1%}; decode {before['decode_tok_s']} -> "
            f"{after['decode_tok_s']} tok/s; prefill {before['prefill_tok_s']} -> "
            f"{after['prefill_tok_s']} tok/s"
        )
        say(r["verdict"])
    if r["float_fallback_ops"]:
        say(f"left in float: {', '.join(r['float_fallback_ops'])}")
