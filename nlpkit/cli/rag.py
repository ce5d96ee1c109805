"""Retrieval-augmented answers: rag-index builds or updates an index, rag-ask queries it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import Adapter, Device, InputFormat, OutputFormat, Quiet, TopK, Wait

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "-m",
        "--model",
        help="Sentence encoder: a named asset, a BERT model folder, or hash[:DIM] (no model). "
        "Default minilm-l6-v2 for a new index; an existing index keeps its own.",
        show_default=False,
    ),
]


@app.command("rag-index", rich_help_panel="Retrieval (RAG)")
def rag_index_cmd(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files, folders or glob patterns (text, .md, .rst, .html); '-' reads JSONL records "
            '({"text", "path" or "id", "format"}) from stdin. With --merge: shard indexes.',
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="The INDEX folder (created if missing).")
    ] = "",
    model: ModelOpt = None,
    chunk_size: Annotated[
        int | None, typer.Option("--chunk-size", help="Most characters per chunk (default 1000).")
    ] = None,
    overlap: Annotated[
        int | None, typer.Option("--overlap", help="Characters shared by consecutive chunks (default 150).")
    ] = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync",
            help="Remove the documents SOURCES cover that this run did not index (deleted or no longer "
            "indexable): inside a folder source, a file source's own, those a pattern matches, the records "
            "for '-'. Documents of other sources are kept; a folder or pattern with no documents is refused.",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="Index only shard I of N (I/N, 1-based, by a hash of each path)."),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="SOURCES are shard indexes: make INDEX their union (no embedding)."),
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Start INDEX afresh (needed to change -m or chunking).")
    ] = False,
    ann: Annotated[
        str | None,
        typer.Option(
            "--ann",
            help="Dense search: exact (the default: one pass over the vectors) or hnsw (a FAISS graph, "
            "for millions of chunks; pip install 'nlpkit[faiss]'). Kept until changed.",
            show_default=False,
        ),
    ] = None,
    max_file_bytes: Annotated[
        int, typer.Option("--max-file-bytes", min=1, help="Skip larger files (with a warning).")
    ] = 20 << 20,
    input_format: InputFormat = "jsonl",
    device: Device = "cpu",
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Build or update a retrieval index (SQLite FTS5 for BM25 + a memory-mapped vector file).

    A file is identified by its resolved absolute path (docs, ./docs and /abs/docs are one
    folder; a link named on the command line is its target); citations show it relative to
    the current folder when it lies under it. A record is identified by its path or id.

    Incremental: unchanged files (same SHA-256) are skipped, changed ones re-embedded, and with
    --sync vanished ones under SOURCES removed; the summary on stderr counts each. One run at a
    time per INDEX (another exits 75 unless --wait); a killed run leaves a usable index.

    Example: nlpkit rag-index docs/ -o docs.idx && nlpkit rag-ask docs.idx "How do I ...?"
    """
    from nlpkit.errors import UsageError
    from nlpkit.io.talk import Progress, say, set_quiet

    set_quiet(quiet)
    if not output:
        raise UsageError("missing -o INDEX", hint="name the index folder to build or update")
    if ann is not None:  # checked before anything is embedded or written
        from nlpkit.rag.ann import check_kind

        check_kind(ann)
    if merge:
        ignored = [flag for flag, v in (("-m", model), ("--chunk-size", chunk_size), ("--overlap", overlap),
                   ("--shard", shard), ("--rebuild", rebuild or None)) if v is not None]  # fmt: skip
        if ignored:
            raise UsageError(
                f"--merge does not take {', '.join(ignored)}",
                hint="the merged index takes the shards' encoder and chunking; build the shards with them",
            )
        _merge(sources, output, wait, ann)
        return
    from nlpkit.rag import index as rag
    from nlpkit.rag import indexing

    settings = {"encoder": model, "chunk_size": chunk_size, "overlap": overlap}
    shard_of = indexing.parse_shard(shard)  # a bad flag fails before anything is touched
    docs, total, skipped = _documents(sources, input_format, max_file_bytes, sync)
    scope = indexing.SyncScope.of(sources or ["-"]) if sync else None
    with (
        rag.open_writer(output, settings, wait=wait, rebuild=rebuild, device=device, ann=ann) as writer,
        Progress("indexing", total=total, unit=" files") as progress,
    ):
        summary = indexing.update(
            writer,
            docs,
            sync=scope,
            shard=shard_of,
            warn=say,
            max_bytes=max_file_bytes,
            progress=progress.advance,
        )
    summary.skipped += skipped
    say(summary.line(output))


