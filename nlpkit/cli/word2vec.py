"""`nlpkit train-word2vec`: CBOW and skip-gram word vectors from text."""

from __future__ import annotations

from typing import Annotated

import typer

from nlpkit.cli.app import app
from nlpkit.cli.options import (
    Device,
    InputFormat,
    Inputs,
    MaybeSeed,
    Output,
    Quiet,
    Seed,
    Wait,
    inputs_or_stdin,
)


@app.command("train-word2vec", rich_help_panel="Word vectors")
def train_word2vec_cmd(
    output: Output,
    inputs: Inputs = None,
    arch: Annotated[str, typer.Option("--arch", help="skipgram or cbow.")] = "skipgram",
    vector_size: Annotated[int, typer.Option("--vector-size", help="Dimensions of each vector.")] = 100,
    window: Annotated[
        int, typer.Option("--window", help="Largest distance between a word and its context.")
    ] = 5,
    negative: Annotated[
        int, typer.Option("--negative", help="Noise words per word (negative sampling).")
    ] = 5,
    noise: Annotated[
        str,
        typer.Option(
            "--noise",
            help="pooled: a shared pool of noise words per 8 centres (fast); per-pair: --negative "
            "noise words for every pair, as gensim and word2vec.c draw them.",
        ),
    ] = "pooled",
    min_count: Annotated[int, typer.Option("--min-count", help="Leave out words seen fewer times.")] = 5,
    max_vocab: Annotated[
        int, typer.Option("--max-vocab", help="Keep the N most frequent words (0: all).")
    ] = 0,
    sample: Annotated[
        float, typer.Option("--sample", help="Subsampling threshold for frequent words (0: off).")
    ] = 1e-3,
    alpha: Annotated[float, typer.Option("--alpha", help="Initial learning rate.")] = 0.025,
    min_alpha: Annotated[
        float, typer.Option("--min-alpha", help="Final learning rate (linear decay).")
    ] = 0.0001,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the corpus.")] = 5,
    threads: Annotated[
        int, typer.Option("--threads", help="CPU worker processes (one core each).", envvar="NLPKIT_THREADS")
    ] = 2,
    batch_words: Annotated[
        int,
        typer.Option(
            "--batch-words",
            help="Centre words per minibatch (0: 512 for skip-gram, 2048 for CBOW); larger trains worse.",
        ),
    ] = 0,
    field: Annotated[str, typer.Option("--field", help="JSONL field holding the text.")] = "text",
    input_format: InputFormat = "auto",
    seed: Seed = 1,
    device: Device = "cpu",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a run stopped by SIGTERM or Ctrl-C (OUTPUT.ckpt).")
    ] = False,
    wait: Wait = False,
    quiet: Quiet = False,
) -> None:
    """Train word2vec vectors (negative sampling) on text; write nlpkit vectors (.safetensors).

    Input: files, folders (their *.txt files, recursively) or stdin; plain lines or JSONL
    records with "text" (a .txt file is always plain text; elsewhere a line that starts with
    "{" is JSON unless --input-format text). Words are lower-cased runs of letters and digits
    (inner apostrophes kept); each line or record is a sentence. Progress (words/s, loss) goes
    to stderr. The same --seed and --threads give the same bytes on the CPU. SIGTERM or a first
    Ctrl-C save a checkpoint beside the output (OUTPUT.ckpt) and exit 143 / 130; the same
    command with --resume continues it, bitwise with the same --threads. Needs PyTorch
    (pip install 'nlpkit[torch]').

    Example: nlpkit train-word2vec -i plays/ -o plays.safetensors &&
    nlpkit analogy --vectors plays.safetensors king - man + woman
    """
    import contextlib
    import os

    from nlpkit.errors import Interrupted
    from nlpkit.io.files import lock_for
    from nlpkit.io.talk import say, set_quiet
    from nlpkit.vectors import word2vec as w2v

    set_quiet(quiet)
    cfg = w2v.Word2VecConfig(
        arch=arch, vector_size=vector_size, window=window, negative=negative, min_count=min_count,
        max_vocab=max_vocab, sample=sample, alpha=alpha, min_alpha=min_alpha, epochs=epochs,
        threads=threads, batch_words=batch_words, seed=seed, noise=noise,
    )  # fmt: skip
    stats = w2v.TrainStats()
    checkpoint = f"{output}.ckpt" if output != "-" else None
    with lock_for(output, wait) if output != "-" else contextlib.nullcontext():
        try:
            wv, meta = w2v.train_vectors(inputs_or_stdin(inputs), cfg, device, field, input_format, stats,
                                         checkpoint, resume)  # fmt: skip
        except KeyboardInterrupt:  # a second Ctrl-C
            raise Interrupted("interrupted; nothing was written") from None
        wv.save(output, meta)
        if checkpoint is not None and os.path.exists(checkpoint):
            os.remove(checkpoint)  # the vectors are written: the stopped run is done
    say(
        f"trained {cfg.arch} in {stats.seconds:.1f} s ({stats.words_per_second:,.0f} words/s), "
        f"loss {stats.loss:.4f}; wrote {len(wv)} vectors to {output}"
    )


@app.command("word2vec-pairs", rich_help_panel="Word vectors")
def word2vec_pairs_cmd(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Text (default: -i / stdin).", show_default=False)
    ] = None,
    inputs: Inputs = None,
    arch: Annotated[str, typer.Option("--arch", help="skipgram or cbow.")] = "skipgram",
    window: Annotated[
        int, typer.Option("--window", help="Largest distance between a word and its context.")
    ] = 5,
    min_count: Annotated[int, typer.Option("--min-count", help="Leave out words seen fewer times.")] = 1,
    sample: Annotated[
        float, typer.Option("--sample", help="With --seed: subsampling threshold, as train-word2vec.")
    ] = 1e-3,
    vector_size: Annotated[
        int,
        typer.Option("--vector-size", help="With --seed: as train-word2vec (its random draws come first)."),
    ] = 100,
    seed: MaybeSeed = None,
    field: Annotated[str, typer.Option("--field", help="JSONL field holding the text.")] = "text",
    input_format: InputFormat = "auto",
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    """The (input, target) samples word2vec's sliding window makes from a text, as JSONL.

    Skip-gram: one record per (centre, context) pair, {"input": centre, "target": context};
    CBOW: one per centre, {"input": [context words], "target": centre}. Without --seed every word
    within --window of the centre (same sentence) is a context. With --seed: exactly the pairs
    `train-word2vec` trains on in its first epoch with the same --seed, --window, --sample,
    --min-count and --vector-size (frequent words dropped, a window of 1..N drawn per centre).

    Example: nlpkit word2vec-pairs --arch cbow --window 2 "the quick brown fox jumps"
    """
    from nlpkit.io.records import RecordWriter, read_texts
    from nlpkit.io.talk import set_quiet
    from nlpkit.vectors import word2vec as w2v

    set_quiet(quiet)
    cfg = w2v.Word2VecConfig(
        arch=arch, window=window, min_count=min_count, sample=sample if seed is not None else 0.0,
        vector_size=vector_size, seed=seed if seed is not None else 1,
    )  # fmt: skip
    # files and folders read as train-word2vec reads them
    lines = list(texts) if texts else list(read_texts(inputs_or_stdin(inputs), field=field, fmt=input_format))
    with RecordWriter(output) as out:
        out.write_all(w2v.training_pairs(lines, cfg, as_trained=seed is not None))
