"""`nlpkit serve` against llama-cpp-python's OpenAI server, side by side, on SmolLM2-135M-Instruct.

Both servers run as their own processes on the same machine with 2 threads each (nlpkit:
OMP_NUM_THREADS=2 and torch's 2 intra-op threads; llama.cpp: --n_threads 2 --n_threads_batch 2),
and serve the same model: llama.cpp the asset's Q4_1 GGUF, nlpkit the folder converted from that
very file (dequantized; float32 prefill, float16 decoder). Same chat prompts, greedy, max_tokens
128, streamed (``/v1/chat/completions`` with ``stream: true``). At each concurrency (1, 4, 8
clients) every client sends --per-client requests back to back; the cell's aggregate tokens/s is
all completion tokens over the wall time of the cell, and TTFT is the time from sending a request
to its first content chunk (p50 and p95 over every request of the cell, all reps pooled).
Completion tokens are counted by encoding each answer with the model's tokenizer, the same way
on both sides (llama_cpp.server does not report usage in streams). Cells are alternated
(nlpkit, llama.cpp, nlpkit, ...) and repeated --reps times; tokens/s is the median with min-max.

    python bench/bench_serve.py              # needs the bench, llamacpp and serve extras
Last line: ``serve: key=value ...``; results in bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).parent
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three uses of Python's itertools module.",
    "Translate 'good morning' into Spanish and German.",
    "What is 12 times 7?",
    "Give me a short tip for writing clean code.",
    "Describe a sunset over the mountains.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {' '.join(cmd)}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def one_request(url: str, model: str, question: str, new: int) -> tuple[float, float, str]:
    """(seconds to the first content chunk, seconds in all, the answer)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": new,
        "stream": True,
    }
    t0 = time.perf_counter()
    first = None
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text.append(piece)
    total = time.perf_counter() - t0
    return first if first is not None else total, total, "".join(text)


def cell(url: str, model: str, clients: int, per_client: int, new: int, count: Any) -> dict[str, Any]:
    results: list[tuple[float, float, str]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(per_client):
            r = one_request(url, model, QUESTIONS[(c * per_client + k) % len(QUESTIONS)], new)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(count(text) for _, _, text in results)
    return {
        "tok_s": tokens / wall,
        "tokens": tokens,
        "wall_s": wall,
        "ttft": [r[0] for r in results],
        "answers": sorted(r[2] for r in results),
    }


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--nlpkit-model",
        default=None,
        help="what nlpkit serves (e.g. the int4 folder of `nlpkit quantize`; default: the float model)",
    )
    args = ap.parse_args()
    from tokenizers import Tokenizer

    from nlpkit.store.assets import asset_dir
    from nlpkit.store.resolve import resolve_model

    name = "smollm2-135m-instruct"
    gguf = next(asset_dir(name).glob("*.gguf"))
    folder = resolve_model(name)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    t = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "NLPKIT_QUIET": "1"}
    ours_url, ref_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    levels = [int(x) for x in args.clients.split(",")]
    ours = start(
        [
            sys.executable,
            "-m",
            "nlpkit",
            "serve",
            args.nlpkit_model or name,
            "--port",
            ours_url.rsplit(":", 1)[1],
            "--embed-model",
            "none",
            "--max-batch",
            str(max(levels)),
            "--device",
            "cpu",
        ],
        ours_url,
        env,
    )
    ref = start(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--port",
            ref_url.rsplit(":", 1)[1],
            "--n_threads",
            t,
            "--n_threads_batch",
            t,
            "--n_ctx",
            "2048",
            "--interrupt_requests",
            "False",
            "--model_alias",
            name,
        ],
        ref_url,
        env,
    )
    sides = {"nlpkit": ours_url, "llama.cpp": ref_url}
    ours_name = Path(args.nlpkit_model).name if args.nlpkit_model else name
    names = {"nlpkit": ours_name, "llama.cpp": name}
    (HERE / "results").mkdir(exist_ok=True)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(s, c): [] for s in sides for c in levels}
    try:
        for side, url in sides.items():  # warm-up: first-call costs stay out of the figures
            one_request(url, names[side], QUESTIONS[0], 8)
        for rep in range(args.reps):
            for c in levels:
                order = list(sides) if rep % 2 == 0 else list(reversed(sides))
                for side in order:
                    r = cell(sides[side], names[side], c, args.per_client, args.new, count)
                    runs[(side, c)].append(r)
                    cells = {f"{s} {n}": v for (s, n), v in runs.items()}
                    (HERE / "results" / "serve-cells.json").write_text(json.dumps(cells) + "\n")  # if cut
                    print(
                        f"rep {rep} {side:9s} clients={c}: {r['tok_s']:.1f} tok/s, "
                        f"ttft p50/p95 {pct(r['ttft'], 0.5) * 1000:.0f}/{pct(r['ttft'], 0.95) * 1000:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for proc in (ours, ref):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    table: list[dict[str, Any]] = []
    for c in levels:
        row: dict[str, Any] = {"clients": c}
        for side in sides:
            rs = runs[(side, c)]
            speeds = [r["tok_s"] for r in rs]
            ttft = [x for r in rs for x in r["ttft"]]
            row[side] = {
                "tok_s": statistics.median(speeds),
                "tok_s_min": min(speeds),
                "tok_s_max": max(speeds),
                "ttft_p50_ms": pct(ttft, 0.5) * 1000,
                "ttft_p95_ms": pct(ttft, 0.95) * 1000,
                "requests": len(ttft),
            }
        row["ratio"] = row["nlpkit"]["tok_s"] / row["llama.cpp"]["tok_s"]
        mine, theirs = runs[("nlpkit", c)][0]["answers"], runs[("llama.cpp", c)][0]["answers"]
        same = sum(a == b for a, b in zip(mine, theirs, strict=True))
        row["same_answers"] = f"{same}/{len(runs[('nlpkit', c)][0]['answers'])}"
        table.append(row)
    ttft_cols = "nlpkit TTFT p50 / p95 ms | llama.cpp TTFT p50 / p95 ms"
    print(f"\n| clients | nlpkit tok/s | llama.cpp tok/s | ratio | {ttft_cols} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in table:
        a, b = row["nlpkit"], row["llama.cpp"]
        speeds = [f"{x['tok_s']:.1f} ({x['tok_s_min']:.1f}-{x['tok_s_max']:.1f})" for x in (a, b)]
        ttfts = [f"{x['ttft_p50_ms']:.0f} / {x['ttft_p95_ms']:.0f}" for x in (a, b)]
        cells = [str(row["clients"]), *speeds, f"{row['ratio']:.2f}x", *ttfts]
        print("| " + " | ".join(cells) + " |")
    load = os.getloadavg()[0]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "new": args.new,
        "per_client": args.per_client,
        "reps": args.reps,
        "load_avg": load,
        "table": table,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    ratios = " ".join(f"ratio_{r['clients']}={r['ratio']:.2f}" for r in table)
    print(f"serve: {ratios} threads={args.threads} new={args.new} load_avg={load:.1f}")


if __name__ == "__main__":
    main()