def _documents(
    sources: list[str] | None, input_format: str, max_bytes: int, sync: bool = False
) -> tuple[Any, float | None, int]:
    """Documents from SOURCES (files, folders, globs; ``indexing.file_documents``) and/or JSONL
    records on stdin, their number (None for records), and how many files the walk skipped
    (links, FIFOs, too big...). With ``sync`` a folder or pattern without documents is refused."""
    import sys

    from nlpkit.io.records import read_records
    from nlpkit.io.talk import say
    from nlpkit.rag import indexing

    names = list(sources or [])
    if not names:
        if sys.stdin is None or sys.stdin.isatty():
            from nlpkit.errors import UsageError

            raise UsageError("no SOURCES", hint="give files or folders, or pipe JSONL records into stdin")
        names = ["-"]
    files = [s for s in names if s != "-"]
    skips: list[bool] = []

    def warn(message: str) -> None:
        say(message)
        skips.append(": skipped (" in message)

    found = indexing.file_documents(files, warn=warn, max_bytes=max_bytes, sync=sync)
    if "-" in names:
        records = indexing.records_as_documents(read_records(["-"], fmt=input_format))
        import itertools

        return itertools.chain(found, records), None, sum(skips)
    return found, float(len(found)), sum(skips)


def _merge(sources: list[str] | None, output: str, wait: bool, ann: str | None) -> None:
    from nlpkit.errors import UsageError
    from nlpkit.io.talk import Progress, say
    from nlpkit.rag import index as rag
    from nlpkit.rag import indexing

    if not sources:
        raise UsageError("--merge needs the shard indexes as SOURCES")
    for source in sources[1:]:  # every input is an index before the output is touched
        rag.Index(source).close()
    with (
        rag.Index(sources[0]) as first,
        rag.open_writer(output, None, wait=wait, like=first, ann=ann) as writer,
        Progress("merging", unit=" files") as progress,
    ):
        summary = indexing.merge(writer, sources, progress=progress.advance)
    say(summary.line(output))


