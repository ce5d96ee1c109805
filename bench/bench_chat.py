"""A chat model (SmolLM2-135M-Instruct by default; --model qwen2.5-coder-0.5b-instruct): nlpkit
against llama.cpp and a naive eager PyTorch loop, side by side.

Speed (same prompt, 2 threads each, greedy, runs alternated, median of --reps with min/max);
every row names its weights' dtype:
  * nlpkit f16        Generator: float32 prefill, float16 fused decoder (the default)
  * nlpkit f32        Generator with --dtype float32
  * nlpkit int4 onnx  `nlpkit quantize --bits 4 --group-size 32` served by ONNX Runtime
                      (MatMulNBits, int8 activations; the folder bench_quantize.py builds)
  * eager f32         transformers' AutoModelForCausalLM, float32, its KV cache, one token per
                      call; eager bf16: the same in bfloat16 (--eager-f16 adds a float16 row)
                      (--no-naive leaves them out)
  * llama.cpp         llama-cpp-python on the model's GGUF itself (Q4_1, Q4_K_M...: 4-bit
                      weights, 8-bit activations), the headline reference
Prefill: tokens/s over the prompt; decode: tokens/s over --new tokens (end token ignored).

Parity (greedy, 7 chat prompts, --parity-tokens new tokens each): nlpkit against llama.cpp on the
GGUF file, and (unless --no-f32) on an F32 GGUF holding the same dequantized weights (written
once into bench/.cache), with the largest difference between the top-5 first-token logits.

    python bench/bench_chat.py                 # needs the bench extra and a pulled model
    python bench/bench_chat.py --model qwen2.5-coder-0.5b-instruct --no-f32 --no-naive --reps 1 --new 32
Last line: ``chat: key=value ...``; results in bench/results/chat.json (chat-MODEL.json for
another model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three uses of Python's itertools module.",
    "Translate 'good morning' into Spanish and German.",
    "What is 12 times 7?",
    "Give me a short tip for writing clean code.",
]
LONG = (
    "Summarise the following passage in one sentence.\n\n"
    "The Unix philosophy favours small programs that each do one thing well and work together "
    "through text streams. A program reads its input, writes its output, and reports errors on a "
    "separate channel, so that it can be combined with others in a pipeline without surprises. "
    "Exit codes tell the caller what happened; a program that fails says so in one line and leaves "
    "no half-written files behind. These habits make tools easy to script, to test and to run "
    "unattended from cron, and they are why command-line tools written decades ago are still in "
    "daily use. Modern toolkits for language models can follow the same rules: read JSON lines, "
    "write JSON lines, keep progress bars on stderr, and never lose data when interrupted."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--parity-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a named chat model")
    ap.add_argument("--no-f32", dest="f32", action="store_false", help="skip the F32 GGUF parity")
    ap.add_argument("--no-naive", dest="naive", action="store_false", help="skip transformers' loop")
    ap.add_argument("--eager-f16", action="store_true", help="also time transformers in float16")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the int4 ONNX Runtime row")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nlpkit.llm.chat import ChatModel
    from nlpkit.llm.generate import Generator
    from nlpkit.store.assets import asset_dir
    from nlpkit.store.resolve import resolve_model

    gguf_path = next(asset_dir(args.model).glob("*.gguf"))
    quant = gguf_path.stem.rsplit(".", 1)[-1]  # SmolLM2-135M-Instruct.Q4_1 -> Q4_1
    folder = resolve_model(args.model)
    fast = ChatModel.load(str(folder), "cpu")
    exact = ChatModel(Generator.load(folder, "cpu", "float32"), fast.template)
    prompt = fast.prompt_ids([{"role": "user", "content": LONG}])
    print(f"prompt: {len(prompt)} tokens, decode {args.new} tokens, {args.threads} threads", file=sys.stderr)

    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=2048, n_threads=args.threads, n_batch=512, verbose=False)
    runners = {
        "nlpkit f16": lambda: _nlpkit(fast.gen, prompt, args.new),
        "nlpkit f32": lambda: _nlpkit(exact.gen, prompt, args.new),
        f"llama.cpp {quant}": lambda: _llama(llm, prompt, args.new),
    }
    if args.onnx and args.model == "smollm2-135m-instruct":
        from bench_quantize import _onnx_generator, _quantized

        int4 = _onnx_generator(_quantized(4), args.threads)
        runners["nlpkit int4 onnx"] = lambda: _nlpkit(int4, prompt, args.new)
    if args.naive:
        eager = {"eager f32": torch.float32, "eager bf16": torch.bfloat16}
        if args.eager_f16:
            eager["eager f16"] = torch.float16
        for label, dtype in eager.items():
            hf = _hf_model(folder, dtype)
            runners[label] = lambda hf=hf: _naive(hf, prompt, args.new)
    speed: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in runners}
    for run in runners.values():
        run()  # warm-up: page in weights, build caches
    for rep in range(args.reps):
        for name, run in runners.items():
            p, d = run()
            speed[name]["prefill"].append(p)
            speed[name]["decode"].append(d)
            print(f"rep {rep} {name}: prefill {p:.0f} tok/s, decode {d:.1f} tok/s", file=sys.stderr)
    runners.clear()  # frees llama.cpp's context before the parity runs load their own

    parity = {f"llama.cpp {quant}": _parity(fast, str(gguf_path), args)}
    if args.f32:
        f32 = str(_f32_gguf(gguf_path, args.model))
        parity["llama.cpp F32 (same weights)"] = _parity(fast, f32, args)
        parity["llama.cpp F32, nlpkit --dtype float32"] = _parity(exact, f32, args)
    summary = {k: {m: _stats(v) for m, v in s.items()} for k, s in speed.items()}

    def ratio(a: str, b: str, m: str) -> float | None:
        return summary[a][m]["median"] / summary[b][m]["median"] if a in summary and b in summary else None

    ref = f"llama.cpp {quant}"
    best_eager = max((k for k in summary if k.startswith("eager")), default=None,
                     key=lambda k: summary[k]["decode"]["median"])  # fmt: skip
    result = {
        "model": args.model,
        "prompt_tokens": len(prompt),
        "new_tokens": args.new,
        "threads": args.threads,
        "speed": summary,
        "decode_vs_llama_cpp": ratio("nlpkit f16", ref, "decode"),
        "prefill_vs_llama_cpp": ratio("nlpkit f16", ref, "prefill"),
        "int4_onnx_decode_vs_llama_cpp": ratio("nlpkit int4 onnx", ref, "decode"),
        "int4_onnx_prefill_vs_llama_cpp": ratio("nlpkit int4 onnx", ref, "prefill"),
        "best_eager": best_eager,
        "decode_vs_best_eager": ratio("nlpkit f16", best_eager, "decode") if best_eager else None,
        "decode_vs_eager_f32": ratio("nlpkit f16", "eager f32", "decode"),
        "parity": parity,
        "load": os.getloadavg()[0],
        "torch": torch.__version__,
    }
    (HERE / "results").mkdir(exist_ok=True)
    name = "chat.json" if args.model == "smollm2-135m-instruct" else f"chat-{args.model}.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in summary.items():
        print(
            f"{name:18s} prefill {s['prefill']['median']:7.0f} tok/s"
            f"  decode {s['decode']['median']:6.1f} tok/s"
            f"  (decode min {s['decode']['min']:.1f} max {s['decode']['max']:.1f})"
        )
    for name, p in parity.items():
        print(
            f"parity vs {name}: {p['greedy_equal']}/{p['prompts']} greedy equal,"
            f" {p['agreed_tokens']}/{p['compared_tokens']} tokens before the first difference,"
            f" top-5 max diff {p['top5_max_diff']:.3f}"
        )
    f32_part = (
        f"parity_f32={parity['llama.cpp F32 (same weights)']['greedy_equal']}/{len(QUESTIONS)} "
        if args.f32
        else ""
    )

    def fmt(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else "n/a"

    print(
        f"chat: model={args.model} vs llama.cpp {quant}: "
        f"int4_onnx_decode={fmt(result['int4_onnx_decode_vs_llama_cpp'])} "
        f"int4_onnx_prefill={fmt(result['int4_onnx_prefill_vs_llama_cpp'])} "
        f"f16_decode={fmt(result['decode_vs_llama_cpp'])} f16_prefill={fmt(result['prefill_vs_llama_cpp'])}; "
        f"f16 decode vs {best_eager}={fmt(result['decode_vs_best_eager'])} "
        + f32_part
        + f"parity_{quant.lower()}={parity[f'llama.cpp {quant}']['greedy_equal']}/{len(QUESTIONS)}"
    )


def _stats(v: list[float]) -> dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def _nlpkit(gen, prompt: list[int], new: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits, cache = gen.prefill([prompt], new)
        token = int(logits[0].argmax())
        t1 = time.perf_counter()
        for _ in range(new):
            logits = gen.step([token], cache)
            token = int(logits[0].argmax())
        t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), new / (t2 - t1)


def _hf_model(folder: Path, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


def _naive(hf, prompt: list[int], new: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The plain loop: the model's own KV cache, one token per forward call."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = hf(torch.tensor([prompt]), use_cache=True)
        token = int(out.logits[0, -1].argmax())
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(new):
            out = hf(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
        t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), new / (t2 - t1)


def _llama(llm, prompt: list[int], new: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    # llama-cpp-python 0.3.36 fills ``scores`` only with logits_all: read the last logits from the
    # context (before this fix every step argmaxed zeros and fed token 0: same work, wrong text)
    def last() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    token = last()
    t1 = time.perf_counter()
    for _ in range(new):
        llm.eval([token])
        token = last()
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), new / (t2 - t1)


def _f32_gguf(src: Path, model: str) -> Path:
    """The GGUF file with every tensor dequantized to F32 (metadata unchanged): llama.cpp then
    computes in float32 too, which separates our arithmetic from its 8-bit activations."""
    import gguf

    out = HERE / ".cache" / ("smollm2-f32.gguf" if model == "smollm2-135m-instruct" else f"{model}-f32.gguf")
    if out.is_file():
        return out
    out.parent.mkdir(exist_ok=True)
    from nlpkit.io.gguf import read_gguf

    reader, ours = gguf.GGUFReader(str(src)), read_gguf(src)
    w = gguf.GGUFWriter(str(out) + ".tmp", str(ours.metadata["general.architecture"]))
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            if f.types[1] == gguf.GGUFValueType.STRING:
                w.add_array(f.name, [bytes(f.parts[i]).decode() for i in f.data])
            else:
                w.add_array(f.name, [f.parts[i].tolist()[0] for i in f.data])
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(f.name, bytes(f.parts[f.data[0]]).decode())
        else:
            w.add_key_value(f.name, f.parts[f.data[0]].tolist()[0], vtype)
    for name in ours.tensors:
        w.add_tensor(name, ours.tensor(name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(str(out) + ".tmp", out)
    return out


def _parity(bot, gguf_file: str, args: argparse.Namespace) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from llama_cpp import Llama

    from nlpkit.llm.generate import Sampling

    llm = Llama(model_path=gguf_file, n_ctx=2048, n_threads=args.threads, verbose=False, logits_all=True)
    equal, worst, rows, refs, agreed, compared = 0, 0.0, [], [], 0, 0
    for q in QUESTIONS:
        ids = bot.prompt_ids([{"role": "user", "content": q}])
        ref_ids = llm.tokenize(
            bot.template.render([{"role": "user", "content": q}]).encode(), add_bos=False, special=True
        )
        llm.reset()
        llm.eval(ids)
        first = np.array(llm.scores[len(ids) - 1])
        top = np.argsort(-first)[:5]
        ref: list[int] = []
        for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if t == llm.token_eos() or len(ref) >= args.parity_tokens:
                break
            ref.append(int(t))
        with torch.inference_mode():
            logits, _ = bot.gen.prefill([ids], 1)
        diff = float((logits[0, top] - torch.tensor(first[top])).abs().max())
        ours = list(bot.gen.tokens_from_ids(ids, Sampling(max_new_tokens=args.parity_tokens, temperature=0)))
        same = ours == ref
        first_diff = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), None)
        equal += same
        worst = max(worst, diff)
        agreed += (
            first_diff if first_diff is not None else min(len(ours), len(ref))
        )  # before the first difference
        compared += max(len(ours), len(ref))
        rows.append({"question": q, "same_ids_as_llama_cpp_tokenizer": ids == ref_ids, "greedy_equal": same,
                     "first_difference_at": first_diff, "top5_max_diff": diff})  # fmt: skip
        refs.append({"question": q, "prompt_ids": ids, "top5": top.tolist(),
                     "top5_logits": first[top].tolist(), "greedy": ref})  # fmt: skip
    del llm
    if (
        Path(gguf_file).name.startswith("SmolLM2") and "Q4_1" in Path(gguf_file).name
    ):  # llama.cpp's answers, for bench/llamacpp_emu/run_parity.py
        (HERE / ".cache").mkdir(exist_ok=True)
        (HERE / ".cache" / "llama_ref.json").write_text(json.dumps(refs))
    return {"prompts": len(QUESTIONS), "greedy_equal": equal, "top5_max_diff": worst, "rows": rows,
            "agreed_tokens": agreed, "compared_tokens": compared}  # fmt: skip


if __name__ == "__main__":
    main()
