"""Language-model commands: train-lstm, train-transformer, generate, eval, plot."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import (
    Adapter,
    Device,
    Field,
    InputFormat,
    Inputs,
    MaybeSeed,
    Quiet,
    TokenizerSpec,
    Wait,
)
from nlpkit.errors import UsageError

Paths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Text files or folders (default: -i / stdin). Plain lines or JSONL records.", show_default=False
    ),
]
ModelOut = Annotated[str, typer.Option("-o", "--output", help="The model folder to write (or --resume).")]
ModelDir = Annotated[
    str, typer.Argument(help="A model folder written by nlpkit train-*.", show_default=False)
]
Preset = Annotated[
    str | None,
    typer.Option("--preset", help="tiny, small (default), medium or large; explicit flags override it."),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue the run in -o from its latest checkpoint (same input).")
]

# Model and training flags: None when not given (the preset decides).
NLayer = Annotated[int | None, typer.Option("--n-layer", min=1, help="Layers.", show_default=False)]
NEmbd = Annotated[
    int | None, typer.Option("--n-embd", min=1, help="Embedding (and hidden) size.", show_default=False)
]
NHead = Annotated[int | None, typer.Option("--n-head", min=1, help="Attention heads.", show_default=False)]
NKvHead = Annotated[
    int | None,
    typer.Option(
        "--n-kv-head", min=1, help="Key/value heads (fewer: grouped-query attention).", show_default=False
    ),
]
Ffn = Annotated[
    int | None,
    typer.Option(
        "--intermediate-size", min=1, help="Feed-forward width (default 8/3 n_embd).", show_default=False
    ),
]
BlockSize = Annotated[
    int | None, typer.Option("--block-size", min=1, help="Tokens per sequence.", show_default=False)
]
Dropout = Annotated[float | None, typer.Option("--dropout", help="Dropout probability.", show_default=False)]
Tie = Annotated[
    bool | None,
    typer.Option("--tie/--no-tie", help="Share the embedding and output matrices.", show_default=False),
]
BatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Sequences per micro-batch per process.", show_default=False),
]
GradAccum = Annotated[
    int | None,
    typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.", show_default=False),
]
Lr = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.", show_default=False)]
MinLr = Annotated[
    float | None, typer.Option("--min-lr", help="Final learning rate (default lr/10).", show_default=False)
]
Warmup = Annotated[
    int | None, typer.Option("--warmup-steps", min=0, help="Linear warmup steps.", show_default=False)
]
DecaySteps = Annotated[
    int | None,
    typer.Option(
        "--lr-decay-steps", min=1, help="Cosine length in steps (default --max-steps).", show_default=False
    ),
]
WeightDecay = Annotated[
    float | None, typer.Option("--weight-decay", help="AdamW weight decay.", show_default=False)
]
Beta2 = Annotated[float | None, typer.Option("--beta2", help="AdamW beta2.", show_default=False)]
GradClip = Annotated[
    float | None, typer.Option("--grad-clip", help="Gradient norm clip (0: off).", show_default=False)
]
MaxSteps = Annotated[
    int | None, typer.Option("--max-steps", min=1, help="Stop after N steps.", show_default=False)
]
MaxTime = Annotated[
    str | None,
    typer.Option(
        "--max-time",
        help="Stop after this much training: 90, 90s, 5m, 2h. The learning rate then follows the clock, "
        "so a resumed run is not bitwise the same as an unbroken one (with --max-steps it is).",
        show_default=False,
    ),
]
EvalInterval = Annotated[
    int | None, typer.Option("--eval-interval", min=1, help="Steps between evaluations.", show_default=False)
]
EvalIters = Annotated[
    int | None,
    typer.Option("--eval-iters", min=1, help="Validation batches per evaluation.", show_default=False),
]
LogInterval = Annotated[
    int | None,
    typer.Option("--log-interval", min=1, help="Steps between train.jsonl records.", show_default=False),
]
CkptInterval = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-interval", min=0, help="Steps between checkpoints (0: at the end).", show_default=False
    ),
]
ValFraction = Annotated[
    float | None,
    typer.Option("--val-fraction", help="Held-out share of the data (last part).", show_default=False),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, help="CPU threads for torch.", envvar="NLPKIT_THREADS", show_default=False
    ),
]


def _seconds(text: str | None) -> float | None:

    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise UsageError(
            f"--max-time {text!r} is not a duration", hint="use seconds, or 90s, 5m, 2h"
        ) from None


def _train(
    arch: str, paths: list[str] | None, inputs: list[str] | None, output: str, options: dict[str, Any]
) -> None:
    """Shared body of the train commands: explicit flags become overrides of the preset."""
    import json
    import os

    from nlpkit.io.talk import say, set_quiet
    from nlpkit.lm.train.loop import train

    set_quiet(options.pop("quiet"))
    common = {k: options.pop(k) for k in ("preset", "tokenizer", "resume", "field", "input_format", "wait")}
    common["tokenizer"] = common["tokenizer"] or None  # "": one token per character
    options["max_time"] = _seconds(options["max_time"])
    options["tie_embeddings"] = options.pop("tie", None)
    overrides = {k: v for k, v in options.items() if v is not None}
    summary = train(
        [*(paths or []), *(inputs or [])] or ["-"], output, arch=arch, preset=common["preset"],
        overrides=overrides, tokenizer=common["tokenizer"], resume=common["resume"], field=common["field"],
        fmt=common["input_format"], wait=common["wait"],
    )  # fmt: skip
    if os.environ.get("RANK", "0") != "0":  # under torchrun, only rank 0 reports
        return
    print(json.dumps(summary), flush=True)
    val = summary.get("val_loss")
    val_part = f"val_loss {val:.4f}, " if isinstance(val, float) and val == val else ""  # none: not evaluated
    say(f"{summary['step']} steps, {val_part}{summary.get('tokens_per_s')} tokens/s: {output}")


@app.command("train-transformer", rich_help_panel="Language models from scratch")
def train_transformer_cmd(
    paths: Paths = None,
    inputs: Inputs = None,
    output: ModelOut = "model",
    arch: Annotated[
        str,
        typer.Option("--arch", help="decoder (Llama family) or encoder-decoder (JSONL input/output pairs)."),
    ] = "decoder",
    preset: Preset = None,
    tokenizer: TokenizerSpec = "",
    n_layer: NLayer = None,
    n_embd: NEmbd = None,
    n_head: NHead = None,
    n_kv_head: NKvHead = None,
    intermediate_size: Ffn = None,
    block_size: BlockSize = None,
    dropout: Dropout = None,
    tie: Tie = None,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = None,
    lr: Lr = None,
    min_lr: MinLr = None,
    warmup_steps: Warmup = None,
    lr_decay_steps: DecaySteps = None,
    weight_decay: WeightDecay = None,
    beta2: Beta2 = None,
    grad_clip: GradClip = None,
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    eval_interval: EvalInterval = None,
    eval_iters: EvalIters = None,
    log_interval: LogInterval = None,
    checkpoint_interval: CkptInterval = None,
    val_fraction: ValFraction = None,
    seed: MaybeSeed = None,
    device: Device = "auto",
    threads: Threads = None,
    resume: Resume = False,
    field: Field = "text",
    input_format: InputFormat = "auto",
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Train a transformer language model from text (characters unless -t names a tokenizer).

    The decoder is Llama-shaped (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention):
    transformers' LlamaForCausalLM loads the folder. The encoder-decoder is the original
    Transformer, trained on JSONL {"input": ..., "output": ...} records. The folder gets
    config.json, tokenizer.json, model.safetensors, train.jsonl and checkpoints/. SIGTERM
    checkpoints and exits 143; --resume continues. Runs under torchrun for DDP. One JSON
    summary record goes to stdout.

    Example: nlpkit train-transformer plays/ -o shakespeare --preset small --max-time 5m
    """
    options = dict(locals())

    kinds = {"decoder": "llama", "llama": "llama", "encoder-decoder": "seq2seq", "seq2seq": "seq2seq"}
    if arch not in kinds:
        raise UsageError(f"unknown --arch {arch!r}", hint="use decoder or encoder-decoder")
    for k in ("paths", "inputs", "output", "arch"):
        options.pop(k)
    _train(kinds[arch], paths, inputs, output, options)


