"""Loading what ``nlpkit serve`` serves, and running it under uvicorn with a clean shutdown.

    backend = load_backend("smollm2-135m-instruct", embed_model="minilm-l6-v2")
    run_server(backend, host="127.0.0.1", port=8000, ready_file="/run/nlpkit/ready")

Binding any address other than loopback needs an API key. SIGTERM stops accepting
connections, lets running generations finish for ``grace`` seconds, ends the rest cleanly
(their streams get a last chunk with finish_reason "length" and ``data: [DONE]``), and
returns normally, so the process exits 0. The ready file (``http://HOST:PORT`` and a newline)
appears once the model is loaded and the socket listens, and is removed on exit.
"""

from __future__ import annotations

import ipaddress
import signal
from pathlib import Path
from typing import Any

from nlpkit.errors import InputMissing, UsageError
from nlpkit.io.talk import say
from nlpkit.serve.app import Backend
from nlpkit.serve.engine import Engine
from nlpkit.serve.schemas import Limits


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(path: str | None, host: str) -> str | None:
    """The key in ``path`` (its first line); refuses a non-loopback ``host`` without one."""
    if path is None:
        if not is_loopback(host):
            raise UsageError(
                f"--host {host} is reachable from other machines: it needs --api-key-file",
                hint="put a long random key in a file readable only by the server (chmod 600)",
            )
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputMissing("no such API key file", where=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the API key file ({e})", where=path) from None
    key = text.splitlines()[0].strip() if text.strip() else ""
    if len(key) < 8:
        raise UsageError("the API key file holds no key of at least 8 characters", where=path)
    return key


def load_backend(
    model: str,
    embed_model: str | None = "minilm-l6-v2",
    device: str = "auto",
    dtype: str = "auto",
    max_batch: int = 8,
    max_queue: int = 64,
    limits: Limits | None = None,
    api_key: str | None = None,
    adapter: str | None = None,
) -> Backend:
    """Load the model (and the sentence encoder, unless ``embed_model`` is None) for serving;
    ``adapter``: a LoRA adapter folder merged into the weights (``lora train``, ``rlhf dpo|ppo``)."""
    from nlpkit.llm.generate import Generator
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate

    folder = resolve_model(model)
    gen = Generator.load(folder, device, dtype, adapter=adapter)
    template = ChatTemplate.from_folder(folder) if (folder / "config.json").is_file() else None
    encoder = embed_id = None
    if embed_model:
        from nlpkit.embed.encoder import load_encoder

        encoder = load_encoder(embed_model)
        embed_id = _name(embed_model)
    engine = Engine(gen, max_batch, max_queue)
    return Backend(_name(model), gen, template, engine, encoder, embed_id, limits or Limits(), api_key)


def _name(spec: str) -> str:
    """The id clients use: a named model's name, else the folder's (or file's) name."""
    return Path(spec.rstrip("/")).name or spec


def run_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace: float = 30.0,
    ready_file: str | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl-C (uvicorn, one process; the engine decodes on its thread)."""
    server = make_server(backend, host, port, grace, ready_file)
    backend.engine.start()
    try:
        server.run()
    finally:
        backend.engine.stop()
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)
    if server.interrupted:
        raise KeyboardInterrupt


def make_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace: float = 30.0,
    ready_file: str | None = None,
) -> Any:
    """A uvicorn server for ``backend`` (``.run()`` serves; ``.url`` once started). The
    caller starts ``backend.engine``."""
    from nlpkit.io.deps import require

    uvicorn = require("uvicorn", "nlpkit serve")
    from nlpkit.serve.app import build_app

    config = uvicorn.Config(
        build_app(backend),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # the Gate writes one JSON line per request instead
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=grace + 5,  # the engine ends streams at `grace`; a margin for the sockets
    )
    return _server_class(uvicorn)(config, backend, grace, ready_file)


def _server_class(uvicorn: Any) -> Any:
    class Server(uvicorn.Server):
        """uvicorn's server, plus: the ready file once listening, the engine drained on a
        signal, and SIGTERM not re-raised after the clean shutdown (so the exit code is 0)."""

        _captured_signals: list[int]  # uvicorn's: re-raised once the server has stopped

        def __init__(self, config: Any, backend: Backend, grace: float, ready_file: str | None):
            super().__init__(config)
            self.backend, self.grace, self.ready_file = backend, grace, ready_file
            self.interrupted = False
            self.url: str | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
            self.url = url
            say(f"serving {self.backend.model_id} on {url} (SIGTERM or Ctrl-C stops)")
            if self.ready_file:
                from nlpkit.io.files import write_bytes_atomic

                write_bytes_atomic(self.ready_file, f"{url}\n".encode())

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.backend.engine.drain(self.grace if not self.should_exit else 0.0)
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a supervisor's stop is a normal end: exit 0
                kept: list[int] = [s for s in self._captured_signals if s != sig]
                self._captured_signals = kept
            else:
                self.interrupted, self._captured_signals = True, []

    return Server
