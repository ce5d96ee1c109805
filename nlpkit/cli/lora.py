"""Fine-tuning commands: lora train, lora merge."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.lm import (
    BatchSize,
    CkptInterval,
    EvalInterval,
    EvalIters,
    GradAccum,
    GradClip,
    LogInterval,
    Lr,
    MaxSteps,
    MaxTime,
    Resume,
    Threads,
    ValFraction,
    Warmup,
    WeightDecay,
    _seconds,
)
from nlpkit.cli.options import Device, Inputs, MaybeSeed, ModelSpec, Quiet, Wait
from nlpkit.errors import UsageError

lora_app = typer.Typer(
    help="LoRA and QLoRA fine-tuning: adapters in Hugging Face PEFT's layout.", no_args_is_help=True
)
app.add_typer(lora_app, name="lora", rich_help_panel="Fine-tuning")

Data = Annotated[
    list[str] | None,
    typer.Argument(
        help="JSONL files (default: -i / stdin): instruction, messages or completion (text) records.",
        show_default=False,
    ),
]


@lora_app.command("train")
def train_cmd(
    model: ModelSpec,
    data: Data = None,
    inputs: Inputs = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="The adapter folder to write (or --resume).")
    ] = "",
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank r.")] = 8,
    alpha: Annotated[
        float, typer.Option("--alpha", help="LoRA alpha (the update is scaled by alpha / r).")
    ] = 16.0,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout on the adapters' input.")] = 0.05,
    targets: Annotated[
        str,
        typer.Option(
            "--targets",
            help="Comma-separated modules (q_proj,k_proj,v_proj,o_proj,gate_proj,"
            "up_proj,down_proj) or all-linear.",
        ),
    ] = "q_proj,v_proj",
    qlora: Annotated[
        bool, typer.Option("--qlora", help="Hold the frozen base matrices as NF4 (QLoRA).")
    ] = False,
    max_length: Annotated[
        int, typer.Option("--max-length", min=2, help="Tokens per example; longer ones are cut (counted).")
    ] = 512,
    eval_data: Annotated[
        list[str] | None,
        typer.Option(
            "--eval-data",
            help="Validation JSONL (default: the last --val-fraction of DATA).",
            show_default=False,
        ),
    ] = None,
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            "--epochs", min=0.0, help="Passes over the data (sets --max-steps).", show_default=False
        ),
    ] = None,
    lr: Lr = None,
    warmup_steps: Warmup = None,
    weight_decay: WeightDecay = None,
    grad_clip: GradClip = None,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = None,
    eval_interval: EvalInterval = None,
    eval_iters: EvalIters = None,
    log_interval: LogInterval = None,
    checkpoint_interval: CkptInterval = None,
    val_fraction: ValFraction = None,
    seed: MaybeSeed = None,
    threads: Threads = None,
    device: Device = "auto",
    resume: Resume = False,
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a pretrained decoder with LoRA (or QLoRA): the base stays frozen, low-rank
    adapters train, and -o receives adapter_config.json + adapter_model.safetensors (PEFT's
    layout: peft.PeftModel.from_pretrained loads it), train.jsonl and checkpoints/.

    Instruction and messages records are rendered with the model's chat template and the loss
    covers the assistant's tokens only; completion records ({"text"}) train on every token.
    Examples longer than --max-length are cut (the log counts them). SIGTERM checkpoints and
    exits 143; --resume continues. Default: 1000 steps, lr 2e-4, batch 4.

    Example: nlpkit data show trivia --split train | nlpkit lora train smollm2-135m-instruct -o qa --epochs 1
    """
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.lm.lora import LoraConfig
    from nlpkit.tune.lora import train_lora

    set_quiet(quiet)
    if not output:
        raise UsageError("give the adapter folder with -o", hint="e.g. -o my-adapter")
    if epochs is not None and (max_steps is not None or max_time is not None):
        raise UsageError("give one of --epochs, --max-steps and --max-time")
    options = dict(
        max_steps=max_steps,
        max_time=_seconds(max_time),
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        batch_size=batch_size,
        grad_accum=grad_accum,
        eval_interval=eval_interval,
        eval_iters=eval_iters,
        log_interval=log_interval,
        checkpoint_interval=checkpoint_interval,
        val_fraction=val_fraction,
        seed=seed,
        threads=threads,
        device=None if device == "auto" else device,
    )
    overrides = {k: v for k, v in options.items() if v is not None}
    files = [*(data or []), *(inputs or [])] or ["-"]
    lora = (
        None
        if resume
        else LoraConfig(rank, alpha, dropout, tuple(t.strip() for t in targets.split(",") if t.strip()))
    )
    summary = train_lora(
        model,
        files,
        output,
        lora,
        overrides=overrides,
        max_length=max_length,
        epochs=epochs,
        eval_paths=eval_data or (),
        qlora=qlora,
        resume=resume,
        wait=wait,
    )
    if os.environ.get("RANK", "0") != "0":
        return
    print(json.dumps(summary), flush=True)
    say(
        f"{summary['step']} steps, val_loss {summary.get('val_loss', float('nan')):.4f}, "
        f"{summary.get('tokens_per_s')} tokens/s: {output}"
    )


@lora_app.command("merge")
def merge_cmd(
    model: ModelSpec,
    adapter: Annotated[str, typer.Argument(help="The adapter folder.", show_default=False)],
    output: Annotated[str, typer.Option("-o", "--output", help="The merged model folder to write.")] = "",
    quiet: Quiet = False,
) -> None:
    """Fold an adapter into its base model: a plain model folder that generate, chat, eval,
    quantize and export take like any other.

    Example: nlpkit lora merge smollm2-135m-instruct trivia-lora -o trivia-model
    """
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.tune.lora import merge_adapter

    set_quiet(quiet)
    if not output:
        raise UsageError("give the model folder to write with -o")
    summary = merge_adapter(model, adapter, output)
    print(json.dumps(summary), flush=True)
    say(f"merged {adapter} into {output}")
