"""SmolLM2-135M-Instruct quantized: nlpkit (ONNX Runtime) against ONNX Runtime GenAI and llama.cpp.

Same prompt ids on every side (a --prompt-len token prompt), --new greedy tokens, --threads
threads each, runs alternated, medians with min-max:
  * nlpkit-int4    `nlpkit quantize --bits 4` (MatMulNBits int4, blocks of 32, int8 activations),
                   timed through nlpkit's own generation loop: Generator.tokens_from_ids (sampling
                   code path, greedy) -> Generator.pieces (stop strings and streaming text)
  * nlpkit-int8    the same with --bits 8
  * genai-int4     ONNX Runtime GenAI 0.18 on the int4 model its own builder writes from the same
                   weights (`-p int4 --extra_options int4_accuracy_level=4`), its own loop
  * llama.cpp      llama-cpp-python on the Q4_1 GGUF the weights come from
Quality: the perplexity receipts of the nlpkit models (held-out text, against float32), and
for every side the share of its greedy tokens equal to the float32 model's.

    python bench/bench_quantize.py --genai-python /path/to/venv-with-onnxruntime-genai/bin/python

Needs the bench and llamacpp extras and `nlpkit models pull smollm2-135m-instruct`; the GenAI
venv: `python -m venv V && V/bin/pip install torch==2.13.0 onnxruntime-genai==0.18.0
transformers onnx onnx_ir`. Last line: ``quantize: key=value ...``; bench/results/quantize.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE))
from bench_chat import LONG  # noqa: E402

PASSAGE = LONG.split("\n\n", 1)[1] + " "  # bench_chat's passage: the prompt is 200 of its tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--genai-python", default=str(CACHE / "genai-venv" / "bin" / "python"))
    args = ap.parse_args()

    import torch
    from llama_cpp import Llama

    from nlpkit import store
    from nlpkit.llm.generate import Generator, Sampling

    torch.set_num_threads(args.threads)
    asset = store.asset_dir("smollm2-135m-instruct")
    gguf = next(asset.glob("*.gguf"))
    folders = {bits: _quantized(bits) for bits in (4, 8)}
    genai_dir = _genai_model(args.genai_python, args.threads)
    gens = {f"nlpkit-int{b}": _onnx_generator(f, args.threads) for b, f in folders.items()}
    ref = Generator.load("smollm2-135m-instruct", "cpu", "float32")
    prompt = (ref.tok.encode(PASSAGE * 4, add_special_tokens=False).ids)[: args.prompt_len]
    greedy = Sampling(max_new_tokens=args.new, temperature=0)
    with torch.inference_mode():
        float_ids = list(ref.tokens_from_ids(list(prompt), greedy))
    llm = Llama(model_path=str(gguf), n_ctx=1024, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)  # fmt: skip
    worker = subprocess.Popen(
        [args.genai_python, str(HERE / "genai_worker.py"), str(genai_dir), str(args.threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdout is not None and worker.stdin is not None
    json.loads(worker.stdout.readline())

    def genai(p: list[int], n: int) -> tuple[float, float, list[int]]:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(json.dumps({"prompt": p, "new": n}) + "\n")
        worker.stdin.flush()
        r = json.loads(worker.stdout.readline())
        return r["prefill"], r["decode"], r["ids"]

    sides = {
        **{name: (lambda p, n, g=g: _nlpkit(g, p, n)) for name, g in gens.items()},
        "genai-int4": genai,
        "llama.cpp": lambda p, n: _llama(llm, p, n),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    ids: dict[str, list[int]] = {}
    for name, fn in sides.items():  # warm-up, and the greedy ids for the agreement column
        ids[name] = fn(prompt, args.new)[2]
    order = list(sides)
    for rep in range(args.reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            pre, dec, _ = sides[name](prompt, args.new)
            runs[name].append((pre, dec))
            print(f"rep {rep} {name:12} prefill {pre:7.0f} tok/s  decode {dec:6.1f} tok/s", file=sys.stderr)
    worker.stdin.close()
    worker.wait()
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "prefill": _stats([r[0] for r in rs]),
            "decode": _stats([r[1] for r in rs]),
            "greedy_agreement_with_float32": _agreement(ids[name], float_ids),
        }
    receipts = {
        f"nlpkit-int{b}": json.loads((f / "quantization.json").read_text()) for b, f in folders.items()
    }
    for name, r in receipts.items():
        summary[name]["perplexity"] = {"float32": r["perplexity_before"], "quantized": r["perplexity_after"],
                                       "change": r["perplexity_change"], "text": r["eval_text"]}  # fmt: skip
        summary[name]["bytes"] = r["bytes_after"]
    summary["genai-int4"]["bytes"] = sum(p.stat().st_size for p in genai_dir.glob("model.onnx*"))
    q4 = receipts["nlpkit-int4"]
    genai_ppl = _genai_perplexity(genai_dir, ref, args.threads)
    summary["genai-int4"]["perplexity"] = {"float32": q4["perplexity_before"], "quantized": genai_ppl,
                                           "change": genai_ppl / q4["perplexity_before"] - 1,
                                           "text": q4["eval_text"]}  # fmt: skip
    summary["llama.cpp"]["bytes"] = gguf.stat().st_size
    med = {k: (v["prefill"]["median"], v["decode"]["median"]) for k, v in summary.items()}
    result = {
        "setup": {
            "prompt_tokens": len(prompt),
            "new_tokens": args.new,
            "threads": args.threads,
            "reps": args.reps,
        },
        "sides": summary,
        "int4_decode_vs_genai": med["nlpkit-int4"][1] / med["genai-int4"][1],
        "int4_decode_vs_llama_cpp": med["nlpkit-int4"][1] / med["llama.cpp"][1],
        "int4_prefill_vs_llama_cpp": med["nlpkit-int4"][0] / med["llama.cpp"][0],
        "int4_prefill_vs_genai": med["nlpkit-int4"][0] / med["genai-int4"][0],
    }
    out = HERE / "results" / "quantize.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, v in summary.items():
        pre, dec = v["prefill"], v["decode"]
        print(
            f"{name:12} prefill {pre['median']:7.0f} ({pre['min']:.0f}-{pre['max']:.0f}) "
            f"decode {dec['median']:6.1f} ({dec['min']:.1f}-{dec['max']:.1f}) tok/s  "
            f"agree {v['greedy_agreement_with_float32']:.2f}  {v['bytes'] / 1e6:.0f} MB"
        )
    q4, q8 = receipts["nlpkit-int4"], receipts["nlpkit-int8"]
    line = {
        "int4_decode": f"{med['nlpkit-int4'][1]:.1f}",
        "int4_prefill": f"{med['nlpkit-int4'][0]:.0f}",
        "vs_genai_decode": f"{result['int4_decode_vs_genai']:.2f}",
        "vs_genai_prefill": f"{result['int4_prefill_vs_genai']:.2f}",
        "vs_llama_decode": f"{result['int4_decode_vs_llama_cpp']:.2f}",
        "vs_llama_prefill": f"{result['int4_prefill_vs_llama_cpp']:.2f}",
        "int8_decode": f"{med['nlpkit-int8'][1]:.1f}",
        "int4_ppl_change": f"{q4['perplexity_change']:+.3f}",
        "int8_ppl_change": f"{q8['perplexity_change']:+.3f}",
        "genai_int4_ppl_change": f"{summary['genai-int4']['perplexity']['change']:+.3f}",
    }
    print("quantize: " + " ".join(f"{k}={v}" for k, v in line.items()))


def _stats(v: list[float]) -> dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def _agreement(got: list[int], want: list[int]) -> float:
    """How far the greedy text follows the float32 model's: the share of the tokens before the
    first difference (after one, the two texts go different ways)."""
    n = 0
    for a, b in zip(got, want, strict=False):
        if a != b:
            break
        n += 1
    return n / max(len(want), 1)


def _onnx_generator(folder: Path, threads: int):  # type: ignore[no-untyped-def]
    from nlpkit.llm.generate import Generator
    from nlpkit.llm.onnx_decoder import OnnxDecoder
    from nlpkit.lm.config import read_config
    from nlpkit.text.tokenizer import load

    return Generator(OnnxDecoder.load(folder, "cpu", threads), read_config(folder), load(str(folder)), "cpu")


def _nlpkit(gen, prompt: list[int], new: int) -> tuple[float, float, list[int]]:  # type: ignore[no-untyped-def]
    """nlpkit's own loop: tokens_from_ids (sampling path, greedy) -> pieces (stop strings, text)."""
    import torch

    from nlpkit.llm.generate import Sampling

    s = Sampling(max_new_tokens=new, temperature=0, stop=["\n\n\n\n"])
    times: list[float] = []
    ids: list[int] = []

    def timed(tokens):  # type: ignore[no-untyped-def]
        for tok in tokens:
            times.append(time.perf_counter())
            ids.append(tok)
            yield tok

    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in gen.pieces(timed(gen.tokens_from_ids(list(prompt), s)), list(prompt), s.stop):
            pass
        t2 = time.perf_counter()
    return len(prompt) / (times[0] - t0), (len(times) - 1) / (t2 - times[0]), ids