@app.command("rag-ask", rich_help_panel="Retrieval (RAG)")
def rag_ask_cmd(
    index: Annotated[str, typer.Argument(help="An index folder built by rag-index.")],
    question: Annotated[
        str | None,
        typer.Argument(
            help="The question (default: one per line, or JSONL records, from stdin).", show_default=False
        ),
    ] = None,
    k: TopK = 5,
    mode: Annotated[
        str, typer.Option("--mode", help="hybrid (BM25 + dense, RRF), bm25 or dense.")
    ] = "hybrid",
    retrieve_only: Annotated[
        bool, typer.Option("--retrieve-only", help="Only retrieve chunks; load no language model.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSONL records (same as -f jsonl).")] = False,
    fmt: OutputFormat = "auto",
    model: ModelOpt = None,
    llm: Annotated[
        str,
        typer.Option(
            "--llm", "--model-llm", help="Chat model: a named asset or a model folder.", envvar="NLPKIT_LLM"
        ),
    ] = "smollm2-135m-instruct",
    adapter: Adapter = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Longest answer in tokens.")
    ] = 256,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, help="0: greedy, the same answer every run.")
    ] = 0.0,
    candidates: Annotated[
        int, typer.Option("--candidates", min=1, help="Chunks each retriever proposes to the fusion.")
    ] = 50,
    field: Annotated[str, typer.Option("--field", help="Record field holding the question.")] = "question",
    input_format: InputFormat = "auto",
    output: Annotated[str, typer.Option("-o", "--output", help="Output FILE ('-' is stdout).")] = "-",
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Answer questions from an index, citing the retrieved chunks as [1], [2], ...

    Hybrid retrieval (BM25 + dense, reciprocal-rank fusion), then the local chat model answers
    from the top -k chunks, which the prompt holds as data, never as instructions. Records
    (--json, or a pipe) carry the answer, its citations and every retrieved chunk with its
    source path and character offsets.

    Example: nlpkit rag-ask pydocs.idx "How do I get the current working directory?"
    """
    from nlpkit.cli.options import wants_text
    from nlpkit.errors import DataError, UsageError
    from nlpkit.io.records import RecordWriter, read_records
    from nlpkit.io.talk import set_quiet, with_progress
    from nlpkit.rag import index as rag
    from nlpkit.rag import retrieval

    set_quiet(quiet)
    text_out = not json_out and wants_text(fmt) and output == "-"
    idx = rag.open_index(index)
    encoder = None
    if mode != "bm25":
        encoder = rag.load_text_encoder(model or idx.meta["encoder"], device)
        if encoder.name != idx.meta["encoder_name"] or encoder.dim != idx.dim:
            raise UsageError(
                f"-m {model} is {encoder.name} ({encoder.dim} dims); the index was built with "
                f"{idx.meta['encoder_name']} ({idx.dim} dims)",
                hint="omit -m to use the index's own encoder",
            )
    if question is not None:
        records: Any = iter([("<argument>", {field: question})])
    else:
        import sys

        if sys.stdin.isatty():
            raise UsageError(
                "no question", hint=f'ask one: nlpkit rag-ask {index} "How do I ...?" (or pipe questions in)'
            )
        records = with_progress(read_records(["-"], field=field, fmt=input_format), "asking", output=output)
    answerer = None if retrieve_only else _Answerer(llm, device, max_new_tokens, temperature, adapter)
    with RecordWriter(output) if not text_out else _NoWriter() as out:
        for where, rec in records:
            if not rec[field].strip():  # would retrieve arbitrary chunks and ask the model about nothing
                if question is not None:
                    raise UsageError("the question is empty", hint="ask something")
                raise DataError("the question is empty", where=where, hint="ask something, or drop the line")
            hits = retrieval.retrieve(idx, encoder, rec[field], k=k, mode=mode, candidates=candidates)
            answer = answerer(rec[field], hits) if answerer else None
            result = {**rec, **retrieval.answer_record(rec[field], hits, answer)}
            if text_out:
                _print_text(result, answer is not None)
            else:
                out.write(result)


class _NoWriter:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Answerer:
    """Loads the chat model on first use and answers from retrieved chunks."""

    def __init__(
        self, llm: str, device: str, max_new_tokens: int, temperature: float, adapter: str | None = None
    ):
        from nlpkit.llm.generate import Sampling

        self.llm, self.device, self.adapter = llm, device, adapter
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
        self.chat: Any = None

    def __call__(self, question: str, hits: Any) -> str:
        from nlpkit.rag.retrieval import build_messages, clean_answer

        if not hits:
            return "I do not know: nothing in the index matches the question."
        if self.chat is None:
            from nlpkit.llm.chat import ChatModel

            extra = {"adapter": self.adapter} if self.adapter else {}
            self.chat = ChatModel.load(spec=self.llm, device=self.device, **extra)
        reply: str = self.chat.reply(self._fit(question, hits, build_messages), self.sampling)
        return clean_answer(reply)

    def _fit(self, question: str, hits: Any, build: Any) -> Any:
        """The messages with as much retrieved text as the model's window leaves room for
        (the prompt plus --max-new-tokens), shrinking each chunk's share as needed."""
        from nlpkit.errors import UsageError

        for max_chars in (6000, 3000, 1500, 800, 400, 200):
            messages = build(question, hits, max_chars=max_chars)
            if self.chat.room(messages) > self.sampling.max_new_tokens:
                return messages
        raise UsageError(
            "the question and the retrieved text do not fit the model's window with room for the answer",
            hint="ask with a smaller -k or --max-new-tokens, or use a model with a longer context",
        )


def _print_text(result: dict[str, Any], answered: bool) -> None:
    from nlpkit.rag.retrieval import for_terminal

    if answered:
        print(for_terminal(result["answer"]))
        print()
        print("Sources:")
    for c in result["chunks"]:
        path = for_terminal(c["path"]).replace("\n", "\\n").replace("\t", "\\t")  # one line per source
        print(f"[{c['n']}] {path}:{c['start']}-{c['end']}  (score {c['score']:.4f})")
        if not answered:
            snippet = " ".join(c["text"].split())
            print(f"    {for_terminal(snippet[:300])}")
    print(flush=True)
