"""Request bodies of the OpenAI API, checked by hand (types, ranges, sizes) into plain objects,
and the error object every refusal carries:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Unknown fields are ignored (clients send many); known ones are checked, and a value nlpkit
cannot honour (``n`` > 1, ``logprobs``, tools) is refused rather than silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nlpkit.llm.generate import Sampling

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A refusal with its HTTP status, shaped as OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask for; the server's flags set them."""

    max_body: int = 1 << 20  # bytes of a request body (413 beyond)
    max_messages: int = 256  # messages in one conversation
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request gives none
    max_inputs: int = 256  # texts in one embeddings request
    max_stop: int = 4  # stop strings (OpenAI's limit)


@dataclass
class GenRequest:
    """A chat or completions request, checked: the prompt and how to sample it."""

    model: str
    prompt: str | list[dict[str, str]]  # completions: text; chat: the messages
    sampling: Sampling
    max_tokens: int | None  # as asked (None: the server's default, bounded by the window)
    stream: bool
    include_usage: bool


def gen_request(body: Any, limits: Limits, chat: bool) -> GenRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _get(body, "model", str, required=True)
    prompt: str | list[dict[str, str]] = (
        _messages(body.get("messages"), limits) if chat else _prompt(body.get("prompt"))
    )
    if _get(body, "n", int, default=1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    for name in ("logprobs", "top_logprobs", "tools", "functions", "suffix"):
        if body.get(name) not in (None, False):
            raise ApiError(400, f"{name!r} is not supported", param=name)
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported", param="echo")
    max_tokens = _get(body, "max_completion_tokens", int) if chat else None
    max_tokens = max_tokens if max_tokens is not None else _get(body, "max_tokens", int)
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"max_tokens must be between 1 and {limits.max_tokens}", param="max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise ApiError(400, "top_p must be greater than 0", param="top_p")
    seed = _get(body, "seed", int)
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise ApiError(400, "seed must fit in 64 bits", param="seed")
    stream = _get(body, "stream", bool, default=False)
    options = _get(body, "stream_options", dict, default={})
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "stream_options.include_usage must be a boolean", param="stream_options")
    sampling = Sampling(
        max_new_tokens=max_tokens or limits.default_max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=_stop(body.get("stop"), limits),
        seed=seed,
    )
    return GenRequest(model, prompt, sampling, max_tokens, stream, include_usage)


def embedding_request(body: Any, limits: Limits) -> tuple[str, list[str], str]:
    """(model, texts, encoding format: "float" or "base64")."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _get(body, "model", str, required=True)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input must be a string or a non-empty list of strings", param="input")
    if len(texts) > limits.max_inputs:
        raise ApiError(400, f"at most {limits.max_inputs} inputs per request", param="input")
    fmt = _get(body, "encoding_format", str, default="float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    if body.get("dimensions") is not None:
        raise ApiError(400, "'dimensions' is not supported", param="dimensions")
    return model, texts, fmt


def _messages(messages: Any, limits: Limits) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"at most {limits.max_messages} messages per request", param="messages")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise ApiError(
                400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role"
            )
        out.append({"role": ROLES[role], "content": _content(m.get("content"), i)})
    return out


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ApiError(
        400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content"
    )


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
    return prompt


def _stop(stop: Any, limits: Limits) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"at most {limits.max_stop} stop strings", param="stop")
    return stops


def _get(body: dict[str, Any], name: str, kind: type, default: Any = None, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name!r} is required", param=name)
        return default
    # bool is an int in Python; JSON true is not a number
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, f"{name!r} must be of type {_JSON_NAMES.get(kind, kind.__name__)}", param=name)
    return value


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name!r} must be a number", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"{name!r} must be between {low:g} and {high:g}", param=name)
    return float(value)


_JSON_NAMES = {str: "string", int: "integer", bool: "boolean", dict: "object", list: "array"}
