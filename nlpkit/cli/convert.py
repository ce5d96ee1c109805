"""Model files: ``nlpkit convert`` (word vectors, GGUF models), ``nlpkit export`` (for transformers)
and ``nlpkit quantize`` (int4/int8 ONNX Runtime folders with a quality receipt)."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import (
    Quiet,
)
from nlpkit.errors import UsageError


@app.command("export", rich_help_panel="Pretrained LLMs")
def export_cmd(
    model: Annotated[str, typer.Argument(help="A model folder, a .gguf file, or a named model.")],
    to: Annotated[str, typer.Option("--to", help="Target format: hf (Hugging Face transformers).")] = "hf",
    output: Annotated[
        str, typer.Argument(help="The folder to write (new or empty).", show_default=False)
    ] = "",
    quiet: Quiet = False,
) -> None:
    """Write a llama or qwen2 model as a folder Hugging Face transformers loads directly.

    config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
    template) and generation_config.json: AutoModelForCausalLM.from_pretrained(DIR)
    (LlamaForCausalLM or Qwen2ForCausalLM) and AutoTokenizer.from_pretrained(DIR) read it offline.

    Example: nlpkit export smollm2-135m-instruct --to hf smollm2-hf
    """
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.llm.export import export_hf

    set_quiet(quiet)
    if to != "hf":
        raise UsageError(f"unknown --to {to!r}", hint="the one target so far is hf")
    if not output:
        raise UsageError("give the folder to write", hint="nlpkit export MODEL --to hf DIR")
    dest = export_hf(model, output)
    import json

    arch = json.loads((dest / "config.json").read_text(encoding="utf-8")).get("architectures", ["?"])[0]
    say(f"wrote {dest} (transformers: {arch}.from_pretrained({str(dest)!r}))")


@app.command("convert", rich_help_panel="Word vectors")
def convert_cmd(
    source: Annotated[
        str,
        typer.Argument(help="Vectors (named asset, .safetensors, GloVe or word2vec file) or a .gguf model."),
    ],
    output: Annotated[
        str, typer.Option("-o", "--output", help="Output FILE (written atomically); a folder for a model.")
    ],
    to: Annotated[
        str, typer.Option("--to", help="auto (by extension), nlpkit, glove, word2vec, word2vec-bin.")
    ] = "auto",
    source_format: Annotated[
        str, typer.Option("--from", help="auto, nlpkit, glove, word2vec, word2vec-bin or gguf.")
    ] = "auto",
    quiet: Quiet = False,
) -> None:
    """Convert word vectors (nlpkit safetensors, GloVe text, word2vec text/binary), or a GGUF
    model into an nlpkit model folder.

    Vectors: every row is validated on the way in. A .gguf model (llama.cpp's format, llama
    architecture) becomes a folder of config.json, model.safetensors (float32, Hugging Face
    names), tokenizer.json and its chat template, which every model command accepts;
    quantized weights (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K...) are dequantized.

    Examples: nlpkit convert glove.txt -o glove.safetensors;
    nlpkit convert SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2
    """

    from nlpkit.io.talk import say, set_quiet
    from nlpkit.vectors.wordvectors import load_vectors, save_as

    set_quiet(quiet)
    from nlpkit.io.gguf import is_gguf

    gguf = is_gguf(source) or source.lower().endswith(".gguf")
    if source_format == "gguf" or (source_format == "auto" and gguf):
        from nlpkit.store.gguf_folder import convert_gguf

        if to not in ("auto", "nlpkit"):
            raise UsageError("a GGUF model converts to an nlpkit model folder only (--to auto)")
        cfg = convert_gguf(source, output)
        say(
            f"wrote {output}: llama, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
            f"vocab {cfg['vocab_size']}"
        )
        return
    wv = load_vectors(source, source_format)
    save_as(wv, output, to)
    say(f"wrote {len(wv)} vectors of {wv.dim} dims to {output}")


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
