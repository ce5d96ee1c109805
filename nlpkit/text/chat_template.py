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

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpkit.errors import DataError, UsageError

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


MAX_RENDER_CHARS = 1 << 20  # plus 4x the messages' own text
MAX_RENDER_SECONDS = 5


class _TooSlow(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` in the main thread (elsewhere: no limit, the output cap stays)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
        # a template is code from a file: bound its output and (in the main thread) its time
        limit = MAX_RENDER_CHARS + 4 * sum(len(m["content"]) for m in messages)
        parts: list[str] = []
        size = 0
        try:
            with _time_limit(MAX_RENDER_SECONDS):
                for piece in env.from_string(self.source).generate(
                    messages=list(messages),
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                ):
                    size += len(piece)
                    if size > limit:
                        raise DataError(f"the model's chat template renders more than {limit} characters")
                    parts.append(piece)
        except TemplateError as e:
            raise DataError(f"the model's chat template failed ({e})") from None
        except _TooSlow:
            raise DataError(f"the model's chat template ran past {MAX_RENDER_SECONDS} s (a loop?)") from None
        text = "".join(parts)
        if not text.strip():
            raise DataError(
                "the model's chat template renders an empty prompt", hint="check its chat_template"
            )
        return text


def encode_chat(
    tok: Any, template: ChatTemplate, messages: Sequence[Message], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of the rendered conversation, with message contents encoded as plain text.

    Each content is swapped for a unique marker before rendering; the rendered text is cut at
    the markers, the template's pieces are encoded with special tokens recognised, and the
    contents with special-token recognition switched off.
    """
    import secrets

    nonce = secrets.token_hex(8)
    marked = [{"role": m["role"], "content": f"\x00{nonce}:{i}\x00"} for i, m in enumerate(messages)]
    text = template.render(marked, add_generation_prompt)
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
