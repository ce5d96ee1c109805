"""Chat as a library: a model with its chat template, answering conversations (the CLI and the
server both call it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from nlpkit.errors import DataError, UsageError
from nlpkit.llm.generate import Generator, Sampling, batches, cut_at_stop
from nlpkit.text.chat_template import ChatTemplate, Message, check_messages, encode_chat


class ChatModel:
    """A Generator plus its chat template: ``reply`` to a conversation, ``stream`` its text."""

    def __init__(self, gen: Generator, template: ChatTemplate):
        self.gen, self.template = gen, template

    @classmethod
    def load(
        cls,
        spec: str = "smollm2-135m-instruct",
        device: str = "auto",
        dtype: str = "auto",
        adapter: str | None = None,
    ) -> ChatModel:
        from nlpkit.store.resolve import resolve_model

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
        return cls(Generator.load(folder, device, dtype, adapter), template)

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