def _llama(llm, prompt: list[int], new: int) -> tuple[float, float, list[int]]:  # type: ignore[no-untyped-def]
    """llama.cpp's own eval per token; the last position's logits read from its context (0.3.36
    keeps ``scores`` only with logits_all, which would compute every position's logits)."""

    def last() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    token = last()
    t1 = time.perf_counter()
    ids = [token]
    for _ in range(new - 1):
        llm.eval([token])
        token = last()
        ids.append(token)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (new - 1) / (t2 - t1), ids


def _genai_perplexity(folder: Path, ref, threads: int) -> float:  # type: ignore[no-untyped-def]
    """GenAI's int4 graph scored like the receipts: the same text, windows and token counts."""
    import math

    import onnxruntime as ort
    import torch
    from torch.nn import functional as F

    from nlpkit.quantize.receipt import EVAL_TOKENS, default_eval_text

    ids = ref.tok.encode(default_eval_text()[1], add_special_tokens=False).ids[:EVAL_TOKENS]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    cfg = ref.cfg
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, 1024):
        chunk = ids[start : start + 1025]
        x = np.array([chunk[:-1]], dtype=np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
        for i in range(cfg.n_layer):
            for kind in ("key", "value"):
                feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, cfg.kv_heads, 0, cfg.hs), np.float32)
        logits = torch.from_numpy(sess.run(["logits"], feed)[0][0])
        total += F.cross_entropy(logits, torch.tensor(chunk[1:]), reduction="sum").item()
        count += len(chunk) - 1
    return math.exp(total / count)


def _quantized(bits: int) -> Path:
    from nlpkit.quantize.quantize import quantize_model

    folder = CACHE / f"nlpkit-int{bits}"
    if not (folder / "quantization.json").is_file():
        quantize_model("smollm2-135m-instruct", folder, bits=bits, group_size=32)
    return folder


def _genai_model(python: str, threads: int) -> Path:
    """ONNX Runtime GenAI's int4 model from its own builder, over the same weights (the HF export)."""
    from nlpkit.llm.export import export_hf

    hf, out = CACHE / "smollm2-hf", CACHE / "genai-int4"
    if not (hf / "config.json").is_file():
        export_hf("smollm2-135m-instruct", hf)
    if not (out / "genai_config.json").is_file():
        subprocess.run(
            [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
             "-e", "cpu", "-c", str(CACHE / "genai-build"), "--extra_options", "int4_accuracy_level=4"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    cfg = json.loads((out / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    cfg["model"]["decoder"]["session_options"]["inter_op_num_threads"] = 1
    (out / "genai_config.json").write_text(json.dumps(cfg, indent=4))
    return out


if __name__ == "__main__":
    main()
