"""Pretrained-model commands: chat, convert, export."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import (
    Adapter,
    Device,
    DType,
    GenBatch,
    InputFormat,
    Inputs,
    MaxNewTokens,
    MaybeSeed,
    ModelSpec,
    Output,
    OutputFormat,
    Quiet,
    SampleTopK,
    Stop,
    Temperature,
    TopP,
    inputs_or_stdin,
    wants_text,
)
from nlpkit.errors import UsageError

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
System = Annotated[
    str | None,
    typer.Option("--system", help="A system prompt (default: the model template's own).", show_default=False),
]


@app.command("chat", rich_help_panel="Pretrained LLMs")
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
    adapter: Adapter = None,
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

    from nlpkit.io.records import RecordWriter, read_records
    from nlpkit.io.talk import set_quiet
    from nlpkit.llm.chat import ChatModel, chat_records
    from nlpkit.llm.generate import Sampling

    set_quiet(quiet)
    s = Sampling(max_new_tokens, temperature, top_k, top_p, list(stop or []), seed)
    interactive = not inputs and sys.stdin.isatty() and output == "-"
    bot = ChatModel.load(model, device, dtype, adapter)
    if interactive:
        _interactive(bot, s, system)
        return
    records = read_records(list(inputs or ["-"]), field="text", fmt=input_format, required=False)
    with RecordWriter(output, flush_every=1) as out:
        out.write_all(chat_records(bot, records, s, system, batch_size))


def _interactive(bot: Any, s: Any, system: str | None) -> None:
    import contextlib
    import sys

    from nlpkit.io.talk import say

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
    from nlpkit.io.talk import say
    from nlpkit.text.chat_template import encode_chat

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


@app.command("generate", rich_help_panel="Pretrained LLMs")
def generate_cmd(
    model: ModelSpec,
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="Prompts (default: records from -i / stdin).", show_default=False),
    ] = None,
    inputs: Inputs = None,
    max_new_tokens: MaxNewTokens = 200,
    temperature: Temperature = 0.8,
    top_k: SampleTopK = 0,
    top_p: TopP = 1.0,
    stop: Stop = None,
    seed: MaybeSeed = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Wrap each prompt in the model's chat template (one user turn).")
    ] = False,
    system: Annotated[
        str | None, typer.Option("--system", help="With --chat: a system prompt.", show_default=False)
    ] = None,
    batch_size: GenBatch = 1,
    field: Annotated[str | None, typer.Option("--field", help="Record field holding the prompt.")] = None,
    device: Device = "auto",
    dtype: DType = "auto",
    adapter: Adapter = None,
    input_format: InputFormat = "auto",
    fmt: OutputFormat = "auto",
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    """Complete prompts with a model: one you trained, a .gguf file, or a named model.

    On a terminal the text streams as it is sampled; in a pipe each prompt becomes a JSONL
    record: its input fields plus "completion" (generated --batch-size at a time). Prompt i
    is drawn with --seed + i, so a seed gives the same text on every run. The encoder-decoder
    reads the "input" field. --chat applies the model's chat template to each prompt.

    Example: nlpkit generate smollm2-135m-instruct --chat "Name three rivers." --temperature 0
    """
    import sys

    from nlpkit.io.records import RecordWriter, read_records
    from nlpkit.io.talk import set_quiet
    from nlpkit.llm.complete import Completer
    from nlpkit.llm.generate import Sampling

    set_quiet(quiet)
    s = Sampling(max_new_tokens, temperature, top_k, top_p, list(stop or []), seed)
    if system is not None and not chat:
        raise UsageError("--system needs --chat")
    completer = Completer.load(model, device, dtype, chat, system, adapter)
    field = field or completer.default_field
    if prompts:
        records: Any = ((f"<argument {i + 1}>", {field: p}) for i, p in enumerate(prompts))
    else:
        records = read_records(inputs_or_stdin(inputs), field=field, fmt=input_format)
    if output != "-" or not wants_text(fmt):
        with RecordWriter(output, flush_every=1) as out:
            out.write_all(completer.records(records, s, field, batch_size))
        return
    for i, (_, record) in enumerate(records):
        for piece in completer.stream(record[field], s.for_record(i)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()


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
