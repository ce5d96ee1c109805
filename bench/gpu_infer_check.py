"""GPU check for inference: SmolLM2 generation and MiniLM embeddings on CUDA, one short run.

    python bench/gpu_infer_check.py            # needs the pulled models; ~1 minute

* chat: prefill and decode tokens/s of nlpkit's Generator on ``cuda`` (float32 prompt, float16
  decoder, the default) and with ``--dtype float32``, on the 188-token prompt of bench_chat.py,
  plus the greedy reply to "What is the capital of France?" (it should name Paris);
* embed: sentences/s of ``load_encoder(..., device="cuda")`` with the torch backend, and with
  ONNX Runtime's CUDA provider when onnxruntime-gpu is installed (otherwise reported as absent),
  and the cosine between the two;
* quantized: `nlpkit quantize` int4 on ONNX Runtime's CUDA provider (onnxruntime-gpu): prefill
  and decode tokens/s against the CPU provider, the greedy answer, greedy agreement with the CPU.

Without CUDA it prints ``gpu_infer_check: no CUDA`` and exits 0. The last line is
``gpu_infer_check: key=value ...``; bench/results/gpu_infer.json gets the figures.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu_infer_check: no CUDA")
        return
    from bench.bench_chat import LONG
    from nlpkit.llm.chat import ChatModel
    from nlpkit.llm.generate import Generator, Sampling

    out: dict[str, object] = {"device": torch.cuda.get_device_name(0)}
    bot = ChatModel.load("smollm2-135m-instruct", "cuda")
    prompt = bot.prompt_ids([{"role": "user", "content": LONG}])
    for name, gen in (
        ("auto", bot.gen),
        ("float32", Generator(bot.gen.model, bot.gen.cfg, bot.gen.tok, "cuda", "float32")),
    ):
        with torch.inference_mode():
            for _rep in range(2):  # the first is a warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                logits, cache = gen.prefill([prompt], 64)
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                token = int(logits[0].argmax())
                for _ in range(64):
                    token = int(gen.step([token], cache)[0].argmax())
                torch.cuda.synchronize()
                t2 = time.perf_counter()
        out[f"chat_{name}"] = {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": 64 / (t2 - t1)}
    out["reply"] = bot.reply(
        [{"role": "user", "content": "What is the capital of France?"}], Sampling(40, 0.0)
    )

    import numpy as np

    from nlpkit.embed.encoder import load_encoder

    texts = [f"Sentence number {i} about the Python standard library and its modules." for i in range(2000)]
    results = {}
    for backend in ("torch", "onnx"):
        try:
            enc = load_encoder("minilm-l6-v2", backend=backend, device="cuda")
        except Exception as e:  # onnxruntime-gpu absent: report it
            out[f"embed_{backend}"] = f"unavailable ({str(e)[:120]})"
            continue
        enc.encode(texts[:64])
        t0 = time.perf_counter()
        results[backend] = enc.encode(texts, batch_size=64)
        out[f"embed_{backend}_sent_s"] = len(texts) / (time.perf_counter() - t0)
    if len(results) == 2:
        out["embed_min_cosine"] = float(np.min(np.sum(results["torch"] * results["onnx"], axis=1)))
    out["quantized"] = _quantized_on_cuda(prompt)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "gpu_infer.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    flat = {k: v for k, v in out.items() if isinstance(v, int | float)}
    chat = out["chat_auto"]
    assert isinstance(chat, dict)
    print(
        "gpu_infer_check: "
        + " ".join([f"decode_tok_s={chat['decode_tok_s']:.0f}"] + [f"{k}={v:.1f}" for k, v in flat.items()])
    )


def _quantized_on_cuda(prompt: list[int]) -> dict[str, object]:
    """The int4 model of `nlpkit quantize` on ONNX Runtime's CUDA provider (onnxruntime-gpu):
    prefill and decode tokens/s through the Generator, the greedy answer, and the token agreement
    with the CPU provider's greedy ids."""
    import tempfile

    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {"skipped": "onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"}
    from nlpkit.llm.chat import ChatModel
    from nlpkit.llm.generate import Sampling
    from nlpkit.quantize.quantize import quantize_model

    folder = Path(tempfile.mkdtemp()) / "q4"
    quantize_model("smollm2-135m-instruct", folder, bits=4, receipt_checks=False)
    result: dict[str, object] = {}
    ids = {}
    for device in ("cuda", "cpu"):
        bot = ChatModel.load(str(folder), device)
        gen = bot.gen
        logits, cache = gen.prefill([prompt], 64)  # warm-up
        t0 = time.perf_counter()
        logits, cache = gen.prefill([prompt], 64)
        t1 = time.perf_counter()
        token, got = int(logits[0].argmax()), []
        for _ in range(64):
            got.append(token)
            token = int(gen.step([token], cache)[0].argmax())
        t2 = time.perf_counter()
        ids[device] = got
        result[device] = {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": 64 / (t2 - t1)}
        if device == "cuda":
            result["reply"] = bot.reply(
                [{"role": "user", "content": "What is the capital of France?"}], Sampling(40, 0.0)
            )
    same = next((i for i, (a, b) in enumerate(zip(ids["cuda"], ids["cpu"], strict=True)) if a != b), 64)
    result["greedy_tokens_equal_to_cpu"] = same
    return result


if __name__ == "__main__":
    main()
