"""The OpenAI-compatible server: ``nlpkit serve MODEL``."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import Adapter, Device, DType, ModelSpec, Quiet


@app.command("serve", rich_help_panel="Pretrained LLMs")
def serve_cmd(
    model: ModelSpec,
    embed_model: Annotated[
        str,
        typer.Option(
            "--embed-model",
            help="Sentence encoder behind /v1/embeddings (a named asset or a BERT folder); "
            "'none': no embeddings.",
            envvar="NLPKIT_EMBED_MODEL",
        ),
    ] = "minilm-l6-v2",
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind; anything but loopback needs --api-key-file.",
            envvar="NLPKIT_HOST",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).", envvar="NLPKIT_PORT"),
    ] = 8000,
    api_key_file: Annotated[
        str | None,
        typer.Option(
            "--api-key-file",
            help="File whose first line is the API key clients send as 'Authorization: Bearer KEY'.",
            envvar="NLPKIT_API_KEY_FILE",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Requests decoded together (continuous batching).")
    ] = 8,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=0, help="Requests waiting for a slot; beyond it: 429 at once.")
    ] = 64,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="The largest max_tokens a request may ask for.")
    ] = 2048,
    max_body: Annotated[
        int, typer.Option("--max-body", min=1024, help="Largest request body in bytes (413 beyond).")
    ] = 1 << 20,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", min=0.0, help="Seconds SIGTERM lets running replies finish before ending them."
        ),
    ] = 30.0,
    ready_file: Annotated[
        str | None,
        typer.Option(
            "--ready-file",
            help="Written (http://HOST:PORT) once the model is loaded and the port listens; removed on exit.",
            show_default=False,
        ),
    ] = None,
    device: Device = "auto",
    dtype: DType = "auto",
    adapter: Adapter = None,
    quiet: Quiet = False,
) -> None:
    """Serve a model over the OpenAI HTTP API: /v1/chat/completions, /v1/completions,
    /v1/embeddings, /v1/models and /health.

    Point the openai client, curl or LangChain at http://127.0.0.1:8000/v1. Requests that
    arrive while others are generating join the running batch between two decode steps (up
    to --max-batch); beyond --max-queue waiting requests the server answers 429. One JSON
    line per request goes to stderr. SIGTERM stops accepting, lets replies finish for
    --grace seconds, ends the rest cleanly and exits 0. Needs the serve extra.

    Example: nlpkit serve smollm2-135m-instruct --port 8000 --ready-file /tmp/nlpkit.ready
    """
    from nlpkit.io.deps import require
    from nlpkit.io.talk import set_quiet

    set_quiet(quiet)
    require("starlette", "nlpkit serve")
    require("uvicorn", "nlpkit serve")
    from nlpkit.serve.schemas import Limits
    from nlpkit.serve.server import load_backend, read_api_key, run_server

    key = read_api_key(api_key_file, host)
    limits = Limits(max_body=max_body, max_tokens=max_tokens)
    embed = None if embed_model.lower() in ("", "none") else embed_model
    backend = load_backend(model, embed, device, dtype, max_batch, max_queue, limits, key, adapter)
    run_server(backend, host, port, grace, ready_file)
