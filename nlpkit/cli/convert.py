"""``nlpkit convert`` (word vectors, GGUF models) and ``nlpkit export``."""

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
