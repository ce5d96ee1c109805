"""Option types shared by every command, defined once so a flag means the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

Inputs = Annotated[
    list[str] | None,
    typer.Option(
        "-i",
        "--input",
        help="Input FILE (repeatable); '-' is stdin, the default when stdin is not a terminal. "
        "Plain lines or JSONL records.",
        show_default=False,
    ),
]
Output = Annotated[
    str,
    typer.Option(
        "-o", "--output", help="Output FILE ('-' is stdout), written atomically.", envvar="NLPKIT_OUTPUT"
    ),
]
InputFormat = Annotated[
    str,
    typer.Option(
        "--input-format",
        help="auto: lines starting with '{' are JSON records; text: every line is text; jsonl.",
    ),
]
OutputFormat = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="auto (text on a terminal, JSONL otherwise), jsonl (records) or text (for people).",
    ),
]
Quiet = Annotated[
    bool, typer.Option("-q", "--quiet", help="Silence progress and summaries; errors still print.")
]
TopK = Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many results per query.")]
SEED_MAX = 2**63 - 1  # seeds are 0 .. 2**63 - 1 everywhere (numpy refuses negative ones)
Seed = Annotated[
    int,
    typer.Option(
        "--seed", min=0, max=SEED_MAX, help="Random seed (random, numpy, torch).", envvar="NLPKIT_SEED"
    ),
]
MaybeSeed = Annotated[
    int | None,
    typer.Option(
        "--seed", min=0, max=SEED_MAX, help="Random seed.", envvar="NLPKIT_SEED", show_default=False
    ),
]  # None: a different draw every run
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.", envvar="NLPKIT_DEVICE")]
Field = Annotated[str, typer.Option("--field", help="Record field holding the text.")]
Vectors = Annotated[
    str,
    typer.Option(
        "--vectors",
        help="Word vectors: a named asset (glove-6b-50d) or a .safetensors / GloVe / word2vec file.",
        envvar="NLPKIT_VECTORS",
    ),
]
Wait = Annotated[bool, typer.Option("--wait", help="Wait for another run's lock instead of exiting 75.")]
TokenizerSpec = Annotated[
    str,
    typer.Option(
        "-t",
        "--tokenizer",
        help="A tokenizer.json, a model folder (tokenizer.json or one .gguf), a .gguf file, "
        "or a named asset (minilm-l6-v2, smollm2-135m-instruct).",
        envvar="NLPKIT_TOKENIZER",
    ),
]

# Sampling, shared by generate, chat and rag-ask.
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", min=0, help="Tokens to add at most.")]
Temperature = Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy (deterministic).")]
SampleTopK = Annotated[
    int, typer.Option("--top-k", min=0, help="Sample among the k likeliest tokens (0: all).")
]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (1: off).")]
Stop = Annotated[
    list[str] | None, typer.Option("--stop", help="End the text before this string (repeatable).")
]
DType = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Weights while generating: auto (float16 for llama models of 256+ dims), float32, "
        "float16 or bfloat16. The prompt always runs in float32.",
    ),
]
Adapter = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        help="A LoRA adapter folder (from nlpkit lora train, or PEFT), merged into the model.",
        show_default=False,
    ),
]
ModelSpec = Annotated[
    str,
    typer.Argument(
        help="A model folder, a .gguf file, or a named model (smollm2-135m-instruct).", show_default=False
    ),
]

GenBatch = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        help="Records generated together (faster; a pipe then waits for that many lines, and "
        "sampled text may differ slightly from one at a time, as the arithmetic does).",
    ),
]


def inputs_or_stdin(inputs: list[str] | None) -> list[str]:
    """The input files, or stdin when none were given."""
    return list(inputs) if inputs else ["-"]


def wants_text(fmt: str) -> bool:
    """Resolve --format: text for people, or JSONL records (auto: text only on a terminal)."""
    import sys

    from nlpkit.errors import UsageError

    if fmt not in ("auto", "text", "jsonl"):
        raise UsageError(f"unknown --format {fmt!r}", hint="use auto, text or jsonl")
    return fmt == "text" or (fmt == "auto" and sys.stdout.isatty())
