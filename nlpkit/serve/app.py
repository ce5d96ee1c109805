"""The HTTP side: a Starlette app speaking the OpenAI API over a loaded model and the engine.

    POST /v1/chat/completions   messages -> a reply (``stream: true``: server-sent events)
    POST /v1/completions        prompt -> its continuation
    POST /v1/embeddings         input (a string or a list) -> sentence embeddings
    GET  /v1/models, /v1/models/{id}, /health

Every refusal is an OpenAI error object with a 4xx status; nothing returns a traceback. The
``Gate`` around the app checks the API key (constant time), bounds the body, and writes one
JSON line per request on stderr. Prompts are tokenized on the event loop with the server's
own copy of the tokenizer; the engine thread decodes with the Generator's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nlpkit.errors import NlpkitError
from nlpkit.llm.generate import TextStream
from nlpkit.serve.engine import Busy, Closed, Engine, Job
from nlpkit.serve.schemas import ApiError, GenRequest, Limits, embedding_request, gen_request
from nlpkit.text.chat_template import encode_chat

if TYPE_CHECKING:
    from nlpkit.embed.encoder import SentenceEncoder
    from nlpkit.llm.generate import Generator
    from nlpkit.text.chat_template import ChatTemplate


@dataclass
class Backend:
    """Everything the app serves: the model and its engine, the optional encoder, the rules."""

    model_id: str
    gen: Generator
    template: ChatTemplate | None  # None: the model has no chat template (completions only)
    engine: Engine
    encoder: SentenceEncoder | None = None
    embed_id: str | None = None
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        # encode_chat flips encode_special_tokens on the tokenizer it gets: a copy of our own,
        # so the engine thread decoding with gen.tok never sees it switched
        self.tok = Tokenizer.from_str(self.gen.tok.to_str())
        self.embed_lock = threading.Lock()


class _Finish:
    def __init__(self, reason: str):
        self.reason = reason


class Stream:
    """One request's sink: the engine thread pushes tokens, the event loop reads text pieces
    (and a final ``_Finish``) from ``queue``."""

    def __init__(self, gen: Generator, base_ids: list[int], stops: list[str]):
        self.text = TextStream(gen, base_ids, stops)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[str | _Finish] = asyncio.Queue()
        self.first_token_at: float | None = None

    def token(self, token: int) -> bool:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        piece = self.text.push(token)
        if piece:
            self._put(piece)
        return not self.text.stopped

    def end(self, reason: str) -> None:
        rest = self.text.finish() if reason in ("stop", "length") else ""
        if rest:
            self._put(rest)
        self._put(_Finish(reason))

    def _put(self, item: str | _Finish) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def build_app(backend: Backend) -> Any:
    """The ASGI app (the Gate around Starlette's router)."""
    routes = [
        Route("/v1/chat/completions", _handler(backend, _chat), methods=["POST"]),
        Route("/v1/completions", _handler(backend, _completions), methods=["POST"]),
        Route("/v1/embeddings", _handler(backend, _embeddings), methods=["POST"]),
        Route("/v1/models", _handler(backend, _models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", _handler(backend, _model), methods=["GET"]),
        Route("/health", _handler(backend, _health), methods=["GET"]),
    ]
    handlers: Any = {ApiError: _api_error, HTTPException: _http_error, Exception: _crash}
    return Gate(Starlette(routes=routes, exception_handlers=handlers), backend)


def _handler(backend: Backend, fn: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        return await fn(backend, request)

    return endpoint


# --------------------------------------------------------------------------- generation


async def _chat(b: Backend, request: Request) -> Response:
    req = gen_request(await _json(request), b.limits, chat=True)
    _check_model(b, req.model)
    if b.template is None:
        raise ApiError(400, f"{b.model_id} has no chat template: use /v1/completions", param="model")
    template, messages = b.template, req.prompt
    assert isinstance(messages, list)
    ids = _encoded(lambda: encode_chat(b.tok, template, messages))
    return await _generate(b, request, req, ids, [], "chat.completion")


async def _completions(b: Backend, request: Request) -> Response:
    req = gen_request(await _json(request), b.limits, chat=False)
    _check_model(b, req.model)
    assert isinstance(req.prompt, str)
    prompt = req.prompt
    base = _encoded(lambda: list(b.tok.encode(prompt, add_special_tokens=False).ids))
    base = base if b.gen.cfg.arch != "seq2seq" else []
    return await _generate(b, request, req, b.gen.fit_ids(list(base)), base, "text_completion")


def _encoded(encode: Any) -> list[int]:
    try:
        return list(encode())
    except NlpkitError as e:  # the chat template refused the conversation
        raise ApiError(400, str(e), param="messages") from None


async def _generate(
    b: Backend, request: Request, req: GenRequest, ids: list[int], base: list[int], kind: str
) -> Response:
    window = b.gen.cfg.block_size
    room = window - len(ids)
    if room < 1 or (req.max_tokens is not None and req.max_tokens > room):
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens and max_tokens {req.max_tokens or 1}; "
            f"the model's window is {window} tokens",
            param="messages" if kind == "chat.completion" else "prompt",
            code="context_length_exceeded",
        )
    req.sampling.max_new_tokens = min(req.sampling.max_new_tokens, room)
    stream = Stream(b.gen, base, req.sampling.stop)
    job = Job(ids, req.sampling, stream)
    try:
        b.engine.submit(job)
    except Busy as e:
        raise ApiError(429, f"the server is busy ({e}); retry later", "rate_limit_error") from None
    except Closed as e:
        raise ApiError(503, str(e), "server_error") from None
    info = request.scope["nlpkit"]
    info["prompt_tokens"] = len(ids)
    reply = Reply(b, job, stream, kind, info)
    if req.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        events = reply.events(req.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return await reply.whole()


class Reply:
    """The response to one generation request, whole or as server-sent events."""

    def __init__(self, b: Backend, job: Job, stream: Stream, kind: str, info: dict[str, Any]):
        self.b, self.job, self.stream, self.kind, self.info = b, job, stream, kind, info
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    async def whole(self) -> Response:
        pieces, reason = [], "error"
        try:
            while not isinstance(item := await self.stream.queue.get(), _Finish):
                pieces.append(item)
            reason = item.reason
        finally:
            self._done(reason)
        if reason == "error":
            raise ApiError(500, "generation failed; see the server's log", "server_error")
        text = "".join(pieces)
        if self.kind == "chat.completion":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"logprobs": None, "finish_reason": _reason(reason)}
        return _json_response({**self._head(self.kind), "choices": [choice], "usage": self._usage()})

    async def events(self, include_usage: bool) -> AsyncIterator[bytes]:
        reason = "cancelled"  # until the stream ends normally: a client that left
        chunk = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        try:
            if self.kind == "chat.completion":
                yield _event(self._chunk(chunk, {"role": "assistant", "content": ""}))
            while not isinstance(item := await self.stream.queue.get(), _Finish):
                yield _event(
                    self._chunk(chunk, {"content": item} if self.kind != "text_completion" else item)
                )
            reason = item.reason
            if reason == "error":
                yield _event(ApiError(500, "generation failed", "server_error").body())
            else:
                yield _event(self._chunk(chunk, {} if self.kind != "text_completion" else "", reason))
                if include_usage:
                    yield _event({**self._head(chunk), "choices": [], "usage": self._usage()})
            yield b"data: [DONE]\n\n"
        finally:
            self._done(reason)

    def _chunk(self, obj: str, delta: Any, reason: str | None = None) -> dict[str, Any]:
        body = {"delta": delta} if obj == "chat.completion.chunk" else {"text": delta}
        choice = {"index": 0, **body, "logprobs": None, "finish_reason": _reason(reason) if reason else None}
        return {**self._head(obj), "choices": [choice]}

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.b.model_id}

    def _usage(self) -> dict[str, int]:
        p, c = self.info["prompt_tokens"], self.job.generated
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _done(self, reason: str) -> None:
        if reason == "cancelled":  # the client left (or the handler was cancelled): free the slot
            self.b.engine.cancel(self.job)
        self.info["completion_tokens"] = self.job.generated
        self.info["finish"] = reason
        if self.stream.first_token_at is not None:
            self.info["ttft_ms"] = round((self.stream.first_token_at - self.job.queued_at) * 1000, 1)


def _reason(reason: str) -> str:
    """OpenAI's finish reasons: "stop" (the end token or a stop string) or "length" (max_tokens,
    the window, or a shutdown's grace period running out)."""
    return "stop" if reason == "stop" else "length"


def _event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


# --------------------------------------------------------------------------- the rest


async def _embeddings(b: Backend, request: Request) -> Response:
    model, texts, fmt = embedding_request(await _json(request), b.limits)
    if b.encoder is None or model != b.embed_id:
        known = f" (this server embeds with {b.embed_id})" if b.encoder is not None else ""
        raise ApiError(
            404, f"the model {model!r} does not exist{known}", param="model", code="model_not_found"
        )
    encoder = b.encoder

    def run() -> tuple[Any, int]:
        with b.embed_lock:  # one batch at a time: the encoder's tokenizer is not shared
            counts = sum(len(e.ids) for e in encoder.tokenizer.encode_batch(texts))
            return encoder.encode(texts), counts

    from starlette.concurrency import run_in_threadpool

    matrix, tokens = await run_in_threadpool(run)
    request.scope["nlpkit"]["prompt_tokens"] = tokens
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(row, fmt)} for i, row in enumerate(matrix)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json_response({"object": "list", "data": data, "model": model, "usage": usage})


def _vector(row: Any, fmt: str) -> Any:
    if fmt == "base64":  # what the openai client asks for: little-endian float32 bytes
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


async def _models(b: Backend, request: Request) -> Response:
    ids = [b.model_id] + ([b.embed_id] if b.embed_id else [])
    return _json_response({"object": "list", "data": [_model_card(b, i) for i in ids]})


async def _model(b: Backend, request: Request) -> Response:
    model_id = request.path_params["model_id"]
    if model_id not in (b.model_id, b.embed_id):
        raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return _json_response(_model_card(b, model_id))


def _model_card(b: Backend, model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": b.created, "owned_by": "nlpkit"}


async def _health(b: Backend, request: Request) -> Response:
    state = "draining" if b.engine.closing else "ok"
    body = {"status": state, "model": b.model_id, **b.engine.counts()}
    return _json_response(body, 503 if state == "draining" else 200)


def _check_model(b: Backend, model: str) -> None:
    if model != b.model_id:
        raise ApiError(
            404,
            f"the model {model!r} does not exist (this server runs {b.model_id})",
            param="model",
            code="model_not_found",
        )


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None


def _json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json_response(exc.body(), exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _json_response(ApiError(exc.status_code, str(exc.detail), kind).body(), exc.status_code)


async def _crash(request: Request, exc: Exception) -> Response:
    _log_crash(exc)
    return JSONResponse(ApiError(500, "internal error; see the server's log", "server_error").body(), 500)


def _log_crash(exc: BaseException) -> None:
    if os.environ.get("NLPKIT_DEBUG", "") not in ("", "0"):
        import traceback

        traceback.print_exception(exc)
    print(f"nlpkit: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the gate


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes", code="request_too_large")


class Gate:
    """ASGI middleware: API key, body bound, and one JSON log line per request on stderr."""

    def __init__(self, app: Any, backend: Backend):
        self.app, self.b = app, backend

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        info: dict[str, Any] = {"status": None, "prompt_tokens": 0, "completion_tokens": 0}
        scope["nlpkit"] = info

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                return await _send_json(sending, refusal)
            await self.app(scope, self._bounded(receive), sending)
        except Exception as e:
            if info["status"] is None:  # nothing sent yet: a clean error object
                await _send_json(sending, e if isinstance(e, ApiError) else ApiError(500, "internal error"))
            elif info["status"] != 500 and not isinstance(e, ApiError | OSError):
                _log_crash(e)  # mid-response (a 500 was logged by _crash already)
        finally:
            self._log(scope, info, start)

    def _refusal(self, scope: dict[str, Any]) -> ApiError | None:
        headers = dict(scope.get("headers") or [])
        if self.b.api_key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            # compare_digest takes the same time wherever the strings differ
            if not hmac.compare_digest(token, self.b.api_key.encode()):
                message = "a valid API key is required (Authorization: Bearer KEY)"
                return ApiError(401, message, code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            return ApiError(400, "Content-Length must be a number")
        if length is not None and int(length) > self.b.limits.max_body:
            return BodyTooLarge(self.b.limits.max_body)
        return None

    def _bounded(self, receive: Any) -> Any:
        seen = 0
        limit = self.b.limits.max_body

        async def receiving() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # a chunked body without Content-Length
                raise BodyTooLarge(limit)
            return message

        return receiving

    def _log(self, scope: dict[str, Any], info: dict[str, Any], start: float) -> None:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": scope["method"],
            "path": scope["path"],
            "status": info["status"],
            "prompt_tokens": info["prompt_tokens"],
            "completion_tokens": info["completion_tokens"],
            "latency_ms": round((time.monotonic() - start) * 1000, 1),
        }
        for key in ("ttft_ms", "finish"):
            if key in info:
                line[key] = info[key]
        try:
            sys.stderr.write(orjson.dumps(line).decode() + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr gone: serving matters more than the log
            pass


async def _send_json(send: Any, error: ApiError) -> None:
    body = orjson.dumps(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
