"""Chat with an instruction-tuned model: the chat template, conversations, replies.

    chat = ChatModel.load("smollm2-135m-instruct")
    chat.reply([{"role": "user", "content": "What is the capital of France?"}], Sampling(temperature=0))
    # -> 'The capital of France is Paris.'

The template is the model's own (``chat_template`` in tokenizer_config.json, from the GGUF's
``tokenizer.chat_template``), a Jinja template rendered in Jinja's sandbox, as transformers
does: a model file cannot run code through it.

Message text is data. A message that contains ``<|im_end|>`` or any other special token's
spelling is encoded as ordinary text, never as the control token: the rendered prompt is
split at the messages' contents, and only the template's own text may produce special
tokens. So a user (or a retrieved document) cannot close its turn and open a system one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.errors import DataError, UsageError
from nlpkit.generate import Generator, Sampling, batches, cut_at_stop

ROLES = ("system", "user", "assistant")
Message = dict[str, str]


def check_messages(messages: Any, where: str = "messages") -> list[Message]:
    """Validate a conversation: a list of {"role", "content"} with known roles and string content."""
    if not isinstance(messages, list) or not messages:
        raise DataError('"messages" must be a non-empty list of {"role", "content"} objects', where=where)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise DataError(
                f"message {i} must be an object with a role ({', '.join(ROLES)}) and a string content",
                where=where,
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


@dataclass
class ChatTemplate:
    """A model's chat template, rendered safely; ``None`` source means the model has none."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTemplate | None:
        path = folder / "tokenizer_config.json"
        if not path.is_file():
            return None
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"tokenizer_config.json is not valid JSON ({e})", where=str(path)) from None
        source = cfg.get("chat_template")
        if isinstance(source, list):  # transformers' named templates: take "default"
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str):
            return None

        def token(key: str) -> str:
            value = cfg.get(key)
            return (
                value
                if isinstance(value, str)
                else (value or {}).get("content", "")
                if isinstance(value, dict)
                else ""
            )

        return cls(source, token("bos_token"), token("eos_token"))

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise UsageError(f"the chat template refused the conversation: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.source).render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as e:
            raise DataError(f"the model's chat template failed ({e})") from None


def encode_chat(tok: Any, template: ChatTemplate, messages: Sequence[Message]) -> list[int]:
    """Token ids of the rendered conversation, with message contents encoded as plain text.

    Each content is swapped for a unique marker before rendering; the rendered text is cut at
    the markers, the template's pieces are encoded with special tokens recognised, and the
    contents with special-token recognition switched off.
    """
    import secrets

    nonce = secrets.token_hex(8)
    marked = [{"role": m["role"], "content": f"\x00{nonce}:{i}\x00"} for i, m in enumerate(messages)]
    text = template.render(marked)
    ids: list[int] = []
    pieces = text.split("\x00")
    for j, piece in enumerate(pieces):
        if j % 2 == 1 and piece.startswith(f"{nonce}:"):
            content = messages[int(piece.split(":", 1)[1])]["content"]
            ids += _encode(tok, content, literal=True)
        elif piece:
            ids += _encode(tok, piece, literal=False)
    return ids


def _encode(tok: Any, text: str, literal: bool) -> list[int]:
    if not literal:
        return list(tok.encode(text, add_special_tokens=False).ids)
    before = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return list(tok.encode(text, add_special_tokens=False).ids)
    finally:
        tok.encode_special_tokens = before


class ChatModel:
    """A Generator plus its chat template: ``reply`` to a conversation, ``stream`` its text."""

    def __init__(self, gen: Generator, template: ChatTemplate):
        self.gen, self.template = gen, template

    @classmethod
    def load(
        cls, spec: str = "smollm2-135m-instruct", device: str = "auto", dtype: str = "auto"
    ) -> ChatModel:
        from nlpkit.convert import resolve_model

        folder = resolve_model(spec)
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"{spec} is not a language model", hint="chat needs a model such as smollm2-135m-instruct"
            )
        template = ChatTemplate.from_folder(folder)
        if template is None:
            raise UsageError(
                "the model has no chat template",
                where=str(folder),
                hint="complete plain text with `nlpkit generate MODEL` (without --chat)",
            )
        return cls(Generator.load(folder, device, dtype), template)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        ids = encode_chat(self.gen.tok, self.template, messages)
        window = self.gen.cfg.block_size
        if len(ids) >= window:
            raise UsageError(
                f"the conversation is {len(ids)} tokens, longer than the model's window of {window}",
                hint="shorten it or start a new one",
            )
        return ids

    def room(self, messages: Sequence[Message]) -> int:
        """Tokens left in the model's window after this conversation's prompt (negative: too long)."""
        return self.gen.cfg.block_size - len(encode_chat(self.gen.tok, self.template, messages))

    def stream(self, messages: Sequence[Message], s: Sampling) -> Iterator[str]:
        """The reply as text pieces, as they are generated."""
        return self.gen.pieces(self.gen.tokens_from_ids(self.prompt_ids(messages), s), [], s.stop)

    def reply(self, messages: Sequence[Message], s: Sampling) -> str:
        return "".join(self.stream(messages, s))

    def replies(self, rows: Sequence[list[int]], samplings: Sequence[Sampling]) -> list[str]:
        """Replies to several encoded conversations (``encode_chat``), generated as one batch."""
        outs = self.gen.batch(list(rows), list(samplings))
        return [cut_at_stop(self.gen.tok.decode(new), s.stop) for new, s in zip(outs, samplings, strict=True)]


def chat_records(
    chat: ChatModel,
    records: Iterator[tuple[str, dict[str, Any]]],
    s: Sampling,
    system: str | None = None,
    batch_size: int = 8,
) -> Iterator[dict[str, Any]]:
    """One reply per record: ``{"messages": [...]}`` (or a plain "text" line, one user turn) in,
    the same record plus "reply" out, in input order. Record i is drawn with seed + i."""

    def conversations() -> Iterator[tuple[dict[str, Any], list[int], Sampling]]:
        for i, (where, record) in enumerate(records):
            if "messages" in record:
                messages = check_messages(record["messages"], where)
            elif isinstance(record.get("text"), str):
                messages = [{"role": "user", "content": record["text"]}]
            else:
                raise DataError(
                    'a record needs "messages" (a conversation) or "text" (one user turn)', where=where
                )
            if system is not None and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system}, *messages]
            ids = encode_chat(chat.gen.tok, chat.template, messages)
            if len(ids) >= chat.gen.cfg.block_size:
                raise DataError(
                    f"the conversation does not fit the model's {chat.gen.cfg.block_size}-token window",
                    where=where,
                    hint="shorten it or drop its oldest turns",
                )
            yield record, ids, s.for_record(i)

    for group in batches(conversations(), batch_size):
        yield from _flush(chat, group)


Pending = list[tuple[dict[str, Any], list[int], Sampling]]  # (record, prompt ids, sampling)


def _flush(chat: ChatModel, pending: Pending) -> Iterator[dict[str, Any]]:
    replies = chat.replies([ids for _, ids, _ in pending], [s for _, _, s in pending])
    for (record, _, _), reply in zip(pending, replies, strict=True):
        yield record | {"reply": reply}
