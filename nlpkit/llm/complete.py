"""Completing prompts with a model, plainly or through its chat template: the library behind
``nlpkit generate`` (and the server's completions), so every front end shares one behaviour.

    c = Completer.load("smollm2-135m-instruct", chat=True)
    for record in c.records(records, Sampling(temperature=0), batch_size=1): ...
    for piece in c.stream("Name three rivers.", Sampling(temperature=0)): print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from nlpkit.errors import UsageError

if TYPE_CHECKING:
    from nlpkit.llm.chat import ChatModel
    from nlpkit.llm.generate import Generator, Sampling


class Completer:
    """A loaded model that completes prompts; with ``chat``, each prompt is one user turn (after
    ``system``, when given) rendered by the model's chat template."""

    def __init__(self, gen: Generator, bot: ChatModel | None = None, system: str | None = None):
        if system is not None and bot is None:
            raise UsageError("--system needs --chat")
        self.gen, self.bot, self.system = gen, bot, system

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        chat: bool = False,
        system: str | None = None,
        adapter: str | None = None,
    ) -> Completer:
        from nlpkit.llm.generate import Generator

        if system is not None and not chat:
            raise UsageError("--system needs --chat")
        if chat:
            from nlpkit.llm.chat import ChatModel

            bot = ChatModel.load(model, device, dtype, adapter)
            return cls(bot.gen, bot, system)
        return cls(Generator.load(model, device, dtype, adapter))

    @property
    def default_field(self) -> str:
        """The record field a prompt is read from: ``input`` for the encoder-decoder, else ``text``."""
        return "input" if self.gen.cfg.arch == "seq2seq" else "text"

    def records(
        self, records: Iterable[tuple[str, dict[str, Any]]], s: Sampling, field: str, batch_size: int = 1
    ) -> Iterator[dict[str, Any]]:
        """Each record with ``"completion"`` added (its other fields passed through), in order."""
        if self.bot is None:
            from nlpkit.llm.generate import generate_records

            yield from generate_records(self.gen, iter(records), s, field, batch_size)
            return
        from nlpkit.llm.chat import chat_records

        renamed = ((w, {**r, "text": r[field]}) for w, r in records)
        for r in chat_records(self.bot, renamed, s, self.system, batch_size):
            kept = {k: v for k, v in r.items() if k != "reply" and (k != "text" or field == "text")}
            yield kept | {"completion": r["reply"]}

    def stream(self, prompt: str, s: Sampling) -> Iterator[str]:
        """The text as it is sampled: a plain decoder echoes its prompt first (the text continues
        it); a chat reply and the encoder-decoder's output stand alone."""
        if self.bot is not None:
            turns = [{"role": "user", "content": prompt}]
            system = [{"role": "system", "content": self.system}] if self.system else []
            yield from self.bot.stream(system + turns, s)
            return
        if self.gen.cfg.arch != "seq2seq":
            yield prompt
        yield from self.gen.stream(prompt, s)
