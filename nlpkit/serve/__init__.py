"""The OpenAI-compatible HTTP server (``nlpkit serve``) over llm/ and embed/: the continuous
batching engine (``engine``), request checks and error objects (``schemas``), the Starlette
app with its gate (``app``), loading and running under uvicorn (``server``). Starlette and
uvicorn come with the ``serve`` extra and are imported by this room only.
"""
