"""ONNX Runtime GenAI's side of bench_quantize.py, run in its own virtual environment
(onnxruntime-genai pins its own onnxruntime). Reads one JSON job per stdin line
({"prompt": [ids], "new": N}), answers one JSON line: prefill and decode tokens/s, greedy ids.

    python bench/genai_worker.py MODEL_DIR THREADS
"""

from __future__ import annotations

import json
import sys
import time

import onnxruntime_genai as og


def main() -> None:
    folder, threads = sys.argv[1], int(sys.argv[2])
    config = og.Config(folder)
    config.clear_providers()  # the CPU provider
    model = og.Model(config)
    print(json.dumps({"ready": True, "threads": threads}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        prompt, new = job["prompt"], job["new"]
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new + 1, batch_size=1)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)  # the prompt pass: logits of its last position
        gen.generate_next_token()
        t1 = time.perf_counter()
        ids = [int(gen.get_next_tokens()[0])]
        for _ in range(new - 1):
            gen.generate_next_token()
            ids.append(int(gen.get_next_tokens()[0]))
        t2 = time.perf_counter()
        print(
            json.dumps({"prefill": len(prompt) / (t1 - t0), "decode": (new - 1) / (t2 - t1), "ids": ids}),
            flush=True,
        )
        del gen


if __name__ == "__main__":
    main()
