"""Pretrained-model commands: chat, convert, export."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nlpkit.cli import app
from nlpkit.cli.options import (
    Device,
    DType,
    GenBatch,
    InputFormat,
    Inputs,
    MaxNewTokens,
    MaybeSeed,
    Output,
    Quiet,
    SampleTopK,
    Stop,
    Temperature,
    TopP,
)
from nlpkit.errors import UsageError

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
System = Annotated[
    str | None,
    typer.Option("--system", help="A system prompt (default: the model template's own).", show_default=False),
]


@app.command("chat")
def chat_cmd(
    model: Annotated[
        str,
        typer.Argument(help="A model folder, a .gguf file, or a named model.", envvar="NLPKIT_CHAT_MODEL"),
    ] = DEFAULT_CHAT_MODEL,
    system: System = None,
    inputs: Inputs = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.7,
    top_k: SampleTopK = 0,
    top_p: TopP = 0.9,
    stop: Stop = None,
    seed: MaybeSeed = None,
    batch_size: GenBatch = 1,
    device: Device = "auto",
    dtype: DType = "auto",
    input_format: InputFormat = "auto",
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    """Talk to an instruction-tuned model.

    On a terminal: an interactive conversation, the reply streaming as it is generated
    (/reset starts over, /exit or Ctrl-D leaves, Ctrl-C cuts a reply short). In a pipe: one
    conversation per JSONL line, {"messages": [{"role": "user", "content": "..."}]} (or a
    plain line: one user turn), written back as the same record plus "reply".

    Example: echo '{"messages":[{"role":"user","content":"Hi!"}]}' | nlpkit chat --temperature 0
    """
    import sys

    from nlpkit.chat import ChatModel, chat_records
    from nlpkit.formats import RecordWriter, read_records, set_quiet
    from nlpkit.generate import Sampling

    set_quiet(quiet)
    s = Sampling(max_new_tokens, temperature, top_k, top_p, list(stop or []), seed)
    interactive = not inputs and sys.stdin.isatty() and output == "-"
    bot = ChatModel.load(model, device, dtype)
    if interactive:
        _interactive(bot, s, system)
        return
    records = read_records(list(inputs or ["-"]), field="text", fmt=input_format, required=False)
    with RecordWriter(output, flush_every=1) as out:
        out.write_all(chat_records(bot, records, s, system, batch_size))


def _interactive(bot: Any, s: Any, system: str | None) -> None:
    import contextlib
    import sys

    from nlpkit.formats import say

    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401
    say("chatting; /reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops a reply")
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    turn = 0
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = list(start)
            say("conversation cleared")
            continue
        history.append({"role": "user", "content": line})
        history = _fit(bot, history, s.max_new_tokens)
        reply = []
        try:
            for piece in bot.stream(history, s.for_record(turn)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            say("(stopped)")
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
        turn += 1


def _fit(bot: Any, history: list[dict[str, str]], room: int) -> list[dict[str, str]]:
    """Drop the oldest turns (never the system prompt) until the prompt and ``room`` new
    tokens fit in the model's window."""
    from nlpkit.chat import encode_chat
    from nlpkit.formats import say

    window = bot.gen.cfg.block_size
    dropped = 0
    while len(history) > 1:
        if len(encode_chat(bot.gen.tok, bot.template, history)) + min(room, window // 2) < window:
            break
        first = 1 if history[0]["role"] == "system" else 0
        if first >= len(history) - 1:
            break
        del history[first]
        dropped += 1
    if dropped:
        say(f"dropped the {dropped} oldest messages to fit the model's {window}-token window")
    return history


def convert_gguf(source: str, output: str) -> None:
    """``nlpkit convert FILE.gguf -o DIR``: a GGUF model into an nlpkit model folder."""
    from pathlib import Path

    from nlpkit.convert import gguf_to_folder
    from nlpkit.formats import lock_for, say

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError("the output exists and is not an empty folder", where=output)
    with lock_for(out):
        cfg = gguf_to_folder(source, out)
    say(
        f"wrote {output}: llama, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
        f"vocab {cfg['vocab_size']}"
    )


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="A model folder, a .gguf file, or a named model.")],
    to: Annotated[str, typer.Option("--to", help="Target format: hf (Hugging Face transformers).")] = "hf",
    output: Annotated[
        str, typer.Argument(help="The folder to write (new or empty).", show_default=False)
    ] = "",
    quiet: Quiet = False,
) -> None:
    """Write a llama model as a folder Hugging Face transformers loads directly.

    config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
    template) and generation_config.json: LlamaForCausalLM.from_pretrained(DIR) and
    AutoTokenizer.from_pretrained(DIR) read it offline.

    Example: nlpkit export smollm2-135m-instruct --to hf smollm2-hf
    """
    from nlpkit.convert import export_hf
    from nlpkit.formats import say, set_quiet

    set_quiet(quiet)
    if to != "hf":
        raise UsageError(f"unknown --to {to!r}", hint="the one target so far is hf")
    if not output:
        raise UsageError("give the folder to write", hint="nlpkit export MODEL --to hf DIR")
    dest = export_hf(model, output)
    say(f"wrote {dest} (transformers: LlamaForCausalLM.from_pretrained({str(dest)!r}))")
