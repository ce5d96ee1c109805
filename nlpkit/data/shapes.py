"""The standard record shapes for fine-tuning data: detecting one, checking a record against
it, and converting between them. These are the shapes TRL and most trainers read:

============== ============================================================ ===================
shape          fields                                                       e.g.
============== ============================================================ ===================
instruction    ``{"instruction", "input", "output"}``                       Alpaca (SFT)
conversations  ``{"messages": [{"role", "content"}, ...]}``                 OpenAI, TRL (SFT)
sharegpt       ``{"conversations": [{"from", "value"}, ...]}`` (read only)  ShareGPT, Vicuna
completion     ``{"text"}``                                                 pretraining text
labelled       ``{"text", "label"}``                                        classification
preference     ``{"prompt", "chosen", "rejected"}`` (strings)               TRL standard (DPO)
preference-chat the same three as lists of messages                         TRL conversational
prompt         ``{"prompt"}``                                               TRL prompt-only
============== ============================================================ ===================

Other fields pass through a conversion untouched (like jq), so ids and labels travel along.
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]

SHAPES = ("instruction", "conversations", "completion", "labelled", "preference", "preference-chat", "prompt")
INPUT_SHAPES = (*SHAPES, "sharegpt")
FIELDS = {
    "instruction": ("instruction", "input", "output"),
    "conversations": ("messages",),
    "sharegpt": ("conversations",),
    "completion": ("text",),
    "labelled": ("text", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "preference-chat": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
}
# ShareGPT's speakers (``from``) as chat roles; the exports use several names for the model
ROLE_OF = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}
ROLES = ("system", "user", "assistant")


class ShapeError(ValueError):
    """A record that does not fit its shape, or cannot be converted to the one asked for."""


def detect(record: Record) -> str | None:
    """The shape a record is written in, by its fields (None: no known shape).

    ``detect({"instruction": "Hi", "output": "Hello"}) -> "instruction"``
    """
    if "messages" in record:
        return "conversations"
    if "conversations" in record:
        return "sharegpt"
    if "chosen" in record or "rejected" in record:
        return "preference-chat" if isinstance(record.get("chosen"), list) else "preference"
    if "instruction" in record or "output" in record:
        return "instruction"
    if "prompt" in record:
        return "prompt"
    if "label" in record:
        return "labelled"
    if "text" in record:
        return "completion"
    return None


# --------------------------------------------------------------------------- checking


def problems(record: Record, shape: str) -> list[str]:
    """What is wrong with ``record`` as a ``shape`` record (empty: nothing)."""
    if shape == "instruction":
        out = [*_text(record, "instruction"), *_text(record, "output")]
        if "input" in record and not isinstance(record["input"], str):
            out.append("field 'input' must be a string")
        return out
    if shape == "conversations":
        return _chat(record, "messages", "role", "content", training=True)
    if shape == "sharegpt":
        return _chat(record, "conversations", "from", "value", training=True)
    if shape in ("completion", "prompt"):
        return _text(record, FIELDS[shape][0])
    if shape == "labelled":
        out = _text(record, "text")
        if record.get("label") is None or isinstance(record.get("label"), (dict, list)):
            out.append("field 'label' must be a string or a number")
        return out
    if shape == "preference":
        out = [p for f in FIELDS[shape] for p in _text(record, f)]
        if not out and record["chosen"] == record["rejected"]:
            out.append("'chosen' and 'rejected' are the same text")
        return out
    if shape == "preference-chat":
        out = _chat(record, "prompt", "role", "content", training=False)
        for f in ("chosen", "rejected"):
            out += _chat(record, f, "role", "content", training=False, whole=False)
        if not out and record["chosen"] == record["rejected"]:
            out.append("'chosen' and 'rejected' are the same messages")
        return out
    raise ShapeError(f"unknown shape {shape!r}")


def _text(record: Record, field: str) -> list[str]:
    if field not in record:
        return [f"missing field {field!r}"]
    value = record[field]
    if not isinstance(value, str):
        return [f"field {field!r} must be a string, not {json_type(value)}"]
    return [] if value.strip() else [f"field {field!r} is empty"]


def json_type(value: Any) -> str:
    """``an object``, ``an array``, ``a string``, ``a number``, ``a boolean`` or ``null``."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _chat(
    record: Record, field: str, role_key: str, text_key: str, *, training: bool, whole: bool = True
) -> list[str]:
    """Problems of a list of turns; ``whole``: it must also be a conversation a chat template
    accepts (an optional system turn, then user/assistant alternating from user; ``training``:
    ending with the assistant, whose turn is what the model learns)."""
    if field not in record:
        return [f"missing field {field!r}"]
    turns = record[field]
    if not isinstance(turns, list):
        return [f"field {field!r} must be an array, not {json_type(turns)}"]
    if not turns:
        return [f"field {field!r} is empty"]
    out, roles = [], []
    names = ROLE_OF if role_key == "from" else {r: r for r in ROLES}
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            out.append(f"{field}[{i}] must be an object, not {json_type(turn)}")
            continue
        speaker, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(speaker, str) or speaker not in names:
            speaker = None
            out.append(f"{field}[{i}].{role_key} {turn.get(role_key)!r} is not one of {', '.join(names)}")
        if not isinstance(text, str):
            what = "missing" if text_key not in turn else f"{json_type(text)}, not a string"
            out.append(f"{field}[{i}].{text_key} is {what}")
        elif not text.strip():
            out.append(f"{field}[{i}].{text_key} is empty")
        roles.append(names[speaker] if speaker else "?")
    if not out and whole:
        out += _role_order(roles, training)
    return out


