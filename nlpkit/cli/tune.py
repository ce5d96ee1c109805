"""Fine-tuning commands: lora train and merge; rlhf sft, rm, score, dpo and ppo."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

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
from nlpkit.cli.options import SEED_MAX, Device, Inputs, MaybeSeed, ModelSpec, Output, Quiet, Wait
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
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    if not output:
        raise UsageError("give the adapter folder with -o", hint="e.g. -o my-adapter")
    files = [*(data or []), *(inputs or [])] or ["-"]
    summary = _fine_tune("sft", model, files, output, _lora(rank, alpha, targets, dropout), dict(locals()))
    _report(summary, output, ("val_loss",))


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


# --------------------------------------------------------------------------- rlhf

rlhf_app = typer.Typer(
    help="RLHF on one machine: supervised fine-tuning, a reward model, then PPO; or DPO.",
    no_args_is_help=True,
)
app.add_typer(rlhf_app, name="rlhf", rich_help_panel="Fine-tuning")

Pairs = Annotated[
    list[str] | None,
    typer.Argument(
        help='JSONL preference pairs (default: -i / stdin): {"prompt", "chosen", "rejected"}, '
        "as strings or lists of messages (TRL's shapes).",
        show_default=False,
    ),
]
Rank = Annotated[int, typer.Option("--rank", min=1, help="LoRA rank r.")]
Alpha = Annotated[float, typer.Option("--alpha", help="LoRA alpha (the update is scaled by alpha / r).")]
Targets = Annotated[
    str, typer.Option("--targets", help="Comma-separated modules (q_proj,...,down_proj) or all-linear.")
]
MaxLength = Annotated[
    int, typer.Option("--max-length", min=2, help="Tokens per sequence; longer responses are cut (counted).")
]
EvalData = Annotated[
    list[str] | None,
    typer.Option(
        "--eval-data",
        help="Validation JSONL (default: the last --val-fraction of the data).",
        show_default=False,
    ),
]
Epochs = Annotated[
    float | None,
    typer.Option("--epochs", min=0.0, help="Passes over the data (sets --max-steps).", show_default=False),
]
Out = Annotated[str, typer.Option("-o", "--output", help="The folder to write (or --resume).")]


def _fine_tune(
    task: str, model: str, files: list[str], output: str, lora: Any, a: dict[str, Any]
) -> dict[str, Any]:
    """The shared body of rlhf sft / rm / dpo: flags -> train_lora (the one training loop)."""
    from nlpkit.tune.lora import train_lora

    if not output:
        raise UsageError("give the output folder with -o")
    if a["epochs"] is not None and (a["max_steps"] is not None or a["max_time"] is not None):
        raise UsageError("give one of --epochs, --max-steps and --max-time")
    names = ("max_steps", "lr", "warmup_steps", "weight_decay", "grad_clip", "batch_size", "grad_accum",
             "eval_interval", "eval_iters", "log_interval", "checkpoint_interval", "val_fraction", "seed",
             "threads")  # fmt: skip
    options = {k: a[k] for k in names} | {
        "max_time": _seconds(a["max_time"]),
        "device": None if a["device"] == "auto" else a["device"],
    }
    overrides = {k: v for k, v in options.items() if v is not None}
    return train_lora(
        model, files, output, None if a["resume"] else lora, overrides=overrides, max_length=a["max_length"],
        epochs=a["epochs"], eval_paths=a["eval_data"] or (), resume=a["resume"], wait=a["wait"], task=task,
        beta=a.get("beta", 0.1), qlora=a.get("qlora", False),
    )  # fmt: skip


def _lora(rank: int, alpha: float, targets: str, dropout: float = 0.0) -> Any:
    from nlpkit.lm.lora import LoraConfig

    return LoraConfig(rank, alpha, dropout, tuple(t.strip() for t in targets.split(",") if t.strip()))


def _report(summary: dict[str, Any], output: str, keys: tuple[str, ...]) -> None:
    from nlpkit.io.talk import say

    if os.environ.get("RANK", "0") != "0":
        return
    print(json.dumps(summary), flush=True)
    shown = [f"{k} {summary[k]:.4f}" for k in keys if isinstance(summary.get(k), float)]
    speed = f"{summary.get('tokens_per_s')} tokens/s"
    say(", ".join([f"{summary['step']} steps", *shown, speed]) + f": {output}")


@rlhf_app.command("sft")
def sft_cmd(
    model: ModelSpec,
    data: Data = None,
    inputs: Inputs = None,
    output: Out = "",
    use_lora: Annotated[
        bool, typer.Option("--lora", help="Train a LoRA adapter, then merge it (default: every weight).")
    ] = False,
    rank: Rank = 16,
    alpha: Alpha = 32.0,
    targets: Targets = "all-linear",
    max_length: MaxLength = 512,
    eval_data: EvalData = None,
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    epochs: Epochs = None,
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
    """Supervised fine-tuning, RLHF's first step: -o receives a model folder (config.json,
    model.safetensors, the tokenizer) that rlhf rm, dpo and ppo start from.

    Instruction and messages records train on the assistant's tokens only; completion records
    ({"text"}) on every token (as lora train). Every weight trains by default (lr 5e-5);
    --lora trains an adapter (lr 2e-4) and merges it into the folder at the end.

    Example: nlpkit data show rotten-tomatoes --shape instruction --split train |
    nlpkit rlhf sft smollm2-135m-instruct -o sft --epochs 1
    """
    from nlpkit.io.talk import set_quiet
    from nlpkit.tune.lora import merge_into

    set_quiet(quiet)
    files = [*(data or []), *(inputs or [])] or ["-"]
    a = dict(locals())
    if not use_lora and lr is None and not resume:
        a["lr"] = 5e-5
    if not use_lora and weight_decay is None and not resume:
        a["weight_decay"] = 0.0
    summary = _fine_tune("sft", model, files, output, _lora(rank, alpha, targets) if use_lora else None, a)
    if "adapter" in summary and os.environ.get("RANK", "0") == "0":
        merge_into(model, output)
        summary = {"model": summary.pop("adapter"), **summary}
    _report(summary, output, ("val_loss",))


@rlhf_app.command("rm")
def rm_cmd(
    model: ModelSpec,
    pairs: Pairs = None,
    inputs: Inputs = None,
    output: Out = "",
    rank: Rank = 16,
    alpha: Alpha = 32.0,
    targets: Targets = "all-linear",
    max_length: MaxLength = 512,
    eval_data: EvalData = None,
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    epochs: Epochs = None,
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
    """Train a reward model: the SFT model with a linear head on the last token, LoRA on the
    body, the pairwise (Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected).

    -o receives a LlamaForSequenceClassification folder (adapters merged; transformers loads it
    and gives the same scores), train.jsonl (loss, accuracy, margin; val_ on --eval-data) and
    checkpoints/. Pairs whose responses are equal or empty, or whose prompt fills --max-length,
    are skipped and counted. Default lr 1e-4, batch 4 pairs.

    Example: nlpkit data show rotten-tomatoes --shape preference --split train |
    nlpkit rlhf rm sft -o rm --epochs 1
    """
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    files = [*(pairs or []), *(inputs or [])] or ["-"]
    a = dict(locals())
    if lr is None and not resume:
        a["lr"] = 1e-4
    summary = _fine_tune("rm", model, files, output, _lora(rank, alpha, targets), a)
    _report(summary, output, ("val_loss", "val_accuracy", "val_margin"))


@rlhf_app.command("dpo")
def dpo_cmd(
    model: ModelSpec,
    pairs: Pairs = None,
    inputs: Inputs = None,
    output: Out = "",
    beta: Annotated[
        float,
        typer.Option("--beta", help="How far from the reference the policy may move (smaller: further)."),
    ] = 0.1,
    rank: Rank = 16,
    alpha: Alpha = 32.0,
    targets: Targets = "all-linear",
    max_length: MaxLength = 512,
    eval_data: EvalData = None,
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    epochs: Epochs = None,
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
    """Direct Preference Optimization: a LoRA adapter of MODEL trained on preference pairs
    against MODEL itself (the adapters switched off) as the frozen reference.

    Logs TRL's names to train.jsonl: rewards/chosen, rewards/rejected, rewards/accuracies,
    rewards/margins, logps/chosen, logps/rejected (val_ on --eval-data); the first step's loss
    is ln 2. -o receives a PEFT adapter: nlpkit generate MODEL --adapter DIR. Default lr 5e-5.

    Example: nlpkit rlhf dpo sft pairs.jsonl -o dpo --epochs 1 --beta 0.1
    """
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    files = [*(pairs or []), *(inputs or [])] or ["-"]
    a = dict(locals())
    if lr is None and not resume:
        a["lr"] = 5e-5
    summary = _fine_tune("dpo", model, files, output, _lora(rank, alpha, targets), a)
    _report(summary, output, ("val_loss", "val_rewards/accuracies", "val_rewards/margins"))


@rlhf_app.command("ppo")
def ppo_cmd(
    model: ModelSpec,
    prompts: Annotated[
        list[str] | None,
        typer.Argument(
            help='JSONL prompts (default: -i / stdin): records with "prompt" (a string or messages); '
            "duplicates are skipped.",
            show_default=False,
        ),
    ] = None,
    reward: Annotated[str, typer.Option("--reward", help="The reward model folder (rlhf rm -o).")] = "",
    inputs: Inputs = None,
    output: Out = "",
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="PPO iterations (rollout, score, optimise).")
    ] = 100,
    rollout_batch: Annotated[
        int, typer.Option("--rollout-batch", min=1, help="Prompts sampled per step.")
    ] = 16,
    minibatch: Annotated[int, typer.Option("--minibatch", min=1, help="Sequences per gradient step.")] = 8,
    ppo_epochs: Annotated[
        int, typer.Option("--ppo-epochs", min=1, help="Passes over each rollout batch.")
    ] = 2,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Response length limit.")
    ] = 48,
    max_prompt_length: Annotated[
        int, typer.Option("--max-prompt-length", min=1, help="Longer prompts are skipped (counted).")
    ] = 256,
    lr: Annotated[
        float, typer.Option("--lr", help="AdamW learning rate of the adapter and value head.")
    ] = 6e-5,
    init_kl_coef: Annotated[
        float, typer.Option("--init-kl-coef", help="The KL penalty's weight (its start, with --target-kl).")
    ] = 0.15,
    target_kl: Annotated[
        float,
        typer.Option(
            "--target-kl",
            help="Nats per response token: the KL weight adapts toward it and an iteration stops "
            "updating once the policy's KL to SFT passes it (0: a fixed weight, no stop).",
        ),
    ] = 0.1,
    kl_horizon: Annotated[
        int,
        typer.Option("--kl-horizon", min=1, help="Samples over which the KL controller takes a full step."),
    ] = 500,
    cliprange: Annotated[float, typer.Option("--cliprange", help="PPO's ratio clip epsilon.")] = 0.2,
    vf_coef: Annotated[float, typer.Option("--vf-coef", help="Weight of the value loss.")] = 0.1,
    rank: Rank = 16,
    alpha: Alpha = 32.0,
    targets: Targets = "all-linear",
    checkpoint_interval: Annotated[
        int, typer.Option("--checkpoint-interval", min=0, help="Steps between checkpoints.")
    ] = 20,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Random seed.", envvar="NLPKIT_SEED")
    ] = 1337,
    threads: Threads = None,
    device: Device = "auto",
    resume: Resume = False,
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """PPO against a reward model: sample responses, score them, penalise each token's KL to
    the frozen SFT model (adapters off), GAE on a value head, the clipped surrogate.

    -o receives a PEFT adapter of MODEL (nlpkit generate MODEL --adapter DIR), the value head,
    train.jsonl (reward, kl per token, kl_coef, entropy, clipfrac, value_loss, response_length,
    rollout_s / score_s / optimize_s per step; nlpkit plot draws them) and checkpoints/.
    SIGTERM checkpoints and exits 143; --resume continues (--steps may grow).

    Example: nlpkit rlhf ppo sft --reward rm prompts.jsonl -o ppo --steps 100
    """
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.tune.ppo import PPOConfig, train_ppo

    set_quiet(quiet)
    if not output:
        raise UsageError("give the output folder with -o")
    if not reward:
        raise UsageError("give the reward model with --reward", hint="train one with `nlpkit rlhf rm`")
    cfg = PPOConfig(
        steps=steps, rollout_batch=rollout_batch, minibatch=minibatch, ppo_epochs=ppo_epochs,
        max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length, lr=lr, init_kl_coef=init_kl_coef,
        target_kl=target_kl or None, horizon=kl_horizon, cliprange=cliprange, vf_coef=vf_coef,
        checkpoint_interval=checkpoint_interval,
        seed=seed, device=device, threads=threads,
    )  # fmt: skip
    files = [*(prompts or []), *(inputs or [])] or ["-"]
    summary = train_ppo(
        model, reward, files, output, _lora(rank, alpha, targets), cfg, resume=resume, wait=wait
    )
    print(json.dumps(summary), flush=True)
    say(f"{summary['step']} PPO steps, reward {summary.get('reward', float('nan')):.3f}, "
        f"kl {summary.get('kl', float('nan')):.4f}/token: {output}")  # fmt: skip


@rlhf_app.command("score")
def score_cmd(
    model: Annotated[str, typer.Argument(help="The reward model folder (rlhf rm -o).")],
    inputs: Inputs = None,
    output: Output = "-",
    field: Annotated[
        str, typer.Option("--field", help="The response field (default: completion, response or output).")
    ] = "",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences scored at once.")] = 16,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Add "reward" to each record of a pipe: the reward model's score of its "prompt" (or
    "instruction", or messages) and response. Preference pairs get "reward_chosen" and
    "reward_rejected" instead.

    Example: nlpkit generate sft --chat -i prompts.jsonl --field prompt | nlpkit rlhf score rm
    """
    from nlpkit.cli.options import inputs_or_stdin
    from nlpkit.io.deps import import_torch, resolve_device
    from nlpkit.io.records import RecordWriter, read_records
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    import_torch()
    from nlpkit.tune.reward import Scorer, score_records

    scorer = Scorer.load(model, resolve_device(device))
    records = read_records(inputs_or_stdin(inputs), fmt="jsonl", required=False, string=False)
    with RecordWriter(output, flush_every=batch_size) as out:
        out.write_all(score_records(scorer, records, field, batch_size))