@app.command("train-lstm", rich_help_panel="Language models from scratch")
def train_lstm_cmd(
    paths: Paths = None,
    inputs: Inputs = None,
    output: ModelOut = "model",
    preset: Preset = None,
    tokenizer: TokenizerSpec = "",
    cell: Annotated[
        str | None,
        typer.Option(
            "--cell", help="The recurrent cell: lstm (default), gru, or rnn (plain tanh).", show_default=False
        ),
    ] = None,
    n_layer: NLayer = None,
    n_embd: NEmbd = None,
    block_size: BlockSize = None,
    dropout: Dropout = None,
    tie: Tie = None,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = None,
    lr: Lr = None,
    min_lr: MinLr = None,
    warmup_steps: Warmup = None,
    lr_decay_steps: DecaySteps = None,
    weight_decay: WeightDecay = None,
    beta2: Beta2 = None,
    grad_clip: GradClip = None,
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    eval_interval: EvalInterval = None,
    eval_iters: EvalIters = None,
    log_interval: LogInterval = None,
    checkpoint_interval: CkptInterval = None,
    val_fraction: ValFraction = None,
    seed: MaybeSeed = None,
    device: Device = "auto",
    threads: Threads = None,
    resume: Resume = False,
    field: Field = "text",
    input_format: InputFormat = "auto",
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Train an LSTM language model (embedding -> LSTM -> head) from text; --cell gru or rnn for a
    GRU or a plain RNN on the same loop (bench/bench_rnn.py compares them on long-range recall).

    Same data, checkpoints, SIGTERM/--resume, torchrun and output as train-transformer.

    Example: nlpkit train-lstm plays/ -o lstm --preset small --max-time 5m
    """
    options = dict(locals())
    for k in ("paths", "inputs", "output"):
        options.pop(k)
    _train("lstm", paths, inputs, output, options)


@app.command("eval", rich_help_panel="Language models from scratch")
def eval_cmd(
    model: ModelDir,
    paths: Paths = None,
    inputs: Inputs = None,
    field: Field = "text",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per batch.")] = 32,
    device: Device = "auto",
    adapter: Adapter = None,
    input_format: InputFormat = "auto",
    quiet: Quiet = False,
) -> None:
    """Loss and perplexity of a model on held-out text: one JSON record on stdout.

    The text is tokenized with the model's tokenizer, joined by newlines and cut into
    non-overlapping blocks of the model's length (pairs for an encoder-decoder); "loss" is
    the mean cross-entropy per predicted token, in nats.

    Example: nlpkit eval shakespeare held-out.txt | jq .perplexity
    """
    import json

    from nlpkit.io.talk import set_quiet
    from nlpkit.llm.onnx_decoder import is_onnx_folder
    from nlpkit.lm.train.evaluate import eval_model
    from nlpkit.store.resolve import resolve_model

    set_quiet(quiet)
    files = [*(paths or []), *(inputs or [])] or ["-"]
    if is_onnx_folder(resolve_model(model)):  # quantized: ONNX Runtime scores it
        if adapter:
            raise UsageError(
                "--adapter needs a PyTorch model folder, not a quantized (ONNX) one",
                hint="merge it first (`nlpkit lora merge`), then quantize the merged model",
            )
        from nlpkit.llm.onnx_decoder import eval_onnx_model

        print(json.dumps(eval_onnx_model(model, files, field=field, fmt=input_format, device=device)))
        return
    print(
        json.dumps(
            eval_model(
                model,
                files,
                field=field,
                fmt=input_format,
                batch_size=batch_size,
                device=device,
                adapter=adapter,
            )
        )
    )


@app.command("plot", rich_help_panel="Language models from scratch")
def plot_cmd(
    log: Annotated[
        str, typer.Argument(help="A train.jsonl (or a model folder holding one).", show_default=False)
    ] = "",
    output: Annotated[
        str, typer.Option("-o", "--output", help="The picture: .svg (built in) or .png (matplotlib).")
    ] = "curves.svg",
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "-m",
            "--metric",
            help="A logged number to draw (repeatable), e.g. reward, kl, accuracy, rewards/margins "
            "(default: loss and val_loss; reward and kl for a PPO run).",
            show_default=False,
        ),
    ] = None,
    vectors: Annotated[
        str | None,
        typer.Option(
            "--vectors",
            help="Draw word vectors instead (a named asset or a vectors file): --words projected to "
            "2-D by PCA, with king - man + woman ~ queen drawn when those words are there.",
            show_default=False,
        ),
    ] = None,
    words: Annotated[
        str | None,
        typer.Option("--words", help="With --vectors: comma-separated words.", show_default=False),
    ] = None,
) -> None:
    """Training and validation loss curves of a run as a picture (or any logged numbers), or
    with --vectors a 2-D picture of word vectors.

    Example: nlpkit plot shakespeare/train.jsonl -o curves.svg
    Example: nlpkit plot --vectors glove-6b-50d --words king,queen,man,woman,prince,princess -o analogy.svg
    """
    from pathlib import Path

    if vectors:
        from nlpkit.io.talk import say
        from nlpkit.vectors.picture import plot_vectors
        from nlpkit.vectors.wordvectors import load_vectors

        if log or metric:
            raise UsageError("--vectors draws word vectors: give no train.jsonl or --metric")
        drawn = plot_vectors(load_vectors(vectors), words.split(",") if words else None, output)
        say(f"wrote {output}: {len(drawn)} words")
        return
    if words:
        raise UsageError("--words needs --vectors")
    if not log:
        raise UsageError("give a train.jsonl (or a model folder), or --vectors")

    from nlpkit.lm.train.curves import plot_curves

    path = Path(log)
    plot_curves(str(path / "train.jsonl" if path.is_dir() else path), output, metric)