def _role_order(roles: list[str], training: bool) -> list[str]:
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if turns != expected:
        return [
            f"roles {_sequence(roles)}: no chat template accepts them (an optional system turn, "
            "then user and assistant alternating, starting with user)"
        ]
    if training and (not turns or turns[-1] != "assistant"):
        return ["the conversation does not end with an assistant turn: nothing to learn from"]
    return []


def _sequence(roles: list[str], shown: int = 6) -> str:
    """``user → user → assistant``; a long one cut after ``shown`` roles, with its length."""
    if len(roles) <= shown:
        return " → ".join(roles)
    return " → ".join(roles[:shown]) + f" → … ({len(roles)} turns)"


# --------------------------------------------------------------------------- converting


def convert(record: Record, src: str, dst: str) -> Record:
    """``record`` (a valid ``src`` record) rewritten as a ``dst`` record; other fields pass
    through. Raises ``ShapeError`` when the shapes hold different things (a multi-turn chat
    is not one instruction; a labelled text has no roles).

    ``convert({"instruction": "Hi", "output": "Hello"}, "instruction", "conversations")
    -> {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}``
    """
    if src == dst:
        return dict(record)
    new = _convert(record, src, dst)
    return {**new, **{k: v for k, v in record.items() if k not in FIELDS[src] and k not in new}}


def _convert(record: Record, src: str, dst: str) -> Record:
    """Only the ``dst`` shape's own fields of the converted record."""
    if dst == "completion":
        return {"text": _as_text(record, src)}
    if dst in ("preference", "preference-chat", "labelled"):
        pairs = {("preference", "preference-chat"), ("preference-chat", "preference")}
        if (src, dst) not in pairs:
            raise ShapeError(f"a {src} record has no {_what(dst)}")
        return {**_preference(record, dst)}
    messages = to_messages(record, src)
    if dst == "conversations":
        return {"messages": messages}
    roles = [m["role"] for m in messages]
    if dst == "instruction":
        if roles != ["user", "assistant"]:
            raise ShapeError(f"roles {_sequence(roles)} are not one user turn and one reply")
        return {"instruction": messages[0]["content"], "input": "", "output": messages[1]["content"]}
    if dst == "prompt":
        if roles[:1] != ["user"] or roles.count("user") != 1:
            raise ShapeError(f"roles {_sequence(roles)} are not one user turn")
        return {"prompt": messages[0]["content"]}
    raise ShapeError(f"unknown shape {dst!r}")


def _what(shape: str) -> str:
    return "chosen and rejected replies" if shape.startswith("preference") else "label"


def to_messages(record: Record, src: str) -> list[dict[str, str]]:
    """The record as chat messages ``[{"role", "content"}, ...]``."""
    if src == "conversations":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if src == "sharegpt":
        return [{"role": ROLE_OF[t["from"]], "content": t["value"]} for t in record["conversations"]]
    if src == "instruction":
        return [_user(_instruction_text(record)), {"role": "assistant", "content": record["output"]}]
    if src == "preference":
        return [_user(record["prompt"]), {"role": "assistant", "content": record["chosen"]}]
    if src == "preference-chat":
        return [*record["prompt"], *record["chosen"]]
    if src == "prompt":
        return [_user(record["prompt"])]
    raise ShapeError(f"a {src} record has no chat roles")


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _instruction_text(record: Record) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]


def _as_text(record: Record, src: str) -> str:
    """The record's words as one text: turns joined by blank lines (training on raw text)."""
    if src in ("completion", "labelled"):
        return str(record["text"])
    if src == "preference":
        return f"{record['prompt']}\n\n{record['chosen']}"
    return "\n\n".join(m["content"] for m in to_messages(record, src))


def _preference(record: Record, dst: str) -> Record:
    if dst == "preference-chat":
        return {
            "prompt": [_user(record["prompt"])],
            "chosen": [{"role": "assistant", "content": record["chosen"]}],
            "rejected": [{"role": "assistant", "content": record["rejected"]}],
        }
    prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    if [m["role"] for m in prompt] != ["user"] or len(chosen) != 1 or len(rejected) != 1:
        raise ShapeError("a multi-turn preference record has no plain-text form (keep preference-chat)")
    return {
        "prompt": prompt[0]["content"],
        "chosen": chosen[0]["content"],
        "rejected": rejected[0]["content"],
    }
